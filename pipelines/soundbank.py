"""MIDI notes -> audio with a General MIDI SoundFont, fast enough for a whole corpus.

The synthesizer is `midirenderer` (a SoundFont player, pip only).  Rendering a whole
performance with it runs at only ~30-50x real time on one core here: every cymbal voice
rings for seconds and the player's reverb runs all the time.  But a SoundFont player
is linear: its output for a MIDI file is the sum of its outputs for each note alone
(reverb and chorus included).  So a `SoundBank` renders each distinct note ONCE with
midirenderer -- (drum kit or program, pitch, velocity level, duration) -- and a
performance is the sum of those one-shots placed at their exact start samples.

What this leaves out of a full render: voice stealing beyond the player's polyphony
(never reached by one drummer), and the hi-hat "exclusive class" (a closed hat cuts an
open one), which `place_notes` applies as a short fade.  Drum velocities are rendered
at 16 levels and scaled to the exact velocity by (v / level)^2, the SoundFont's
velocity-to-gain curve (checked: the rendered peak follows v^2 within 0.1 %); the
timbre change between neighbouring levels is ~1 %.

Rendered one-shots are also kept on disk (`cache_folder()`, one .npy per note, per
SoundFont), so a new process -- each Ray worker, each run -- loads them instead of
rendering them again.  They are the exact arrays a fresh render gives.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import uuid
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100  # the stems' rate (musdb18-HQ)
RENDER_RATE = 48000  # midirenderer's fixed output rate
VELOCITY_STEP = 8  # drum velocity levels: 4, 12, ..., 124
# Seconds a one-shot may ring after its note-off (measured in TimGM6mb, to -80 dBFS at
# full velocity): cymbals ~5 s, toms ~1.9 s, kick and snare ~1.2 s, closed hats ~0.8 s,
# bass ~1.1 s (release + reverb).
LONG_RINGING = frozenset({46, 49, 51, 52, 53, 55, 57, 59})
TAIL_SECONDS = {"cymbal": 5.0, "drum": 2.0, "hihat": 1.0, "pitched": 1.2}
HIHATS = frozenset({42, 44, 46})  # one exclusive class in General MIDI kits
CHOKE_FADE_SECONDS = 0.02
SILENT = 1e-5  # one-shot tails below this are cut
BANK_VERSION = 1  # bump when anything above changes what a one-shot holds (old cache files are ignored)
CACHE_ENV = "CYCLEDRUMS_SOUNDBANK_CACHE"  # a folder, or "off"


class RenderError(ValueError):
    """The synthesizer refused the SoundFont or the notes."""


@dataclass(frozen=True, order=True)
class NoteKey:
    """One distinct sound: what midirenderer renders once per bank."""

    drum: bool
    program: int
    pitch: int
    velocity: int
    duration: float  # seconds between note-on and note-off


@dataclass(frozen=True)
class Note:
    start: float  # seconds
    key: NoteKey
    gain: float = 1.0  # exact velocity vs the key's velocity level


def default_soundfont_path() -> str:
    """The General MIDI SoundFont that ships with pretty_midi (TimGM6mb, 6 MB)."""
    import pretty_midi

    return os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")


def soundfont_problem(path: str) -> str | None:
    """Why `path` cannot be the SoundFont to render with (unreadable, or not a SoundFont 2
    file: a RIFF file of form `sfbk`), or None.  Checked once before a job renders any take."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as err:
        return f"cannot read the SoundFont {path}: {err.strerror or err}"
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        return (f"{path} is not a SoundFont 2 (.sf2) file (it does not start with a RIFF "
                "'sfbk' header); give a General MIDI .sf2 file")
    return None


def velocity_level(velocity: int) -> int:
    """The bank's level for a drum velocity (1..127 -> 4, 12, ..., 124)."""
    return min(127, (max(1, min(127, velocity)) // VELOCITY_STEP) * VELOCITY_STEP + VELOCITY_STEP // 2)


def drum_note(start: float, pitch: int, velocity: int, duration: float) -> Note:
    level = velocity_level(velocity)
    # Durations rounded to 10 ms: Groove MIDI notes are ~0.1 s; drum sounds barely depend on it.
    key = NoteKey(True, 0, pitch, level, round(max(0.01, duration), 2))
    return Note(start, key, (velocity / level) ** 2)


def _tail_seconds(key: NoteKey) -> float:
    if not key.drum:
        return TAIL_SECONDS["pitched"]
    if key.pitch in LONG_RINGING:
        return TAIL_SECONDS["cymbal"]
    return TAIL_SECONDS["hihat" if key.pitch in HIHATS else "drum"]


def one_note_midi(key: NoteKey) -> bytes:
    """A MIDI file holding the key's note alone at t = 0, long enough for its tail."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    inst = pretty_midi.Instrument(key.program, is_drum=key.drum)
    inst.notes.append(pretty_midi.Note(key.velocity, key.pitch, 0.0, key.duration))
    # The player stops at the last MIDI event: an inert controller (CC 110 is undefined
    # in General MIDI) after the note keeps its tail.
    inst.control_changes.append(pretty_midi.ControlChange(110, 0, key.duration + _tail_seconds(key)))
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def _decode_wav(data: bytes) -> np.ndarray:
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if rate != RENDER_RATE:
        raise RenderError(f"midirenderer returned {rate} Hz audio, expected {RENDER_RATE}")
    return samples.T  # [2, n]


def _trim_tail(shot: np.ndarray, keep: int) -> np.ndarray:
    loud = np.nonzero(np.abs(shot).max(axis=0) > SILENT)[0]
    end = max(keep, int(loud[-1]) + 1 if len(loud) else 0)
    return np.ascontiguousarray(shot[:, :end])


def cache_folder() -> str | None:
    """Where one-shots are kept: $CYCLEDRUMS_SOUNDBANK_CACHE ("off": nowhere), else
    $XDG_CACHE_HOME or ~/.cache, under cycledrums/soundbank."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return None if chosen.lower() == "off" else chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cycledrums", "soundbank")


def _cache_name(key: NoteKey) -> str:
    kind = "drum" if key.drum else f"prog{key.program}"
    return f"{kind}_{key.pitch}_{key.velocity}_{round(key.duration * 1000)}ms.npy"


class SoundBank:
    """One-shots of a SoundFont at 44.1 kHz stereo, rendered on first use and kept
    (in memory, and in `cache_dir` when given)."""

    def __init__(self, soundfont: bytes, cache_dir: str | None = None):
        self.soundfont = soundfont
        self.shots: dict[NoteKey, np.ndarray] = {}
        self.rendered_seconds = 0.0  # audio midirenderer rendered for the bank (cost)
        self.cache_dir = None
        if cache_dir:
            digest = hashlib.sha1(soundfont).hexdigest()[:16]
            self.cache_dir = os.path.join(cache_dir, f"{digest}-v{BANK_VERSION}")

    def _load(self, key: NoteKey) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        try:
            return np.load(os.path.join(self.cache_dir, _cache_name(key)))
        except (OSError, ValueError):  # not there yet, or a damaged file: render again
            return None

    def _save(self, key: NoteKey, shot: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        path = os.path.join(self.cache_dir, _cache_name(key))
        temp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            with open(temp, "wb") as f:
                np.save(f, shot)
            os.replace(temp, path)  # atomic: other workers see the whole file or none
        except OSError as err:  # a read-only home: the bank still works, only slower
            log.debug("cannot cache one-shots in %s: %s", self.cache_dir, err)
            if os.path.exists(temp):
                os.remove(temp)

    def ensure(self, keys) -> None:
        """Render the keys not in the bank yet, each in its own synthesizer run: a one-shot
        then never depends on which keys were rendered before it (same bytes on any worker)."""
        import midirenderer
        import torch

        from pipelines.audio import resample

        for key in sorted(set(keys) - self.shots.keys()):
            cached = self._load(key)
            if cached is not None:
                self.shots[key] = cached
                continue
            try:
                wav = midirenderer.render_wave_from(self.soundfont, one_note_midi(key))
            except (ValueError, RuntimeError) as err:
                raise RenderError(f"the SoundFont synthesizer failed on {key}: {err}") from err
            audio = _decode_wav(wav)
            self.rendered_seconds += audio.shape[1] / RENDER_RATE
            shot = resample(torch.from_numpy(audio), RENDER_RATE, SAMPLE_RATE).numpy()
            self.shots[key] = _trim_tail(shot, int(key.duration * SAMPLE_RATE))
            self._save(key, self.shots[key])

    def render(self, notes: list[Note], num_samples: int) -> np.ndarray:
        """The notes as float32 [2, num_samples] at 44.1 kHz (hi-hats choke each other)."""
        self.ensure(n.key for n in notes)
        out = np.zeros((2, num_samples), dtype=np.float32)
        ordered = sorted(notes, key=lambda n: (n.start, n.key))
        starts = [int(round(n.start * SAMPLE_RATE)) for n in ordered]
        next_hat = _next_hihat_starts(ordered, starts)
        fade = int(CHOKE_FADE_SECONDS * SAMPLE_RATE)
        scaled: dict[tuple[NoteKey, float], np.ndarray] = {}  # one multiply per sound, not per note
        for i, (note, start) in enumerate(zip(ordered, starts)):
            shot = scaled.get((note.key, note.gain))
            if shot is None:
                shot = scaled[(note.key, note.gain)] = self.shots[note.key] * np.float32(note.gain)
            end = min(num_samples, start + shot.shape[1])
            if next_hat[i] is not None:
                end = min(end, next_hat[i] + fade)
            if end <= start or start < 0:
                continue
            if next_hat[i] is not None and next_hat[i] < end:
                piece = shot[:, : end - start].copy()
                cut = next_hat[i] - start  # the next hat silences this one
                piece[:, cut:] *= np.linspace(1.0, 0.0, piece.shape[1] - cut, dtype=np.float32)
                out[:, start:end] += piece
            else:
                out[:, start:end] += shot[:, : end - start]
        return out


def _next_hihat_starts(notes: list[Note], starts: list[int]) -> list[int | None]:
    """For each hi-hat note, where the next hi-hat note starts (it cuts this one); else None."""
    result: list[int | None] = [None] * len(notes)
    following = None
    for i in range(len(notes) - 1, -1, -1):
        key = notes[i].key
        if key.drum and key.pitch in HIHATS:
            if following is not None and following > starts[i]:
                result[i] = following
            following = starts[i]
    return result


def shared_bank(soundfont_path: str) -> SoundBank:
    """One bank per SoundFont (and cache folder) per process: Ray workers reuse one-shots
    across tasks, and across processes through the cache folder."""
    return _bank(soundfont_path, cache_folder())


# Several kits per job (grooves --soundfont a,b,c) plus the bass's General MIDI bank: keep
# them all rather than re-reading a 150 MB SoundFont and its one-shots for every other take.
@functools.lru_cache(maxsize=8)
def _bank(soundfont_path: str, cache_dir: str | None) -> SoundBank:
    with open(soundfont_path, "rb") as f:
        return SoundBank(f.read(), cache_dir)
