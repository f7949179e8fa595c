"""Gaussian models of real-drum activations: per-clip density features and the set-level FID.

Everything is float64 (Inception activations arrive as float32; a stand-in network's
activations can be large, and FID subtracts traces of similar size).

Covariance estimates
--------------------
A Gaussian here is N(mean, V^T diag(span_vars) V + floor_var * (I - V^T V)): `span_vars`
along the orthonormal rows of V (the data's span, from a thin SVD of the centred
n x d activations), `floor_var` in every other direction.  Working in the span keeps
the cost at O(n^2 d) instead of d x d eigendecompositions (d = 2048 for pool3).

  - "sample": the unbiased sample covariance (denominator n - 1), floor 0: the
    textbook FID.  Used when every set has more clips than dimensions.
  - "ledoit-wolf": scikit-learn's Ledoit-Wolf shrinkage of the empirical covariance,
    (1 - delta) S + delta * mu * I, mu the mean eigenvalue of S.  Used when a set has
    no more clips than dimensions: the sample covariance is then singular and its
    FID is dominated by estimation noise; shrinkage gives a full-rank, better
    conditioned estimate.  With many clips delta tends to 0 and this tends to the
    sample covariance.
The density feature of a clip always uses the Ledoit-Wolf Gaussian of the real clips
(a log-density needs a full-rank covariance); it is reported per dimension (divided
by d) so the layers' features have comparable scales.

Fréchet distance
----------------
FD = |mu_1 - mu_2|^2 + Tr S_1 + Tr S_2 - 2 Tr (S_1^1/2 S_2 S_1^1/2)^1/2.
Both covariances are identity-times-floor outside the union W of their two spans, so
the last trace is computed exactly in W (an orthonormal basis from a QR of the two
bases: at most n_1 + n_2 dimensions) plus (d - dim W) sqrt(floor_1 floor_2).  In W
the square roots of the symmetric PSD matrices come from `scipy.linalg.eigh`
(eigenvalues clipped at 0: rounding can make tiny ones negative), and the trace is
the sum of the singular values of S_1^1/2 S_2^1/2.  So FD(X, X) is 0 up to rounding
(~1e-12 of Tr S), FD is symmetric, and it equals `scipy.linalg.sqrtm`'s on full matrices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE = "sample"
LEDOIT_WOLF = "ledoit-wolf"


def centred_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [d], singular values [k], right singular vectors [k, d]) of the centred data."""
    x = np.asarray(x, np.float64)
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
    n: int = 0              # clips it was fitted on
    covariance: str = LEDOIT_WOLF

    @property
    def dim(self) -> int:
        return len(self.mean)

    def trace(self) -> float:
        return float(self.span_vars.sum() + (self.dim - len(self.span_vars)) * self.floor_var)

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """[n, d] -> [n] log density per dimension (natural log); needs floor_var > 0."""
        if self.floor_var <= 0:
            raise ValueError("a log-density needs a full-rank covariance (fit with shrink=True)")
        z = np.asarray(x, np.float64) - self.mean
        along = z @ self.basis.T                                   # [n, k]
        off = np.maximum((z ** 2).sum(axis=1) - (along ** 2).sum(axis=1), 0.0)
        mahalanobis = (along ** 2 / self.span_vars).sum(axis=1) + off / self.floor_var
        k = len(self.span_vars)
        logdet = np.log(self.span_vars).sum() + (self.dim - k) * np.log(self.floor_var)
        ll = -0.5 * (self.dim * np.log(2 * np.pi) + logdet + mahalanobis)
        return ll / self.dim


def fit_gaussian(x: np.ndarray, svd=None, shrink: bool = True) -> Gaussian:
    """Fit a Gaussian to [n, d] samples (n >= 2): Ledoit-Wolf shrunk, or the plain sample covariance.

    `svd`: `centred_svd(x)` when the caller has it already (it is the expensive part).
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 clips to fit a Gaussian, got {len(x)}")
    mean, s, vt = svd if svd is not None else centred_svd(x)
    delta = float(ledoit_wolf_shrinkage(x, assume_centered=False)) if shrink else None
    return _gaussian(mean, vt, s ** 2, len(x), delta)


def _gaussian(mean: np.ndarray, basis: np.ndarray, scatter: np.ndarray, n: int, delta: float | None) -> Gaussian:
    """The Gaussian of n samples from their centred scatter's eigenvalues [k] along `basis` [k, d]:
    the sample covariance (delta None), else Ledoit-Wolf's shrinkage by `delta`."""
    d = len(mean)
    if delta is None:
        return Gaussian(mean=mean, basis=basis, span_vars=scatter / (n - 1), floor_var=0.0, n=n, covariance=SAMPLE)
    emp_vars = scatter / n                         # eigenvalues of the empirical (MLE) covariance
    mu = emp_vars.sum() / d
    if delta == 0.0 and n <= d:
        # From 2 samples Ledoit-Wolf's estimate of the covariance's sampling spread is 0 and
        # it would not shrink a rank-1 covariance at all: take the isotropic mu * I instead.
        delta = 1.0
    floor = max(delta * mu, 1e-12 * max(mu, 1e-300))  # keeps the inverse finite when delta is 0
    span_vars = np.maximum((1.0 - delta) * emp_vars + delta * mu, floor)
    return Gaussian(mean=mean, basis=basis, span_vars=span_vars, floor_var=floor, n=n, covariance=LEDOIT_WOLF)


def covariance_method(n_clips: list[int], dims: int) -> str:
    """'sample' when every set has more clips than dimensions, else 'ledoit-wolf' (see the module doc)."""
    return SAMPLE if min(n_clips) > dims else LEDOIT_WOLF


def _restricted(g: Gaussian, q: np.ndarray) -> np.ndarray:
    """The covariance of `g` in the orthonormal basis `q` [d, m] (a subspace containing g's span)."""
    p = g.basis @ q                                                 # [k, m]
    cov = (p.T * (g.span_vars - g.floor_var)) @ p
    cov[np.diag_indices_from(cov)] += g.floor_var
    return (cov + cov.T) / 2.0


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    from scipy.linalg import eigh

    w, v = eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(g1: Gaussian, g2: Gaussian) -> float:
    """Tr (S_1^1/2 S_2 S_1^1/2)^1/2, exactly, in the union of the two spans (see the module doc).

    It is the sum of the singular values of S_1^1/2 S_2^1/2 (that product times its
    transpose is S_1^1/2 S_2 S_1^1/2): singular values carry an error of about
    eps * |S|, where the eigenvalues' square roots would carry sqrt(eps) * |S|.
    """
    from scipy.linalg import svdvals

    d = g1.dim
    stacked = np.concatenate([g1.basis, g2.basis]).T                # [d, k1 + k2]
    if stacked.shape[1] >= d:
        q = np.eye(d)
    else:
        q, _ = np.linalg.qr(stacked)                                # orthonormal, spans both
    m = q.shape[1]
    product = _sqrtm_psd(_restricted(g1, q)) @ _sqrtm_psd(_restricted(g2, q))
    outside = (d - m) * np.sqrt(g1.floor_var * g2.floor_var)
    return float(svdvals(product).sum() + outside)


def gaussian_frechet(g1: Gaussian, g2: Gaussian) -> float:
    """The Fréchet distance between two Gaussians (>= 0)."""
    if g1.dim != g2.dim:
        raise ValueError(f"dimensions differ: {g1.dim} vs {g2.dim}")
    value = ((g1.mean - g2.mean) ** 2).sum() + g1.trace() + g2.trace() - 2.0 * trace_sqrt_product(g1, g2)
    return float(max(value, 0.0))


def frechet_distance(real: np.ndarray, generated: np.ndarray, covariance: str | None = None) -> float:
    """FID between two [n, d] activation sets; `covariance` 'sample' / 'ledoit-wolf' / None (automatic)."""
    real = np.asarray(real, np.float64)
    generated = np.asarray(generated, np.float64)
    if len(real) < 2 or len(generated) < 2:
        raise ValueError("the Fréchet distance needs at least 2 clips on each side")
    covariance = covariance or covariance_method([len(real), len(generated)], real.shape[1])
    shrink = covariance == LEDOIT_WOLF
    return gaussian_frechet(fit_gaussian(real, shrink=shrink), fit_gaussian(generated, shrink=shrink))


def frechet_record(real, generated, real_fits: dict | None = None) -> dict:
    """The distance with what it rests on: {value, clips, reference_clips, dims, covariance}.

    `real`, `generated`: [n, d] activations, or the ActivationStats of a set's.  `real_fits`: a
    cache {covariance: Gaussian of `real`} shared by the sets scored against it.
    """
    real, generated = as_stats(real), as_stats(generated)
    d = real.dim
    record = {"value": None, "clips": int(generated.n), "reference_clips": int(real.n), "dims": int(d),
              "covariance": None}
    if real.n < 2 or generated.n < 2:
        return record
    method = covariance_method([real.n, generated.n], d)
    cache = real_fits if real_fits is not None else {}
    if method not in cache:
        cache[method] = real.fit(shrink=method == LEDOIT_WOLF)
    value = gaussian_frechet(cache[method], generated.fit(shrink=method == LEDOIT_WOLF))
    record.update(value=value, covariance=method)
    return record


# ---------------------------------------------------------------- streaming

class ActivationStats:
    """One group's activations at one layer, arriving in batches, in memory bounded by d x d.

    While there are at most `cap` clips (default d) they are kept as they are, and the fit is
    `fit_gaussian`'s, in their span.  Past that they fold into float64 moments about `shift`
    (a point near the data, the same for every group of a layer so groups merge by adding):
    the sums of y, y y^T, |y|^2, |y|^2 y and |y|^4 (y = x - shift), from which the covariance
    and Ledoit-Wolf's shrinkage follow exactly; the fit is then a d x d eigendecomposition.
    """

    def __init__(self, dim: int, shift: np.ndarray | None = None, cap: int | None = None):
        self.dim = dim
        self.shift = np.zeros(dim) if shift is None else np.asarray(shift, np.float64)
        self.cap = dim if cap is None else cap
        self.n = 0
        self.rows: list[np.ndarray] = []
        self.moments: dict | None = None

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        self.n += len(x)
        if self.moments is None and self.n <= self.cap:
            self.rows.append(x)
            return
        self._fold_rows()
        self._accumulate(x)

    def merged(self, other: "ActivationStats") -> "ActivationStats":
        """The statistics of both groups' clips (same layer, same shift)."""
        out = ActivationStats(self.dim, self.shift, self.cap)
        for part in (self, other):
            for x in part.rows:
                out.add(x)
        for part in (self, other):
            if part.moments is not None:
                out._fold_rows()
                out.moments = {k: out.moments[k] + v for k, v in part.moments.items()}
                out.n += part.n
        return out

    def _fold_rows(self) -> None:
        """From kept rows to moments (once)."""
        if self.moments is not None:
            return
        self.moments = {"s1": np.zeros(self.dim), "s2": np.zeros((self.dim, self.dim)), "q": 0.0,
                        "qy": np.zeros(self.dim), "q2": 0.0}
        rows, self.rows = self.rows, []
        for x in rows:
            self._accumulate(x)

    def _accumulate(self, x: np.ndarray) -> None:
        y = np.asarray(x, np.float64) - self.shift
        norms = (y * y).sum(axis=1)
        m = self.moments
        m["s1"] += y.sum(axis=0)
        m["s2"] += y.T @ y
        m["q"] += float(norms.sum())
        m["qy"] += norms @ y
        m["q2"] += float((norms ** 2).sum())

    def fit(self, shrink: bool = True) -> Gaussian:
        if self.n < 2:
            raise ValueError(f"need at least 2 clips to fit a Gaussian, got {self.n}")
        if self.moments is None:
            return fit_gaussian(np.concatenate(self.rows), shrink=shrink)
        m, n, d = self.moments, self.n, self.dim
        centre = m["s1"] / n                              # the mean of y
        scatter = m["s2"] - n * np.outer(centre, centre)  # sum of (y - centre)(y - centre)^T
        scatter = (scatter + scatter.T) / 2.0
        values, vectors = np.linalg.eigh(scatter)
        values, basis = np.clip(values[::-1], 0.0, None), vectors[:, ::-1].T
        return _gaussian(self.shift + centre, basis, values, n, _ledoit_wolf_delta(m, centre, scatter, n, d)
                         if shrink else None)


def _ledoit_wolf_delta(m: dict, centre: np.ndarray, scatter: np.ndarray, n: int, d: int) -> float:
    """sklearn's `ledoit_wolf_shrinkage` of the centred clips, from the moments alone."""
    c2 = float(centre @ centre)
    # sum over clips of |y - centre|^4, expanded in the moments
    beta_ = (m["q2"] + 2.0 * c2 * m["q"] + n * c2 ** 2 - 4.0 * float(centre @ m["qy"])
             - 4.0 * c2 * float(centre @ m["s1"]) + 4.0 * float(centre @ m["s2"] @ centre))
    trace = float(np.trace(scatter)) / n
    mu = trace / d
    delta_ = float((scatter ** 2).sum()) / n ** 2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu ** 2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def as_stats(x) -> ActivationStats:
    """[n, d] activations as ActivationStats (kept as rows); ActivationStats as they are."""
    if isinstance(x, ActivationStats):
        return x
    x = np.asarray(x, np.float64)
    stats = ActivationStats(x.shape[1], cap=len(x))
    stats.add(x)
    return stats
