"""A model's overall quality from its branch scores, as data: what the official inference scripts report.

Fusions are frozen dataclasses of numbers, so a spec stays hashable (it is static data of the jitted model),
export files can state them in JSON, and the same object evaluates jax arrays (inside a traced function, in
their dtype) and host numbers (in float64, as the official scripts do).

Most fusions map one video's branch scores to its fused score. A *set-level* fusion (``set_level``, Zoom-VQA's)
rescales each branch over every video scored together, so it maps score vectors to a vector and exists only for
a set: `kvq-jax score` applies it once the whole run is scored, and it is never computed per video or per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from kvq_jax.eval.metrics import sigmoid_rescale


@dataclasses.dataclass(frozen=True)
class SigmoidRescale:
    """``sigmoid(Σ_b weight_b · (s_b − mean_b) / std_b)``: a [0, 1] quality from per-branch standardised scores.

    DOVER's ``fuse_results`` (two weighted branches) and FAST-VQA's ``sigmoid_rescale`` (one branch, weight 1)
    are both of this form; the constants were fitted by their authors to the released weights.
    ``terms`` holds ``(branch, mean, std, weight)`` per branch.
    """

    terms: tuple[tuple[str, float, float, float], ...]
    meaning: ClassVar[str] = "normalised quality in [0, 1]"  # what the fused score is, for reports
    set_level: ClassVar[bool] = False  # one video's branch scores are enough

    @property
    def branches(self) -> tuple[str, ...]:
        return tuple(t[0] for t in self.terms)

    def __call__(self, scores: Mapping[str, Any]) -> Any:
        xp = _array_module(scores, self.branches)
        z = sum(weight * (xp.asarray(scores[b]) - mean) / std for b, mean, std, weight in self.terms)
        return jax.nn.sigmoid(z) if xp is jnp else scipy.special.expit(z)

    def to_json(self) -> dict[str, Any]:
        return {
            "form": "sigmoid(sum(weight[b] * (score[b] - mean[b]) / std[b]))",
            "terms": {b: {"mean": m, "std": s, "weight": w} for b, m, s, w in self.terms},
        }


@dataclasses.dataclass(frozen=True)
class Sum:
    """The plain sum of the branch scores (COVER's overall score; kvq_jax's fused score of trained heads)."""

    branches: tuple[str, ...]
    meaning: ClassVar[str] = "sum of the raw branch scores"
    set_level: ClassVar[bool] = False

    def __call__(self, scores: Mapping[str, Any]) -> Any:
        xp = _array_module(scores, self.branches)
        return sum(xp.asarray(scores[b]) for b in self.branches)

    def to_json(self) -> dict[str, Any]:
        return {"form": "sum(score[b])", "branches": list(self.branches)}


@dataclasses.dataclass(frozen=True)
class SetSigmoidRescale:
    """Zoom-VQA's late fusion, set-level: ``Σ_b weight_b · 100·sigmoid(z_b)``, where ``z_b`` are branch b's scores
    z-scored over the whole scored set (population std), as its ``vqa_mine.py`` and ``ensemble.py`` compute it.

    A video's fused score depends on every other video of the set, so it is called with score vectors
    (branch → (n,)) of the set and returns (n,); :meth:`undefined` says when a set has none. ``weights`` holds
    ``(branch, weight)`` per branch.
    """

    weights: tuple[tuple[str, float], ...]
    meaning: ClassVar[str] = "0-100 quality relative to the videos scored together"
    set_level: ClassVar[bool] = True

    @property
    def branches(self) -> tuple[str, ...]:
        return tuple(b for b, _ in self.weights)

    def rescaled(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        """Each branch's scores rescaled over the set, 0–100."""
        xp = _array_module(scores, self.branches)
        return {b: sigmoid_rescale(scores[b], xp=xp) for b in self.branches}

    def __call__(self, scores: Mapping[str, Any]) -> Any:
        rescaled = self.rescaled(scores)
        return sum(weight * rescaled[b] for b, weight in self.weights)

    def undefined(self, scores: Mapping[str, Any]) -> str | None:
        """Why the set ``scores`` (branch → (n,) host numbers) has no fused scores, or None when it has."""
        n = len(np.asarray(scores[self.branches[0]]))
        if n < 2:
            return (
                f"the fusion z-scores each branch over the videos scored together, which needs 2 or more ({n} "
                "scored); score the whole set in one run"
            )
        constant = [b for b in self.branches if np.ptp(np.asarray(scores[b], np.float64)) == 0]
        if constant:
            return f"branch {', '.join(constant)} gives every video the same score: the fusion's z-scores are undefined"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": "set: computed over all the videos scored together, not per video; not in the exported function",
            "form": "sum(weight[b] * 100 / (1 + exp(-(score[b] - mean(score[b])) / std(score[b]))))",
            "statistics": "mean and population std (ddof 0) of each branch's scores over the set",
            "weights": dict(self.weights),
        }


def _array_module(scores: Mapping[str, Any], branches: tuple[str, ...]) -> Any:
    """jnp for jax arrays (traced or on device), numpy float64 for host numbers."""
    return jnp if any(isinstance(scores[b], jax.Array) for b in branches) else np


Fusion = SigmoidRescale | Sum | SetSigmoidRescale
