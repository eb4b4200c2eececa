"""Correlation metrics for video quality assessment.

SciPy (float64) is the reference: :func:`srocc`, :func:`plcc`, :func:`krocc` and :func:`rmse` are thin,
validated wrappers around it, so our numbers are the ones the PyTorch originals print.  The optional
prediction mappings are the two in use in the VQA literature:

* ``"linear"``: DOVER/FAST-VQA/KVQ training scripts rescale predictions to the label mean and (population)
  std, ``(p - mean p) / std p * std y + mean y``.  It changes RMSE only.
* ``"logistic"``: the VQEG 4-parameter logistic ``y = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``,
  initialised at ``[max y, min y, mean x, 0.5]`` and fitted with ``scipy.optimize.curve_fit`` (COVER,
  SimpleVQA).  It changes PLCC and RMSE; ``python -m kvq_jax.eval.score --logistic`` reports both.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats
from numpy.typing import ArrayLike

MappingKind = Literal["none", "linear", "logistic"]

__all__ = [
    "correlations",
    "fit_logistic4",
    "krocc",
    "linear_rescale",
    "logistic4",
    "map_predictions",
    "plcc",
    "rmse",
    "sigmoid_rescale",
    "srocc",
]


def _pair(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to two equal-length 1-D float64 arrays (SciPy's precision)."""
    p = np.asarray(pred, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError(f"pred and truth must be 1-D, got shapes {p.shape} and {y.shape}")
    if p.shape != y.shape:
        raise ValueError(f"pred and truth differ in length: {p.shape[0]} vs {y.shape[0]}")
    if p.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {p.shape[0]}")
    for name, a in (("pred", p), ("truth", y)):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"{name} has non-finite values at indices {bad[:10].tolist()}")
    return p, y


def srocc(pred: ArrayLike, truth: ArrayLike) -> float:
    """Spearman rank-order correlation (``scipy.stats.spearmanr``); NaN if an input is constant."""
    p, y = _pair(pred, truth)
    return float(scipy.stats.spearmanr(p, y)[0])


def krocc(pred: ArrayLike, truth: ArrayLike) -> float:
    """Kendall rank-order correlation, tau-b (``scipy.stats.kendalltau``), as the KVQ trainer reports."""
    p, y = _pair(pred, truth)
    return float(scipy.stats.kendalltau(p, y)[0])


def logistic4(x: ArrayLike, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic; ``expit`` form so large ``|x - b3| / |b4|`` cannot overflow."""
    x = np.asarray(x, dtype=np.float64)
    return b2 + (b1 - b2) * scipy.special.expit((x - b3) / np.abs(b4))


def fit_logistic4(pred: ArrayLike, truth: ArrayLike, maxfev: int = 20000) -> np.ndarray:
    """Least-squares fit of :func:`logistic4` mapping ``pred`` onto ``truth``; returns ``[b1..b4]``."""
    p, y = _pair(pred, truth)
    p0 = [float(y.max()), float(y.min()), float(p.mean()), 0.5]
    try:
        with warnings.catch_warnings():  # "covariance could not be estimated": we use the parameters only
            warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
            beta, _ = scipy.optimize.curve_fit(logistic4, p, y, p0=p0, maxfev=maxfev)
    except RuntimeError as e:  # curve_fit signals non-convergence with RuntimeError
        raise ValueError(f"4-parameter logistic fit did not converge (maxfev={maxfev}): {e}") from e
    return np.asarray(beta, dtype=np.float64)


def linear_rescale(pred: ArrayLike, truth: ArrayLike) -> np.ndarray:
    """DOVER-style ``(p - mean p) / std p * std y + mean y`` with population std (NumPy ``ddof=0``)."""
    p, y = _pair(pred, truth)
    return (p - p.mean()) / p.std() * y.std() + y.mean()


def sigmoid_rescale(scores: ArrayLike, axis: int = 0, xp=np):
    """Zoom-VQA's rescale (``sigmoid_rescale`` of its ``vqa_mine.py`` and ``ensemble.py``): the scores' z-scores
    over ``axis`` (population std), then ``100 / (1 + exp(−z))``, a 0–100 score relative to the set.

    ``xp`` is the array module: numpy (float64 for host numbers, as the official scripts) or ``jax.numpy``
    (inside a traced function). A constant set has no z-scores (NaN).
    """
    s = xp.asarray(scores)
    z = (s - s.mean(axis=axis, keepdims=True)) / s.std(axis=axis, keepdims=True)
    return 100.0 / (1.0 + xp.exp(-z))


def map_predictions(pred: ArrayLike, truth: ArrayLike, mapping: MappingKind) -> np.ndarray:
    """Apply one of the mappings ``"none"``, ``"linear"`` or ``"logistic"`` to ``pred``."""
    p, y = _pair(pred, truth)
    if mapping == "none":
        return p
    if mapping == "linear":
        return linear_rescale(p, y)
    if mapping == "logistic":
        return logistic4(p, *fit_logistic4(p, y))
    raise ValueError(f"unknown mapping {mapping!r}; expected 'none', 'linear' or 'logistic'")


def plcc(pred: ArrayLike, truth: ArrayLike, mapping: MappingKind = "none") -> float:
    """Pearson linear correlation (``scipy.stats.pearsonr``) after the optional ``mapping``."""
    p, y = _pair(pred, truth)
    return float(scipy.stats.pearsonr(map_predictions(p, y, mapping), y)[0])


def rmse(pred: ArrayLike, truth: ArrayLike, mapping: MappingKind = "linear") -> float:
    """Root mean squared error after ``mapping``; the default ``"linear"`` matches the KVQ/DOVER trainers."""
    p, y = _pair(pred, truth)
    return float(np.sqrt(np.mean((map_predictions(p, y, mapping) - y) ** 2)))


def correlations(pred: ArrayLike, truth: ArrayLike) -> dict[str, float]:
    """The four numbers the KVQ/DOVER trainers print: SROCC, PLCC, KROCC and RMSE after linear rescale."""
    p, y = _pair(pred, truth)
    return {"srocc": srocc(p, y), "plcc": plcc(p, y), "krocc": krocc(p, y), "rmse": rmse(p, y)}
