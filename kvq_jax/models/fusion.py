"""A model's overall quality from its branch scores, as data: what the official inference scripts report.

Fusions are frozen dataclasses of numbers, so a spec stays hashable (it is static data of the jitted model),
export files can state them in JSON, and the same object evaluates jax arrays (inside a traced function, in
their dtype) and host numbers (in float64, as the official scripts do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special


@dataclasses.dataclass(frozen=True)
class SigmoidRescale:
    """``sigmoid(Σ_b weight_b · (s_b − mean_b) / std_b)``: a [0, 1] quality from per-branch standardised scores.

    DOVER's ``fuse_results`` (two weighted branches) and FAST-VQA's ``sigmoid_rescale`` (one branch, weight 1)
    are both of this form; the constants were fitted by their authors to the released weights.
    ``terms`` holds ``(branch, mean, std, weight)`` per branch.
    """

    terms: tuple[tuple[str, float, float, float], ...]
    meaning: ClassVar[str] = "normalised quality in [0, 1]"  # what the fused score is, for reports

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

    def __call__(self, scores: Mapping[str, Any]) -> Any:
        xp = _array_module(scores, self.branches)
        return sum(xp.asarray(scores[b]) for b in self.branches)

    def to_json(self) -> dict[str, Any]:
        return {"form": "sum(score[b])", "branches": list(self.branches)}


def _array_module(scores: Mapping[str, Any], branches: tuple[str, ...]) -> Any:
    """jnp for jax arrays (traced or on device), numpy float64 for host numbers."""
    return jnp if any(isinstance(scores[b], jax.Array) for b in branches) else np


Fusion = SigmoidRescale | Sum
