"""Gaussians of Inception activations: the per-clip density and the Fréchet distance (float64, exact)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.stats import multivariate_normal
from sklearn.covariance import LedoitWolf

from infer.density import LEDOIT_WOLF, SAMPLE, fit_gaussian, frechet_distance, frechet_record


def _scipy_frechet(x: np.ndarray, y: np.ndarray, cov1: np.ndarray, cov2: np.ndarray) -> float:
    """The textbook formula on full d x d matrices, with scipy's general matrix square root."""
    return float(((x.mean(0) - y.mean(0)) ** 2).sum()
                 + np.trace(cov1 + cov2 - 2 * np.real(sqrtm(cov1 @ cov2))))


def _correlated(rng, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mixing + shift) * scale


def test_frechet_of_a_set_with_itself_is_zero_even_for_huge_activations_and_few_clips():
    """The reported bug: FD(X, X) was 5.2 million. Stand-in Inception activations reach 1e6 and more."""
    rng = np.random.default_rng(0)
    for n, d, scale in ((40, 2048, 1e6), (8, 288, 1.0), (300, 32, 1e4)):
        x = np.abs(rng.standard_normal((n, d))) ** 3 * scale
        for covariance in (SAMPLE, LEDOIT_WOLF):
            g = fit_gaussian(x, shrink=covariance == LEDOIT_WOLF)
            fd = frechet_distance(x, x.copy(), covariance)
            assert fd <= 1e-6 * g.trace(), (n, d, covariance, fd, g.trace())
        # Same clips in another order: the same distribution.
        assert frechet_distance(x, x[::-1]) <= 1e-6 * fit_gaussian(x).trace()


def test_frechet_matches_the_scipy_reference_and_is_symmetric():
    rng = np.random.default_rng(1)
    # Well conditioned: more clips than dimensions, plain sample covariances (the textbook FID).
    x, y = _correlated(rng, 400, 24, scale=3.0), _correlated(rng, 300, 24, shift=0.4, scale=2.0)
    expected = _scipy_frechet(x, y, np.cov(x, rowvar=False), np.cov(y, rowvar=False))
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(x, y, SAMPLE) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(y, x) == pytest.approx(expected, rel=1e-9)
    # Fewer clips than dimensions: Ledoit-Wolf covariances on both sides (full-rank, so scipy is exact too).
    x, y = _correlated(rng, 20, 60), _correlated(rng, 15, 60, shift=0.3)
    expected = _scipy_frechet(x, y, LedoitWolf().fit(x).covariance_, LedoitWolf().fit(y).covariance_)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(y, x) == pytest.approx(expected, rel=1e-8)


def test_frechet_orders_near_and_far_sets_and_records_what_it_rests_on():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((60, 32)) * 0.5 + 1.0
    close = rng.standard_normal((20, 32)) * 0.5 + 1.0
    far = rng.standard_normal((20, 32)) * 0.5 + 4.0
    assert frechet_distance(real, far) > 10 * frechet_distance(real, close)
    record = frechet_record(real, close)
    assert record["clips"] == 20 and record["reference_clips"] == 60 and record["dims"] == 32
    assert record["covariance"] == LEDOIT_WOLF  # 20 clips <= 32 dimensions: shrunk
    assert record["value"] == pytest.approx(frechet_distance(real, close))
    few = frechet_record(real, close[:1])
    assert few["value"] is None and few["clips"] == 1  # one clip has no covariance: no figure, said so


def test_gaussian_density_prefers_samples_like_the_real_ones_and_matches_scipy():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((60, 32)) * 0.5 + 1.0
    close = rng.standard_normal((20, 32)) * 0.5 + 1.0
    far = rng.standard_normal((20, 32)) * 0.5 + 4.0
    g = fit_gaussian(real)
    assert g.log_likelihood(close).mean() > g.log_likelihood(far).mean() + 1.0
    # More dimensions than samples (Inception's 2048 vs a few clips): still finite (shrinkage).
    wide = fit_gaussian(rng.standard_normal((5, 300)))
    assert np.isfinite(wide.log_likelihood(rng.standard_normal((3, 300)))).all()
    for n, d in ((12, 40), (80, 20)):
        real = _correlated(rng, n, d, shift=2.0)
        gen = rng.standard_normal((n + 5, d)) * 0.7 + 1.5
        lw = LedoitWolf().fit(real)
        expected = multivariate_normal(lw.location_, lw.covariance_).logpdf(gen) / d
        np.testing.assert_allclose(fit_gaussian(real).log_likelihood(gen), expected, rtol=1e-6)


def test_two_clips_still_give_a_usable_density():
    """Ledoit-Wolf does not shrink at all from 2 samples; the isotropic fallback keeps densities sane."""
    rng = np.random.default_rng(4)
    two = rng.standard_normal((2, 100)) * 5 + 50
    g = fit_gaussian(two)
    near = g.log_likelihood(two + rng.standard_normal((2, 100)))
    far = g.log_likelihood(two + 30 * rng.standard_normal((2, 100)))
    assert np.all(np.abs(near) < 10) and np.all(near > far)
