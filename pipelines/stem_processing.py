"""Mix processing for rendered stems, drawn per take (`grooves --processing`, issue #30).

A SoundFont stem is dry and flat; a real song's drums and bass come equalised, compressed,
a little saturated and in a room.  Each stem goes through that chain with settings drawn
from its own random stream of the take's seed (`draw_chain`), recorded in grooves.json:

  EQ tilt      a low shelf and a high shelf of opposite gains (torchaudio's biquads);
  compression  a feed-forward compressor on the stems' smoothed power (scipy's lfilter for
               the detector; neither torchaudio nor numpy has a compressor);
  saturation   tanh soft clipping, driven from the stem's peak (mild: peaks lose <= 4.4 dB);
  room         a short room: decaying noise impulse responses, one per channel (scipy's
               fftconvolve), mixed under the dry sound.

Levels are not this module's business: grooves.mix_levels brings each stem to its level
after the chain.  Every step runs in float64 numpy / single-threaded filters, so a take
comes out the same on a Ray worker (one thread) as in the calling process.
"""
from __future__ import annotations

import numpy as np

PROCESS_STREAM = 3  # the take's random streams: groove_kits uses 1, bass_realism 2
STEMS = ("drums", "bass")  # the stream index of each stem
# Ranges of each setting, per stem: (low, high) drawn uniformly.
RANGES = {
    "drums": {"tilt_db": (-4.0, 4.0), "threshold_db": (0.0, 8.0), "ratio": (1.5, 4.0),
              "detector_ms": (5.0, 20.0), "drive": (0.3, 1.5), "room_rt60": (0.2, 0.7),
              "room_wet": (0.03, 0.15)},
    "bass": {"tilt_db": (-5.0, 3.0), "threshold_db": (-3.0, 4.0), "ratio": (2.0, 5.0),
             "detector_ms": (10.0, 40.0), "drive": (0.3, 1.5), "room_rt60": (0.15, 0.4),
             "room_wet": (0.0, 0.06)},
}
LOW_SHELF_HZ, HIGH_SHELF_HZ = 250.0, 2500.0


def draw_chain(take_seed: int, stem: str) -> dict:
    """The stem's processing settings for the take (deterministic in the seed)."""
    rng = np.random.default_rng([take_seed, PROCESS_STREAM, STEMS.index(stem)])
    return {name: round(float(rng.uniform(*bounds)), 4) for name, bounds in RANGES[stem].items()}


def _tilt(x: np.ndarray, tilt_db: float, sample_rate: int) -> np.ndarray:
    import torch
    import torchaudio.functional as F

    wave = torch.from_numpy(x)
    wave = F.bass_biquad(wave, sample_rate, -tilt_db / 2, LOW_SHELF_HZ)
    return F.treble_biquad(wave, sample_rate, tilt_db / 2, HIGH_SHELF_HZ).numpy()


def _compress(x: np.ndarray, threshold_db: float, ratio: float, detector_ms: float,
              sample_rate: int) -> np.ndarray:
    """Gain reduction above (stem RMS + threshold_db), both channels alike."""
    from scipy.signal import lfilter

    power = np.mean(np.square(x), axis=0)
    a = np.exp(-1.0 / (detector_ms * 1e-3 * sample_rate))  # one-pole smoothing of the power
    level_db = 10 * np.log10(lfilter([1 - a], [1, -a], power) + 1e-12)
    rms_db = 10 * np.log10(np.mean(power) + 1e-12)
    over = np.maximum(level_db - (rms_db + threshold_db), 0.0)
    return x * 10 ** (-over * (1 - 1 / ratio) / 20)


def _saturate(x: np.ndarray, drive: float) -> np.ndarray:
    peak = float(np.abs(x).max(initial=0.0))
    if peak == 0.0:
        return x
    return np.tanh(drive * x / peak) * (peak / drive)


def _room(x: np.ndarray, rt60: float, wet: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    from scipy.signal import fftconvolve

    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    decay = np.exp(-6.91 * t / rt60)  # -60 dB at rt60
    ir = rng.standard_normal((x.shape[0], len(t))) * decay
    ir /= np.sqrt(np.sum(np.square(ir), axis=1, keepdims=True))  # unit energy: the wet is as loud as the dry
    tail = fftconvolve(x, ir, axes=1)[:, : x.shape[1]]
    return np.sqrt(1 - wet) * x + np.sqrt(wet) * tail


def process_stem(stem: np.ndarray, chain: dict, take_seed: int, name: str, sample_rate: int) -> np.ndarray:
    """float32 [2, n] -> float32 [2, n] through the chain `draw_chain` drew."""
    # torchaudio's filters clamp to [-1, 1]: run the chain at a peak of 0.25 (headroom for a
    # +4 dB shelf), then give the stem its scale back (mix_levels sets the level after)
    scale = max(float(np.abs(stem).max(initial=0.0)), 1e-9) / 0.25
    x = stem.astype(np.float64) / scale
    x = _tilt(x, chain["tilt_db"], sample_rate)
    x = _compress(x, chain["threshold_db"], chain["ratio"], chain["detector_ms"], sample_rate)
    x = _saturate(x, chain["drive"])
    room_rng = np.random.default_rng([take_seed, PROCESS_STREAM, STEMS.index(name), 1])
    x = _room(x, chain["room_rt60"], chain["room_wet"], room_rng, sample_rate)
    return (x * scale).astype(np.float32)
