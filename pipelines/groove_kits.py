"""Drum kits for `cycledrums grooves`: several SoundFonts, one drawn per take with its seed.

One SoundFont gives one kit, and a model trained on one kit does not carry over to real
songs (issue #30).  `grooves --soundfont` takes several; each take draws its kit from them
with a stream of its own seed, so adding a kit changes which kit a take gets but never its
bass part, and a take sounds the same whatever else is selected.

SoundFonts differ in what they hold, which decides how they are used:
  - a General MIDI bank (FluidR3_GM, MuseScore_General, TimGM6mb) has drum kits in bank 128
    and the bass programs in bank 0: it renders both stems;
  - a drum-only SoundFont (the AVL kits: one preset, bank 0) renders the drums, and the bass
    comes from the first General MIDI bank among the SoundFonts given, else pretty_midi's;
  - a kit may lack a sound the General MIDI drum map has (the AVL kits have no 35, the
    second kick): such notes are played by the nearest sound the kit has (DRUM_STAND_INS).
The renderer (midirenderer) reads SoundFont 2 only; SoundFont 3 (.sf3, Ogg-compressed
samples) is refused before any take is tried, with the lossless package to use instead.
"""
from __future__ import annotations

import functools
import posixpath
import struct

import numpy as np

# A General MIDI drum sound -> the sounds to play instead, in order, when a kit lacks it.
DRUM_STAND_INS = {35: (36,), 36: (35,), 37: (40, 38), 39: (37, 38), 40: (38,), 41: (43, 45),
                  43: (41, 45), 44: (42,), 45: (47, 43), 47: (45, 48), 48: (50, 47), 50: (48, 47),
                  52: (49, 57), 53: (51, 59), 55: (49, 57), 57: (49, 55), 59: (51, 53)}
KIT_STREAM = 1  # the take's random stream for its kit (bass_realism and stem_processing use others)


def soundfont_paths(value: str | list[str] | None) -> list[str]:
    """`--soundfont` as given: one path, a comma list, or several (repeated flag) -> paths."""
    from pipelines.groove_options import comma_items

    return comma_items(value)


def _chunks(data: bytes, start: int, end: int):
    """(id, offset of its data, size) of each RIFF chunk between start and end."""
    while start + 8 <= end:
        chunk_id = data[start:start + 4]
        size = struct.unpack("<I", data[start + 4:start + 8])[0]
        yield chunk_id, start + 8, size
        start += 8 + size + (size & 1)


@functools.lru_cache(maxsize=16)
def soundfont_header(path: str) -> tuple[int, frozenset[tuple[int, int]]]:
    """(format major version, {(bank, program)} of its presets), read from the file's
    INFO/ifil and pdta/phdr chunks (the sample data, most of the file, is skipped)."""
    with open(path, "rb") as f:
        riff = f.read(12)
        total = 12 + max(0, struct.unpack("<I", riff[4:8])[0] - 4) if len(riff) == 12 else 0
        version, presets, offset = 0, set(), 12
        while offset + 12 <= total:
            f.seek(offset)
            head = f.read(12)
            size = struct.unpack("<I", head[4:8])[0]
            if head[:4] == b"LIST" and head[8:12] in (b"INFO", b"pdta"):
                body = f.read(size - 4)
                for chunk_id, start, length in _chunks(body, 0, len(body)):
                    if chunk_id == b"ifil" and length >= 4:
                        version = struct.unpack("<H", body[start:start + 2])[0]
                    elif chunk_id == b"phdr":
                        for i in range(length // 38 - 1):  # the last record is the terminal "EOP"
                            program, bank = struct.unpack("<HH", body[start + 38 * i + 20:start + 38 * i + 24])
                            presets.add((bank, program))
            offset += 8 + size + (size & 1)
    return version, frozenset(presets)


def kit_problem(path: str) -> str | None:
    """Why `path` cannot be a kit (unreadable, not a SoundFont 2, no presets), or None."""
    from pipelines.soundbank import soundfont_problem

    problem = soundfont_problem(path)
    if problem:
        return problem
    try:
        version, presets = soundfont_header(path)
    except (OSError, struct.error) as err:
        return f"cannot read the SoundFont {path}: {err}"
    if version >= 3:
        return (f"{path} is a SoundFont 3 (.sf3, compressed samples), which the renderer cannot "
                "play; give its .sf2 form (Debian: musescore-general-soundfont-lossless)")
    if not presets:
        return f"{path} holds no preset (instrument); give a General MIDI or drum-kit .sf2 file"
    return None


def has_program(path: str | None, program: int) -> bool:
    """Whether the SoundFont (None: pretty_midi's) has melodic `program` in bank 0."""
    from pipelines.soundbank import default_soundfont_path

    return (0, program) in soundfont_header(path or default_soundfont_path())[1]


def choose_kit(paths: list, take_seed: int):
    """The take's kit among `paths` (deterministic in the take's seed; one path: that one)."""
    if len(paths) <= 1:
        return paths[0] if paths else None
    rng = np.random.default_rng([take_seed, KIT_STREAM])
    return paths[int(rng.integers(len(paths)))]


def bass_soundfont(kit, paths: list, program: int):
    """Where the bass of a take drawn `kit` is rendered: the kit's SoundFont when it has the
    bass program (a General MIDI bank), else the first given SoundFont that has it, else
    None (pretty_midi's TimGM6mb)."""
    for candidate in [kit] + [p for p in paths if p != kit]:
        if candidate is None or has_program(candidate, program):
            return candidate
    return None


def playable_drums(bank, notes: list) -> list:
    """The drum notes with each sound the kit renders silent replaced by its stand-in."""
    from dataclasses import replace

    from pipelines.soundbank import SILENT

    bank.ensure(n.key for n in notes)
    silent: dict = {}

    def sounds(key) -> bool:
        if key not in silent:
            bank.ensure([key])
            silent[key] = float(np.abs(bank.shots[key]).max(initial=0.0)) <= SILENT
        return not silent[key]

    result = []
    for note in notes:
        key = note.key
        if not sounds(key):
            for pitch in DRUM_STAND_INS.get(key.pitch, ()):
                if sounds(replace(key, pitch=pitch)):
                    key = replace(key, pitch=pitch)
                    break
        result.append(note if key is note.key else replace(note, key=key))
    return result


def kit_name(path: str | None) -> str:
    """How a kit is recorded in grooves.json: the SoundFont's file name."""
    from pipelines.soundbank import default_soundfont_path

    return posixpath.basename(path or default_soundfont_path())
