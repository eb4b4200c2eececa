"""kvq_jax.eval.metrics against SciPy and hand-derived numbers (never against itself)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from kvq_jax.eval import metrics


def _mos_like(seed: int, n: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Labels on KVQ's 0.5-step MOS grid (many ties) and noisy predictions, some rounded (ties too)."""
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(1, 5, n) * 2) / 2
    p = y + rng.normal(0, 0.3 + 0.4 * seed, n)
    if seed % 2:
        p = np.round(p, 1)
    return p.astype(dtype), y.astype(dtype)


@pytest.mark.parametrize("seed", range(5))
def test_numpy_metrics_equal_scipy(seed):
    p, y = _mos_like(seed, 300)
    assert len(np.unique(y)) <= 9  # 0.5-step MOS: heavy ties in the labels
    assert metrics.srocc(p, y) == scipy.stats.spearmanr(p, y)[0]
    assert metrics.plcc(p, y) == scipy.stats.pearsonr(p, y)[0]
    assert metrics.krocc(p, y) == scipy.stats.kendalltau(p, y)[0]
    assert metrics.rmse(p, y, mapping="none") == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-12)


def test_linear_rescale_is_dover_formula():
    p, y = _mos_like(3, 200)
    got = metrics.linear_rescale(p, y)
    # population std (NumPy default ddof=0), as DOVER/KVQ `rescale` uses
    expected = (p - p.mean()) / np.sqrt(np.mean((p - p.mean()) ** 2)) * np.sqrt(np.mean((y - y.mean()) ** 2))
    np.testing.assert_allclose(got, expected + y.mean(), rtol=1e-12)
    assert got.mean() == pytest.approx(y.mean()) and got.std() == pytest.approx(y.std())
    # rescaling is affine with positive slope: correlations unchanged, RMSE uses it by default
    assert metrics.plcc(p, y, mapping="linear") == pytest.approx(scipy.stats.pearsonr(p, y)[0], abs=1e-12)
    assert metrics.rmse(p, y) == pytest.approx(np.sqrt(np.mean((expected + y.mean() - y) ** 2)), rel=1e-12)


def test_correlations_dict():
    p, y = _mos_like(1, 120)
    p = p * 0.2 + 7  # predictions on another scale, as a model head gives them
    got = metrics.correlations(p, y)
    assert set(got) == {"srocc", "plcc", "krocc", "rmse"}
    assert got["srocc"] == pytest.approx(scipy.stats.spearmanr(p, y)[0], abs=1e-12)
    assert got["plcc"] == pytest.approx(scipy.stats.pearsonr(p, y)[0], abs=1e-12)
    assert got["krocc"] == pytest.approx(scipy.stats.kendalltau(p, y)[0], abs=1e-12)
    # after the rescale, MSE = var(y) * 2 * (1 - plcc) exactly (both sides have std(y), same mean)
    assert got["rmse"] == pytest.approx(np.sqrt(2 * y.var() * (1 - got["plcc"])), rel=1e-9)


def test_logistic_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    beta = np.array([4.6, 1.3, 0.45, 0.08])  # FAST-VQA-like scores in [0, 1] mapped to MOS 1..5
    x = rng.uniform(0, 1, 400)
    y = beta[1] + (beta[0] - beta[1]) / (1 + np.exp(-(x - beta[2]) / beta[3])) + rng.normal(0, 1e-3, 400)
    got = metrics.fit_logistic4(x, y)
    np.testing.assert_allclose([got[0], got[1], got[2], abs(got[3])], beta, rtol=1e-2)
    assert metrics.plcc(x, y, mapping="logistic") > 0.99999
    assert metrics.plcc(x, y, mapping="none") < 0.99  # the fit is what makes it ~1
    assert metrics.rmse(x, y, mapping="logistic") == pytest.approx(1e-3, rel=0.2)


def test_logistic4_formula_and_no_overflow():
    x = np.array([-3.0, 0.0, 0.2, 5.0])
    b = (5.0, 1.0, 0.2, -0.5)  # |b4| is used, as in the VQEG form
    expected = 1.0 + 4.0 / (1 + np.exp(-(x - 0.2) / 0.5))
    np.testing.assert_allclose(metrics.logistic4(x, *b), expected, rtol=1e-14)
    with np.errstate(over="raise"):
        out = metrics.logistic4(np.array([-1e6, 1e6]), 5.0, 1.0, 0.0, 1e-3)
    np.testing.assert_array_equal(out, [1.0, 5.0])


def test_numpy_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.srocc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"pred has non-finite values at indices \[1\]"):
        metrics.plcc([1, np.nan, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="unknown mapping"):
        metrics.rmse([1, 2, 3], [1, 2, 4], mapping="cubic")
