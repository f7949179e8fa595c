"""A bass part composed for one drum performance, locked to its kick (and some snares).

The drummer's own micro-timing is kept: every bass note starts exactly at a hit the
drummer played -- every kick (flams merged), plus, by style, some snare hits and
off-beat hi-hat / ride hits, or (jazz) the hit nearest each beat.  Pitches follow a
chord progression (one chord per bar or two) drawn with the track's seed from the
style's list; the first note of each bar is the chord root, the others root / fifth /
octave / seventh by the style's weights.  Each note lasts until the next one (times
the style's legato), floored to the sound bank's durations, and is as loud as the kick
under it.  Everything is a function of the performance and the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Groove MIDI was recorded on a Roland TD-11; three of its notes are not the General
# MIDI sounds (22/26 are hi-hat edge hits, 58 the floor tom rim; GM: none / none /
# vibraslap).  Mapped as the dataset's authors do.
ROLAND_TO_GM = {22: 42, 26: 46, 58: 43}
KICKS = frozenset({35, 36})
SNARES = frozenset({37, 38, 40})
CYMBAL_TIME = frozenset({42, 44, 46, 51, 53, 59})  # hats and ride (after the GM remap)
MERGE_SECONDS = 0.06  # hits closer than this are one event (flams, double kicks)
DURATIONS = (0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 0.9, 1.4, 2.0)  # seconds
EARLY_SECONDS = 0.06  # a hit this early on the bar line belongs to the bar
VELOCITIES = (48, 72, 96, 120)  # bass velocity levels (each one rendered once)
BASS_RANGE = (28, 55)  # E1 .. G3


@dataclass(frozen=True)
class BassStyle:
    program: int  # General MIDI program, 0-based (33 = fingered electric bass)
    progressions: tuple[tuple[int, ...], ...]  # chord roots, semitones above the key
    intervals: dict[int, float]  # interval above the chord root -> weight
    on_snare: float = 0.0  # share of snare hits that also get a note
    on_offbeat: float = 0.0  # share of off-beat hat/ride hits (no kick near) that get one
    walking: bool = False  # a note on every beat (jazz)
    legato: float = 0.9


ROCK = BassStyle(34, ((0, 5, 7, 0), (0, 10, 5, 0), (0, 7, 9, 5), (0, 0, 5, 7)),
                 {0: 0.6, 12: 0.2, 7: 0.2}, on_snare=0.15, legato=0.85)
FUNK = BassStyle(33, ((0, 0, 5, 0), (0, 5, 0, 7), (0, 10, 0, 5)),
                 {0: 0.4, 12: 0.3, 7: 0.15, 10: 0.15}, on_offbeat=0.3, legato=0.5)
HIPHOP = BassStyle(38, ((0, 8, 10, 0), (0, 0, 8, 7), (0, 5, 8, 7)),
                   {0: 0.8, 7: 0.1, 12: 0.1}, legato=1.0)
JAZZ = BassStyle(32, ((2, 7, 0, 9), (0, 9, 2, 7), (5, 10, 0, 0)),
                 {0: 0.35, 7: 0.25, 4: 0.2, 10: 0.2}, walking=True, legato=0.95)
LATIN = BassStyle(33, ((0, 7, 0, 7), (0, 5, 7, 0), (0, 8, 7, 0)),
                  {0: 0.5, 7: 0.4, 12: 0.1}, on_snare=0.3, legato=0.7)

# Groove MIDI's top-level styles -> the bass that suits them.
STYLE_BASS = {
    "rock": ROCK, "punk": ROCK, "pop": ROCK, "country": ROCK, "blues": ROCK,
    "funk": FUNK, "soul": FUNK, "neworleans": FUNK, "gospel": FUNK, "afrobeat": FUNK,
    "highlife": FUNK,
    "hiphop": HIPHOP, "dance": HIPHOP, "reggae": HIPHOP,
    "jazz": JAZZ,
    "latin": LATIN, "afrocuban": LATIN, "middleeastern": LATIN,
}


@dataclass(frozen=True)
class BassNote:
    start: float
    pitch: int
    velocity: int
    duration: float


@dataclass(frozen=True)
class BassPart:
    notes: list[BassNote]
    program: int
    key: int  # MIDI note of the key's root
    progression: tuple[int, ...]
    bars_per_chord: int


def style_of(style: str) -> BassStyle:
    return STYLE_BASS.get(style.split("/")[0], ROCK)


def merged_times(times, gap: float = MERGE_SECONDS) -> list[float]:
    """Sorted hit times with hits closer than `gap` to the previous kept one dropped."""
    kept: list[float] = []
    for t in sorted(times):
        if not kept or t - kept[-1] >= gap:
            kept.append(t)
    return kept


def _near(t: float, times: np.ndarray, within: float) -> bool:
    return bool(len(times)) and float(np.min(np.abs(times - t))) < within


def note_times(hits: dict[str, list[float]], style: BassStyle, beat: float, end: float,
               rng: np.random.Generator) -> tuple[list[float], set[float]]:
    """Where bass notes start: (sorted times, the subset that are kicks)."""
    kicks = merged_times(hits["kick"])
    times = list(kicks)
    taken = np.array(kicks)
    extra = []
    for t in merged_times(hits["snare"]):
        if rng.random() < style.on_snare and not _near(t, taken, 0.08):
            extra.append(t)
    for t in merged_times(hits["cymbal"]):
        offbeat = abs((t / beat) % 1.0 - 0.5) < 0.2
        if offbeat and rng.random() < style.on_offbeat and not _near(t, taken, 0.12):
            extra.append(t)
    if style.walking:
        every = np.array(sorted(sum(hits.values(), [])))
        for b in np.arange(0.0, end - 0.1, beat):
            # The drummer's hit nearest the beat, so the walk breathes with the drums.
            t = float(every[np.argmin(np.abs(every - b))]) if len(every) else b
            if abs(t - b) > 0.07:
                t = b
            if not _near(t, taken, 0.1):
                extra.append(t)
    times = merged_times(times + extra, 0.05)
    return times, set(kicks)


def _floor_to(values: tuple, x: float) -> float:
    fitting = [v for v in values if v <= x]
    return fitting[-1] if fitting else values[0]


def note_duration(seconds: float) -> float:
    """A note's length floored to the sound bank's DURATIONS (each rendered once)."""
    return _floor_to(DURATIONS, seconds)


def bar_of(t: float, bar: float) -> int:
    """The bar a hit at `t` belongs to: a hit slightly early on the bar line belongs to it."""
    return int((t + EARLY_SECONDS) // bar)


def _nearest(values: tuple, x: float) -> int:
    return min(values, key=lambda v: abs(v - x))


def compose_bass(hits: dict[str, list[float]], kick_velocity: dict[float, int], style_name: str,
                 bpm: float, bar_beats: float, end: float, seed: int) -> BassPart:
    """The bass part for one performance; `hits` maps kick/snare/cymbal to hit times."""
    rng = np.random.default_rng(seed)
    style = style_of(style_name)
    key = int(rng.integers(28, 39))  # E1 .. D2
    progression = style.progressions[int(rng.integers(len(style.progressions)))]
    bars_per_chord = int(rng.choice([1, 2]))
    beat = 60.0 / bpm
    bar = beat * bar_beats
    times, kicks = note_times(hits, style, beat, end, rng)
    intervals, weights = zip(*sorted(style.intervals.items()))
    weights = np.array(weights) / sum(weights)
    notes, last_bar = [], -1
    for i, t in enumerate(times):
        bar_index = bar_of(t, bar)
        root = key + progression[(bar_index // bars_per_chord) % len(progression)]
        interval = 0 if bar_index != last_bar else int(rng.choice(intervals, p=weights))
        last_bar = bar_index
        pitch = root + interval
        while pitch > BASS_RANGE[1]:
            pitch -= 12
        following = times[i + 1] if i + 1 < len(times) else end
        duration = note_duration((following - t) * style.legato)
        loudness = kick_velocity.get(t, 70) if t in kicks else 0.8 * kick_velocity.get(t, 70)
        velocity = _nearest(VELOCITIES, 60 + 0.6 * (loudness - 64))
        notes.append(BassNote(t, max(BASS_RANGE[0], pitch), velocity, duration))
    return BassPart(notes, style.program, key, progression, bars_per_chord)
