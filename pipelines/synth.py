"""Built-in data: procedural multitrack songs in the musdb18-HQ folder layout.

Each song has a tempo, a bass line whose notes start on a 16th-note grid, and
drums (kick, snare, hi-hats) locked to the same grid: the kick lands on every
bass note, the snare on beats 2 and 4, hats on 8ths.  So "drums follow the bass"
is learnable from the data.  A pad chord part plays as `other`.  Everything is
deterministic for a seed.

    OUT/<split>/<track>/{mixture,bass,drums,other}.wav   (44.1 kHz stereo, 16-bit)
    OUT/synth.json                                        (tempo and key per track)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from cluster.errors import UserError

SAMPLE_RATE = 44100
STEMS = ("bass", "drums", "other")


class SynthError(UserError):
    """Bad synth options, or an OUTPUT that cannot be a folder."""


@dataclass
class SongPlan:
    name: str
    split: str
    bpm: float
    root_midi: int
    seed: int


def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


def _env(n: int, attack: int, decay_s: float, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    env = np.exp(-t / decay_s)
    env[:attack] *= np.linspace(0.0, 1.0, attack, endpoint=False)
    return env


def _place(track: np.ndarray, sound: np.ndarray, start: int) -> None:
    end = min(len(track), start + len(sound))
    if start < end:
        track[start:end] += sound[: end - start]


def _kick(rate: int) -> np.ndarray:
    n = int(0.35 * rate)
    t = np.arange(n) / rate
    freq = 45.0 + 80.0 * np.exp(-t / 0.04)  # pitch sweep 125 -> 45 Hz
    return 0.9 * np.sin(2 * np.pi * np.cumsum(freq) / rate) * _env(n, 20, 0.12, rate)


def _snare(rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(0.25 * rate)
    t = np.arange(n) / rate
    noise = np.diff(rng.standard_normal(n + 1))  # first difference: brighter noise
    body = np.sin(2 * np.pi * 185.0 * t)
    return (0.25 * noise * _env(n, 10, 0.07, rate) + 0.4 * body * _env(n, 10, 0.05, rate))


def _hat(rate: int, rng: np.random.Generator, open_: bool) -> np.ndarray:
    n = int((0.2 if open_ else 0.06) * rate)
    noise = np.diff(np.diff(rng.standard_normal(n + 2)))  # second difference: hiss
    return 0.06 * noise * _env(n, 5, 0.08 if open_ else 0.015, rate)


def _bass_note(freq: float, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    # A few decaying harmonics: a plucked, slightly rounded bass tone.
    tone = sum(np.sin(2 * np.pi * k * freq * t) / k ** 1.3 for k in range(1, 6))
    return 0.35 * tone * _env(n, 60, 0.35, rate)


def _pad_chord(root: float, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    chord = sum(np.sin(2 * np.pi * root * r * t) for r in (2.0, 2.52, 3.0))  # root, major third, fifth
    swell = np.minimum(1.0, t / 0.3) * np.minimum(1.0, (t[::-1] + 1e-3) / 0.3)
    return 0.05 * chord * swell


def render_song(plan: SongPlan, seconds: float, rate: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
    """Render one song's mono stems (float64 arrays of `seconds * rate` samples)."""
    rng = np.random.default_rng(plan.seed)
    n = int(round(seconds * rate))
    stems = {name: np.zeros(n) for name in STEMS}
    step = 60.0 / plan.bpm / 4.0  # one 16th note, seconds
    n_steps = int(seconds / step)
    # A one-bar (16-step) bass rhythm, varied every 4 bars: where the bass plays, the kick plays.
    scale = np.array([0, 3, 5, 7, 10, 12])  # minor pentatonic + octave
    kick, snare = _kick(rate), _snare(rate, rng)
    pattern = None
    for s in range(n_steps):
        bar, pos = divmod(s, 16)
        if pos == 0 and bar % 4 == 0:
            pattern = rng.random(16) < 0.3
            pattern[[0, 8]] = True  # always on beats 1 and 3
            notes = rng.choice(scale, size=16)
        start = int(round(s * step * rate))
        if pattern[pos]:
            length = int(step * rate * (2 if not pattern[(pos + 1) % 16] else 1))
            _place(stems["bass"], _bass_note(_midi_hz(plan.root_midi + notes[pos]), length, rate), start)
            _place(stems["drums"], kick, start)
        if pos in (4, 12):
            _place(stems["drums"], snare, start)
        if pos % 2 == 0:
            _place(stems["drums"], _hat(rate, rng, open_=(pos == 14)), start)
        if pos == 0:
            bar_len = int(16 * step * rate)
            _place(stems["other"], _pad_chord(_midi_hz(plan.root_midi + 12), bar_len, rate), start)
    return stems


def _stereo(mono: np.ndarray, pan: float) -> np.ndarray:
    return np.stack([mono * (1.0 - pan), mono * (1.0 + pan)], axis=1)


def plan_dataset(tracks: int, seed: int) -> list[SongPlan]:
    """Which songs to make: tempo, key and split per track (a third, at least one, go to test)."""
    if tracks < 1:
        raise SynthError(f"--tracks must be at least 1, got {tracks}")
    rng = np.random.default_rng(seed)
    n_test = 0 if tracks == 1 else max(1, tracks // 3)
    return [
        SongPlan(
            name=f"synth-{i:03d}",
            split="test" if i >= tracks - n_test else "train",
            bpm=float(rng.integers(90, 141)),
            root_midi=int(rng.integers(28, 40)),  # E1 .. D#2
            seed=int(rng.integers(2**31)),
        )
        for i in range(tracks)
    ]


def write_dataset(out: str | Path, tracks: int = 8, seconds: float = 30.0, seed: int = 0) -> list[SongPlan]:
    """Write the data set under `out`; returns the plans (also in OUT/synth.json)."""
    if seconds < 1.0:
        raise SynthError(f"--seconds must be at least 1, got {seconds}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthError(f"OUTPUT {out} is an existing file; give a folder")
    plans = plan_dataset(tracks, seed)
    for plan in plans:
        stems = render_song(plan, seconds)
        folder = out / plan.split / plan.name
        folder.mkdir(parents=True, exist_ok=True)
        pans = {"bass": 0.0, "drums": 0.05, "other": -0.2}
        mixture = sum(_stereo(stems[k], pans[k]) for k in STEMS)
        # One gain for all stems of a song keeps mixture == bass + drums + other.
        gain = 0.9 / max(1e-9, np.abs(mixture).max())
        for name in STEMS:
            sf.write(folder / f"{name}.wav", _stereo(stems[name], pans[name]) * gain, SAMPLE_RATE, subtype="PCM_16")
        sf.write(folder / "mixture.wav", mixture * gain, SAMPLE_RATE, subtype="PCM_16")
    meta = {"seed": seed, "seconds": seconds, "sample_rate": SAMPLE_RATE,
            "tracks": [plan.__dict__ for plan in plans]}
    (out / "synth.json").write_text(json.dumps(meta, indent=2))
    return plans
