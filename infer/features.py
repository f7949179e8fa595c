"""Objective per-clip features that compare generated drums with the true drums.

All functions take mel images as the codec makes them (`[n_mels, frames]`, uint8 or
dB floats, mel bin 0 = lowest frequency) and return plain numpy values.  None of
them ever returns NaN: a constant (e.g. silent) row or envelope has no defined
correlation, and counts as "no agreement" (0).

- STOI-like vector (the paper, section IV-D): for each mel bin i, the Pearson
  correlation over time between row i of the true and of the generated mel.
- Rhythm (beyond the paper, the raters' "time" dimension): onset envelopes
  (spectral flux of the dB mel) of generated drums, true drums and bass, and how
  they line up:
    rhythm_bass_onsets   max correlation (lags within +-2 frames, ~46 ms) between
                         the generated drums' and the bass's onset envelopes;
    rhythm_grid_phase    the bass's beat period is taken from the autocorrelation
                         of its onset envelope (0.3 s .. 1.5 s); both envelopes are
                         folded onto that period, and the correlation of the two
                         folded profiles says whether the drums hit on the same
                         phases of the bass's beat grid;
    rhythm_grid_tempo    autocorrelation of the generated drums' onset envelope at
                         the bass's beat period (do the drums pulse at its tempo);
    rhythm_true_onsets   like rhythm_bass_onsets, against the true drums.
- Level: mean dB of the generated mel minus that of the true mel.
"""
from __future__ import annotations

import numpy as np

N_STOI = 256
ONSET_MAX_LAG = 2  # frames: ~46 ms at hop 512 / 22,050 Hz
BEAT_PERIOD_S = (0.3, 1.5)
RHYTHM_FEATURES = ("rhythm_bass_onsets", "rhythm_grid_phase", "rhythm_grid_tempo", "rhythm_true_onsets")
_EPS = 1e-8


def stoi_names(n_mels: int = N_STOI) -> list[str]:
    return [f"stoi_{i:03d}" for i in range(n_mels)]


def _as_db(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _crop_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(a.shape[-1], b.shape[-1])
    return a[..., :n], b[..., :n]


def stoi_like(true_mel: np.ndarray, generated_mel: np.ndarray) -> np.ndarray:
    """[n_mels] Pearson correlation over time of each mel row (0 where a row is constant)."""
    x, y = _crop_pair(_as_db(true_mel), _as_db(generated_mel))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"mel bin counts differ: {x.shape[0]} vs {y.shape[0]}")
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    num = (xc * yc).sum(axis=1)
    den = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
    # A constant row (silence, or a clamped band) has no correlation to speak of: 0, not NaN.
    return np.where(den > _EPS, num / np.maximum(den, _EPS), 0.0)


def active_bins(true_mel: np.ndarray) -> np.ndarray:
    """Mel rows of the true drums that change over time (where a correlation is defined)."""
    x = _as_db(true_mel)
    return x.std(axis=1) > _EPS


def stoi_mean(stoi: np.ndarray, true_mel: np.ndarray) -> float:
    """Mean STOI-like correlation over the true drums' active bins (0 when none is active)."""
    active = active_bins(true_mel)[: len(stoi)]
    return float(stoi[active].mean()) if active.any() else 0.0


def onset_envelope(mel: np.ndarray) -> np.ndarray:
    """[frames] spectral flux: mean over bins of the positive dB increase from the previous frame."""
    x = _as_db(mel)
    flux = np.maximum(np.diff(x, axis=1), 0.0).mean(axis=0)
    return np.concatenate([[0.0], flux])


def safe_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length vectors; 0 when either is constant."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    den = np.sqrt((a ** 2).sum() * (b ** 2).sum())
    return float((a * b).sum() / den) if den > _EPS else 0.0


def lagged_corr(a: np.ndarray, b: np.ndarray, max_lag: int = ONSET_MAX_LAG) -> float:
    """Best correlation of `a` and `b` over small time lags (onsets a few ms apart still match)."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    best = 0.0
    for lag in range(-max_lag, max_lag + 1):
        if n - abs(lag) < 3:
            continue
        x = a[max(lag, 0): n + min(lag, 0)]
        y = b[max(-lag, 0): n - max(lag, 0)]
        best = max(best, safe_corr(x, y))
    return best


def autocorr(env: np.ndarray, lag: int) -> float:
    if lag <= 0 or lag >= len(env) - 2:
        return 0.0
    return safe_corr(env[:-lag], env[lag:])


def beat_period(env: np.ndarray, frames_per_second: float) -> int:
    """The bass's beat period in frames: the strongest autocorrelation lag in 0.3 s .. 1.5 s (0 if none)."""
    lo = max(2, int(round(BEAT_PERIOD_S[0] * frames_per_second)))
    hi = min(len(env) // 2, int(round(BEAT_PERIOD_S[1] * frames_per_second)))
    if hi <= lo:
        return 0
    scores = [autocorr(env, lag) for lag in range(lo, hi + 1)]
    best = int(np.argmax(scores))
    return lo + best if scores[best] > 0 else 0


def folded_profile(env: np.ndarray, period: int) -> np.ndarray:
    """Mean onset strength at each phase of a `period`-frame grid."""
    n = len(env) // period * period
    return env[:n].reshape(-1, period).mean(axis=0)


def rhythm_features(generated_mel: np.ndarray, true_mel: np.ndarray, bass_mel: np.ndarray | None,
                    frames_per_second: float) -> dict[str, float]:
    """The four rhythm features (see the module docstring); bass-based ones are 0 without bass."""
    gen = onset_envelope(generated_mel)
    true = onset_envelope(true_mel)
    out = {name: 0.0 for name in RHYTHM_FEATURES}
    out["rhythm_true_onsets"] = lagged_corr(gen, true)
    if bass_mel is None:
        return out
    bass = onset_envelope(bass_mel)
    n = min(len(gen), len(bass))
    gen, bass = gen[:n], bass[:n]
    out["rhythm_bass_onsets"] = lagged_corr(gen, bass)
    period = beat_period(bass, frames_per_second)
    if period:
        out["rhythm_grid_phase"] = safe_corr(folded_profile(gen, period), folded_profile(bass, period))
        out["rhythm_grid_tempo"] = autocorr(gen, period)
    return out


def level_diff_db(generated_mel: np.ndarray, true_mel: np.ndarray) -> float:
    """Mean dB level of the generated mel minus the true one (how much quieter/louder)."""
    g, t = _crop_pair(_as_db(generated_mel), _as_db(true_mel))
    return float(g.mean() - t.mean())
