"""One take's two stems for `cycledrums grooves`, with the variety of issue #30 applied.

Kept apart from grooves.py (the job: selection, tasks, metadata) as the one place where the
variety options meet the renderer, in the order that keeps each promise:
kit drawn (groove_kits) -> bass part varied (bass_realism) -> both rendered by the sound
bank -> processed (stem_processing) -> the bass muted over its rests, last, so no tail or
room reaches into them.  grooves.mix_levels then sets the levels.
"""
from __future__ import annotations

import numpy as np

from pipelines.bass_realism import mute, vary_bass
from pipelines.groove_bass import ROLAND_TO_GM, style_of
from pipelines.groove_kits import bass_soundfont, choose_kit, kit_name, playable_drums, soundfont_paths
from pipelines.soundbank import SAMPLE_RATE, Note, NoteKey, default_soundfont_path, drum_note, shared_bank
from pipelines.stem_processing import draw_chain, process_stem


def render_stems(notes, part, job: dict, bpm: float, end: float, num_samples: int, soundfonts,
                 realism: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """The take's kit drawn, its bass part varied, both rendered and processed (at the
    defaults: the one SoundFont, the part as composed, no processing)."""
    paths = soundfont_paths(soundfonts)
    kit = choose_kit(paths, job["seed"])
    bar = 60.0 / bpm * job["bar_beats"]
    part, varied = vary_bass(part, realism, job["seed"], bar, end, style_of(job["style"]).legato)
    bass_font = bass_soundfont(kit, paths, part.program)
    drum_bank = shared_bank(kit or default_soundfont_path())
    drums = drum_bank.render(playable_drums(drum_bank, drum_notes(notes)), num_samples)
    bass = shared_bank(bass_font or default_soundfont_path()).render(bass_notes(part), num_samples)
    chains = None
    if realism.get("processing"):
        chains = {name: draw_chain(job["seed"], name) for name in ("drums", "bass")}
        drums = process_stem(drums, chains["drums"], job["seed"], "drums", SAMPLE_RATE)
        bass = process_stem(bass, chains["bass"], job["seed"], "bass", SAMPLE_RATE)
    bass = mute(bass, varied["bass_rests"], SAMPLE_RATE)  # after the room: a rest is silence
    return drums, bass, {"soundfont": kit_name(kit), "bass_soundfont": kit_name(bass_font),
                         "bass_program": part.program, "bass_notes": len(part.notes), **varied,
                         "processing": chains}


def drum_notes(notes) -> list:
    """A performance's pretty_midi notes as the sound bank's drum notes (Roland pitches mapped to GM)."""
    return [drum_note(n.start, ROLAND_TO_GM.get(n.pitch, n.pitch), n.velocity, n.end - n.start)
            for n in notes]


def bass_notes(part) -> list:
    """A composed bass part as the sound bank's notes."""
    return [Note(n.start, NoteKey(False, part.program, n.pitch, n.velocity, n.duration)) for n in part.notes]
