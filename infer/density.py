"""Gaussian models of real-drum activations: per-clip density features and the set-level FID.

The paper fits N(mu_r, Sigma_r) to real clips' Inception activations (as FID does)
and uses the density of each generated clip under it as a feature.  With a few
hundred real clips and 2048 dimensions the sample covariance is singular, so the
covariance is Ledoit-Wolf shrunk (scikit-learn's shrinkage estimate):
Sigma = (1 - delta) S + delta * mu * I, with S the empirical covariance and mu its
mean eigenvalue.  The log-likelihood is reported per dimension (divided by d) so the
layers' features have comparable scales.

The Fréchet distance uses the plain sample covariances, as FID does.

Both work in the span of the data (a thin SVD of the centred n x d activations)
instead of on d x d matrices: exact, and with n << d (hundreds of clips, 2048
dimensions) it avoids 2048 x 2048 eigendecompositions, which is what made the
driver slow.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def centred_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [d], singular values [k], right singular vectors [k, d]) of the centred data."""
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, s, vt


@dataclass
class Gaussian:
    """N(mean, V^T diag(span_vars) V + floor_var * (I - V^T V)): variances in and off the data's span."""

    mean: np.ndarray        # [d]
    basis: np.ndarray       # [k, d] orthonormal rows spanning the data
    span_vars: np.ndarray   # [k] variances along the basis
    floor_var: float        # variance in every other direction

    @property
    def dim(self) -> int:
        return len(self.mean)

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """[n, d] -> [n] log density per dimension (natural log)."""
        z = np.asarray(x, np.float64) - self.mean
        along = z @ self.basis.T                                   # [n, k]
        off = np.maximum((z ** 2).sum(axis=1) - (along ** 2).sum(axis=1), 0.0)
        mahalanobis = (along ** 2 / self.span_vars).sum(axis=1) + off / self.floor_var
        k = len(self.span_vars)
        logdet = np.log(self.span_vars).sum() + (self.dim - k) * np.log(self.floor_var)
        ll = -0.5 * (self.dim * np.log(2 * np.pi) + logdet + mahalanobis)
        return ll / self.dim


def fit_gaussian(x: np.ndarray, svd=None) -> Gaussian:
    """Fit a Gaussian with a Ledoit-Wolf shrunk covariance to [n, d] samples (n >= 2).

    `svd`: `centred_svd(x)` when the caller has it already (it is the expensive part).
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 real clips to fit a Gaussian, got {len(x)}")
    n, d = x.shape
    mean, s, vt = svd if svd is not None else centred_svd(x)
    emp_vars = s ** 2 / n                          # eigenvalues of the empirical (MLE) covariance
    mu = emp_vars.sum() / d
    delta = float(ledoit_wolf_shrinkage(x, assume_centered=False))
    floor = max(delta * mu, 1e-12 * max(mu, 1e-12))  # keeps the inverse finite when delta is 0
    span_vars = np.maximum((1.0 - delta) * emp_vars + delta * mu, floor)
    return Gaussian(mean=mean, basis=vt, span_vars=span_vars, floor_var=floor)


def frechet_distance(real: np.ndarray, generated: np.ndarray, real_svd=None) -> float:
    """FID between two [n, d] activation sets: |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2).

    With S_r = V^T diag(l) V (thin SVD), the non-zero eigenvalues of
    S_r^1/2 S_g S_r^1/2 are those of the small matrix diag(l)^1/2 (V S_g V^T) diag(l)^1/2.
    """
    real = np.asarray(real, np.float64)
    generated = np.asarray(generated, np.float64)
    if len(real) < 2 or len(generated) < 2:
        raise ValueError("the Fréchet distance needs at least 2 clips on each side")
    mu_r, s_r, v_r = real_svd if real_svd is not None else centred_svd(real)
    mu_g, s_g, _ = centred_svd(generated)
    var_r = s_r ** 2 / (len(real) - 1)
    trace_g = (s_g ** 2).sum() / (len(generated) - 1)
    projected = (generated - mu_g) @ v_r.T                      # [n_g, k]
    inner = projected.T @ projected / (len(generated) - 1)      # V S_g V^T
    root = np.sqrt(var_r)
    cross = np.linalg.eigvalsh(root[:, None] * inner * root[None, :])
    trace_sqrt = np.sqrt(np.clip(cross, 0.0, None)).sum()
    value = ((mu_r - mu_g) ** 2).sum() + var_r.sum() + trace_g - 2.0 * trace_sqrt
    return float(max(value, 0.0))
