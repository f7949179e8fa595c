"""Bass parts that behave like a player's, not a sequencer locked to every kick (issue #30).

`compose_bass` (pipelines/groove_bass.py) starts a note on every kick and never stops;
trained on that, the model hums wherever a real song's bass is silent.  Here a composed part
is varied, each choice drawn from its own random stream of the take's seed (turning one
option on never changes what another one drew):

  - program: one of `--bass-programs` instead of the style's (synth, picked, fingered...);
  - held notes: a share of the notes after each bar's first (the chord root stays) start
    nothing, and the note before lasts over them (`--bass-skip`);
  - rests: a share of bars, in runs of 1, 2 or 4 bars, without bass while the drums go on
    (`--bass-rests`); the note before a rest ends at it, and `mute` silences the rendered
    stem there (a short fade, then digital silence: a muted channel, tails and room included).

At the defaults nothing is drawn and the part is returned as it came.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from pipelines.groove_bass import EARLY_SECONDS, BassPart, bar_of, note_duration

BASS_STREAM = 2  # the take's random streams: groove_kits uses 1, stem_processing 3
REST_RUNS = (1, 2, 4)  # bars in one rest: phrases come in ones, twos and fours
FADE_SECONDS = 0.03  # the mute's fade: a bass player's damping, no click


def rest_runs(n_bars: int, share: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """[first, stop) bar runs covering round(share * n_bars) bars, at least one bar left to play."""
    target = min(round(share * n_bars), n_bars - 1)
    resting = np.zeros(max(n_bars, 0), dtype=bool)
    while resting.sum() < target:
        length = min(int(rng.choice(REST_RUNS)), int(target - resting.sum()))
        free = [s for s in range(n_bars - length + 1) if not resting[s:s + length].any()]
        if not free:  # only single bars left between rests
            length, free = 1, [s for s in range(n_bars) if not resting[s]]
        start = free[int(rng.integers(len(free)))]
        resting[start:start + length] = True
    runs, start = [], None
    for i, rest in enumerate(list(resting) + [False]):
        if rest and start is None:
            start = i
        elif not rest and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _hold(notes: list, share: float, rng: np.random.Generator, bar: float, legato: float,
          end: float) -> tuple[list, int]:
    """Drop a share of the notes after each bar's first; the one before lasts over the gap."""
    kept = [i for i, n in enumerate(notes)
            if i == 0 or bar_of(n.start, bar) != bar_of(notes[i - 1].start, bar) or rng.random() >= share]
    held = []
    for j, i in enumerate(kept):
        n = notes[i]
        following = notes[kept[j + 1]].start if j + 1 < len(kept) else end
        was = notes[i + 1].start if i + 1 < len(notes) else end
        held.append(n if following == was else replace(n, duration=note_duration((following - n.start) * legato)))
    return held, len(notes) - len(kept)


def _rest(notes: list, spans: list[tuple[float, float]], bar: float, runs) -> list:
    """The notes outside the rest bars, each ending by the next rest's start."""
    resting = {b for first, stop in runs for b in range(first, stop)}
    kept = [n for n in notes if bar_of(n.start, bar) not in resting]
    starts = [a for a, _ in spans]
    out = []
    for n in kept:
        later = [a for a in starts if a > n.start]
        if later and n.start + n.duration > later[0]:
            n = replace(n, duration=note_duration(later[0] - n.start))
        out.append(n)
    return out


def vary_bass(part: BassPart, realism: dict, take_seed: int, bar: float, end: float,
              legato: float) -> tuple[BassPart, dict]:
    """The part varied by `realism` (groove_options.realism_of) -> (part, what was drawn)."""
    streams = [np.random.default_rng([take_seed, BASS_STREAM, k]) for k in range(3)]
    notes, program, held, spans = list(part.notes), part.program, 0, []
    if realism.get("bass_programs"):
        program = int(streams[0].choice(realism["bass_programs"]))
    if realism.get("bass_skip", 0.0) > 0 and notes:
        notes, held = _hold(notes, realism["bass_skip"], streams[1], bar, legato, end)
    if realism.get("bass_rests", 0.0) > 0 and notes:
        runs = rest_runs(math.ceil(end / bar), realism["bass_rests"], streams[2])
        spans = [(max(0.0, a * bar - EARLY_SECONDS), min(end, b * bar - EARLY_SECONDS)) for a, b in runs]
        rested = _rest(notes, spans, bar, runs)
        if rested:  # rests where all the kicks are would leave no bass at all: keep it whole
            notes = rested
        else:
            spans = []
    varied = replace(part, notes=notes, program=program)
    return varied, {"bass_held": held, "bass_rests": [[round(a, 4), round(b, 4)] for a, b in spans]}


def mute(stem: np.ndarray, spans, sample_rate: int) -> np.ndarray:
    """stem [2, n] (in place) faded out at each span's start and silent to its end."""
    fade = int(FADE_SECONDS * sample_rate)
    for a, b in spans:
        first, stop = int(round(a * sample_rate)), min(stem.shape[1], int(round(b * sample_rate)))
        ramp_end = min(stop, first + fade)
        stem[:, first:ramp_end] *= np.linspace(1.0, 0.0, ramp_end - first, dtype=np.float32)
        stem[:, ramp_end:stop] = 0.0
    return stem
