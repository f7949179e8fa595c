"""What generated drums do where the bass rests (issue #30, "Drums where the bass rests").

A drummer goes on playing when the bass stops; a model that only learned "drums follow
the bass" may not.  On real songs the trained CycleGAN put out a steady broadband hum
with a tone near 300 Hz there, 18-22 dB louder than the true drums.  The whole-clip
figures (infer.features) average that away over the frames where the bass plays, so
this module measures the rest frames alone, against the true drums in those frames.

Rest frames (`rest_frames`): frames whose bass level (dB of the frame's mean mel power,
the per-frame form of prepare's window loudness, pipelines.windows.window_level_db) is
  - under DEFAULT_MIN_LEVEL_DB (-10 dB), the level under which prepare drops a whole
    window as near silent, or
  - more than ONSET_RANGE_DB (35 dB) under the clip's loudest bass frame: the range
    under the peak that the onset envelopes already treat as "nothing happens"
    (infer.features), which catches rests in a stem mastered quietly,
kept only in runs of MIN_RUN_FRAMES (~0.25 s) or more: shorter dips are the gaps
between notes, not a rest a drummer plays through.

Figures (`rest_figures`), None when a clip has under MIN_REST_FRAMES (~0.5 s, about a
beat at 120 bpm) of rest frames: too few frames for an onset correlation or a level to
mean anything.
  rest_share        rest frames / frames;
  level_diff_db     mean dB of the generated mel minus the true one over the rest frames
                    (score's level_diff_db, restricted);
  onset_agreement   score's rhythm_true_onsets restricted to the rest frames: the banded,
                    lag-tolerant correlation of the onset envelopes (computed over the
                    whole clip, so a rest's first frame has its predecessor), with
                    score's gate over the whole clip (bass_independence: a copy of the
                    bass gets 0);
  steadiness        the hum indicator: per mel bin, the median over the rest frames of
                    the power (above the codec's floor) divided by its mean, averaged over
                    bins weighted by their power.  A steady hum or tone gives ~1,
                    stationary noise ~0.7, drums (hits with decays and quiet between)
                    well under 0.5, silence 0;
  tone_share        the share of the rest frames' mean power above 150 Hz (the kick
                    band's top, infer.features.BAND_EDGES_HZ) in the strongest 3
                    adjacent mel bins there: a tone such as the hum's ~300 Hz one is
                    narrow, a kit above its kick spreads its power (the kick itself is
                    left out: its fundamental is a decaying tone of its own);
  and true_steadiness / true_tone_share, the same of the true drums, for comparison.
"""
from __future__ import annotations

import numpy as np

from infer.features import (BAND_EDGES_HZ, ONSET_RANGE_DB, banded, band_onset_envelopes, bass_independence,
                            lagged_corr, mel_bin_frequencies)
from pipelines.mel import MelParams
from pipelines.windows import DEFAULT_MIN_LEVEL_DB

REST_FLOOR_DB = DEFAULT_MIN_LEVEL_DB
REST_BELOW_PEAK_DB = ONSET_RANGE_DB
MIN_RUN_FRAMES = 11    # ~0.25 s at hop 512 / 22,050 Hz: shorter dips are gaps between notes
MIN_REST_FRAMES = 22   # ~0.5 s: fewer rest frames give no figures (None)
TONE_BINS = 3          # a sine through the 2048-point Hann STFT spreads over ~3 mel bins near 300 Hz
FIGURES = ("rest_share", "level_diff_db", "true_level_db", "onset_agreement", "steadiness", "tone_share",
           "true_steadiness", "true_tone_share")


def as_db(image: np.ndarray, params: MelParams = MelParams()) -> np.ndarray:
    """A codec image (uint8) as dB floats; float images are taken as dB already."""
    x = np.asarray(image)
    if x.dtype == np.uint8:
        return params.db_min + x.astype(np.float64) * params.db_step  # pipelines.mel.dequantize, in numpy
    return x.astype(np.float64)


def frame_level_db(image: np.ndarray, params: MelParams = MelParams()) -> np.ndarray:
    """[frames] dB of each frame's mean mel power (window_level_db per frame)."""
    power = 10.0 ** (as_db(image, params) / 10.0)
    return 10.0 * np.log10(np.maximum(power.mean(axis=0), 1e-30))


def _drop_short_runs(mask: np.ndarray, min_run: int) -> np.ndarray:
    """`mask` with its True runs shorter than `min_run` set False."""
    out = mask.copy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        if stop - start < min_run:
            out[start:stop] = False
    return out


def rest_frames(bass_image: np.ndarray, params: MelParams = MelParams(), floor_db: float = REST_FLOOR_DB,
                below_peak_db: float = REST_BELOW_PEAK_DB, min_run: int = MIN_RUN_FRAMES) -> np.ndarray:
    """[frames] bool: the frames where the bass rests (see the module docstring)."""
    level = frame_level_db(bass_image, params)
    if level.size == 0:
        return np.zeros(0, bool)
    quiet = level < max(floor_db, level.max() - below_peak_db)
    return _drop_short_runs(quiet, min_run)


def steadiness(db: np.ndarray, floor_db: float) -> float:
    """Power-weighted mean over mel bins of (median / mean) of each bin's power over the frames.

    The power is counted above the codec's floor, so silence (all at the floor) is 0, not a
    perfectly steady 1.
    """
    power = np.maximum(10.0 ** (db / 10.0) - 10.0 ** (floor_db / 10.0), 0.0)
    mean = power.mean(axis=1)
    if mean.sum() <= 1e-12:
        return 0.0
    ratio = np.median(power, axis=1) / np.maximum(mean, 1e-30)
    return float((ratio * mean).sum() / mean.sum())


def tone_share(db: np.ndarray, sample_rate: int, bins: int = TONE_BINS) -> float:
    """Share of the mean power above the kick band in its strongest `bins` adjacent mel bins."""
    above_kick = mel_bin_frequencies(db.shape[0], sample_rate) >= BAND_EDGES_HZ[1]
    mean = (10.0 ** (db[above_kick] / 10.0)).mean(axis=1)
    if mean.sum() <= 0 or len(mean) < bins:
        return 0.0
    window = np.convolve(mean, np.ones(bins), mode="valid")
    return float(window.max() / mean.sum())


def rest_onset_agreement(gen: np.ndarray, true: np.ndarray, model_input: np.ndarray, rests: np.ndarray,
                         sample_rate: int) -> float | None:
    """score's rhythm_true_onsets over the rest frames only (with its gate over the whole clip);
    None where the true drums have no onsets there (they rest too: nothing to agree with)."""
    gen_bands = [e[rests] for e in band_onset_envelopes(gen, sample_rate)]
    true_bands = [e[rests] for e in band_onset_envelopes(true, sample_rate)]
    if sum(e.std() for e in true_bands) < 1e-8:
        return None
    return banded(lagged_corr, gen_bands, true_bands) * bass_independence(gen, true, model_input)


def rest_figures(generated_image: np.ndarray, true_drums_image: np.ndarray, bass_image: np.ndarray,
                 params: MelParams = MelParams(), input_image: np.ndarray | None = None) -> dict[str, float] | None:
    """The rest-frame figures of one clip (see the module docstring); None under MIN_REST_FRAMES rests.

    The rests are found on `bass_image`; the onsets' gate is taken against the model's input,
    `input_image` when other stems were mixed into it (the bass otherwise), as score takes it."""
    images = (generated_image, true_drums_image, bass_image, bass_image if input_image is None else input_image)
    gen, true, bass, model_input = (as_db(x, params) for x in images)
    n = min(x.shape[1] for x in (gen, true, bass, model_input))
    gen, true, bass, model_input = gen[:, :n], true[:, :n], bass[:, :n], model_input[:, :n]
    rests = rest_frames(bass, params)
    if rests.sum() < MIN_REST_FRAMES:
        return None
    g, t = gen[:, rests], true[:, rests]
    return {"rest_share": float(rests.mean()), "level_diff_db": float(g.mean() - t.mean()),
            "true_level_db": float(frame_level_db(t, params).mean()),
            "onset_agreement": rest_onset_agreement(gen, true, model_input, rests, params.sample_rate),
            "steadiness": steadiness(g, params.db_min), "tone_share": tone_share(g, params.sample_rate),
            "true_steadiness": steadiness(t, params.db_min), "true_tone_share": tone_share(t, params.sample_rate)}
