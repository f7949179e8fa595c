"""From generated drum images to audio files: invert, level, limit, mix, encode.

Stitching the generated windows into one image is pipelines/windowing.py's (overlap-add of
mel power, cross-faded).

Level (`DRUMS_LEVELS`): by default ("model") the drums keep the level the generator drew
them at.  Its input is the bass's mel at the file's own level and its training windows hold
real stems at their level in the mix, so the drawn level is the model's estimate of how loud
the drums sit against that bass.  `drums_gain_db` is added to it.  "bass" instead sets the
drums' integrated loudness (ITU-R BS.1770-4, K-weighted and gated: torchaudio's `loudness`)
to the bass's plus `drums_gain_db`, for a model whose level cannot be trusted.  Signals
shorter than one 400 ms loudness block, or gated out as silent, fall back to active RMS (RMS
over the 2048-sample blocks within 30 dB of the loudest block); the gain is capped to
[-40, +30] dB so a near-silent generation is not blown up into noise.

Peaks: a generated kick can run 10-20 dB hotter than the rest of the kit.  Scaling the whole
signal under full scale (as the mix still is, `peak_safe`) then set the level of every drum
by that one kick: on the held-out grooves the drums came out ~10 dB under the true ones
whichever level rule ran before it.  `limit_peaks` turns down only the stretches around the
peaks (look-ahead, a few milliseconds), so the rest of the kit keeps its level.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from infer.options import DRUMS_LEVELS

ACTIVE_RANGE_DB = 30.0
BLOCK = 2048
GAIN_LIMITS_DB = (-40.0, 30.0)
LOUDNESS_BLOCK_SECONDS = 0.4   # BS.1770's gating block: shorter signals have no loudness
PEAK_LIMIT = 0.999
LIMITER_HOLD_SECONDS = 0.005    # the limiter's gain stays down this long either side of a peak
LIMITER_SMOOTH_SECONDS = 0.010  # and eases in and out over this much, so gain changes do not click


def invert_images(images: list[torch.Tensor], lengths: list[int], params, n_iter: int,
                  max_batch_frames: int = 20000) -> list[torch.Tensor]:
    """uint8 mel images -> audio at the mel rate, in batched Griffin-Lim calls.

    Only images of the same size share a call: padding a shorter image would change
    its Griffin-Lim result near its end, and a clip's audio must not depend on which
    other clips happen to share its batch.  Calls are capped at `max_batch_frames`
    frames so long songs do not exhaust memory.
    """
    from pipelines.mel import image_to_audio

    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((tuple(image.shape), lengths[i]), []).append(i)
    for (shape, length), members in groups.items():
        per_call = max(1, max_batch_frames // max(1, shape[-1]))
        for start in range(0, len(members), per_call):
            chunk = members[start:start + per_call]
            audio = image_to_audio(torch.stack([images[i] for i in chunk]), params, n_iter=n_iter, length=length)
            for row, i in enumerate(chunk):
                out[i] = audio[row]
    return out  # type: ignore[return-value]


def _mono(signal: np.ndarray) -> np.ndarray:
    """float64 mono: [n] as it is, [channels, n] averaged over the channels."""
    x = np.asarray(signal, np.float64)
    return x.mean(axis=0) if x.ndim == 2 else x


def active_rms(signal: np.ndarray) -> float:
    """RMS over the blocks within ACTIVE_RANGE_DB of the loudest block (mono or [channels, n])."""
    x = _mono(signal)
    n = len(x) // BLOCK * BLOCK
    blocks = x[:n].reshape(-1, BLOCK) if n else x.reshape(1, -1)
    power = (blocks ** 2).mean(axis=1)
    if power.max() <= 0:
        return 0.0
    active = power >= power.max() * 10 ** (-ACTIVE_RANGE_DB / 10)
    return float(np.sqrt(power[active].mean()))


def loudness_lufs(signal: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness (LUFS) of the mono downmix, or None when it has none (too short or all gated)."""
    import torchaudio

    x = _mono(signal)
    if len(x) < LOUDNESS_BLOCK_SECONDS * sample_rate:
        return None
    value = float(torchaudio.functional.loudness(torch.from_numpy(x)[None], sample_rate))
    return value if np.isfinite(value) else None


def drums_gain_db(drums: np.ndarray, bass: np.ndarray, sample_rate: int, level: str,
                  offset_db: float = 0.0) -> float:
    """Gain (dB) for the generated drums: `offset_db` on the level the generator drew them at
    (level "model"), or on the bass's loudness (level "bass")."""
    if level == "model":
        return float(offset_db)
    if level == "bass":
        return level_match_gain_db(drums, bass, sample_rate, offset_db)
    raise ValueError(f"drums level must be one of {DRUMS_LEVELS}, not {level!r}")


def level_match_gain_db(drums: np.ndarray, bass: np.ndarray, sample_rate: int, drums_gain_db: float = 0.0) -> float:
    """Gain (dB) that brings the drums' loudness to the bass's plus `drums_gain_db`, capped."""
    d, b = loudness_lufs(drums, sample_rate), loudness_lufs(bass, sample_rate)
    if d is not None and b is not None:
        gain = b - d + drums_gain_db
    else:
        d_rms, b_rms = active_rms(drums), active_rms(bass)
        if d_rms <= 0 or b_rms <= 0:
            return 0.0
        gain = 20 * np.log10(b_rms / d_rms) + drums_gain_db
    return float(np.clip(gain, *GAIN_LIMITS_DB))


def limit_peaks(signal: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """Turn down only the stretches around peaks over PEAK_LIMIT (look-ahead peak limiter);
    returns (signal, the deepest gain reduction in dB, 0 when nothing was over).

    Why not scale the whole signal: a generated kick that runs 10-20 dB hot would set the
    level of the whole kit.  The gain is the lowest `PEAK_LIMIT / |x|` within the hold time
    and smoothing length of each sample, then smoothed (a moving mean over the smoothing
    length), so it is already down when a peak arrives and stays at or under PEAK_LIMIT.
    Works on [n] or [channels, n] (one gain for all channels).
    """
    from scipy.ndimage import maximum_filter1d, uniform_filter1d

    envelope = np.abs(signal) if signal.ndim == 1 else np.abs(signal).max(axis=0)
    if not envelope.size or envelope.max() <= PEAK_LIMIT:
        return signal, 0.0
    hold = max(1, round(LIMITER_HOLD_SECONDS * sample_rate))
    smooth = max(1, round(LIMITER_SMOOTH_SECONDS * sample_rate))
    # The max filter reaches hold + smooth/2 either side: every sample the moving mean takes in
    # around a peak already has that peak's gain or less.
    reach = maximum_filter1d(envelope, size=2 * hold + smooth, mode="nearest")
    gain = uniform_filter1d(np.minimum(1.0, PEAK_LIMIT / reach), size=smooth, mode="nearest")
    limited = np.clip(signal * gain, -PEAK_LIMIT, PEAK_LIMIT)  # rounding only: the gain already holds
    return limited, float(20 * np.log10(gain.min()))


def peak_safe(signal: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale down (never up) so the peak stays below PEAK_LIMIT; returns (signal, gain in dB)."""
    peak = float(np.abs(signal).max()) if signal.size else 0.0
    if peak <= PEAK_LIMIT:
        return signal, 0.0
    scale = PEAK_LIMIT / peak
    return signal * scale, float(20 * np.log10(scale))


def fit_length(signal: np.ndarray, n: int) -> np.ndarray:
    """Crop or zero-pad the last axis to exactly n samples."""
    if signal.shape[-1] >= n:
        return signal[..., :n]
    pad = [(0, 0)] * (signal.ndim - 1) + [(0, n - signal.shape[-1])]
    return np.pad(signal, pad)


def mix(bass: np.ndarray, drums: np.ndarray) -> np.ndarray:
    """[channels, n] bass + [n] drums (added to every channel)."""
    return bass + drums[None, :]


def wav_bytes(signal: np.ndarray, sample_rate: int) -> bytes:
    from pipelines.audio import save_wav

    buf = io.BytesIO()
    save_wav(buf, signal, sample_rate)
    return buf.getvalue()


def mel_png_bytes(image: np.ndarray, params) -> bytes:
    """uint8 [n_mels, frames] -> the report's spectrogram figure: time (s), frequency (Hz), colour bar (dB)."""
    from infer.media import spectrogram_png

    return spectrogram_png({"generated drums": np.asarray(image, np.uint8)}, params)
