"""uint8 views → per-video branch scores: the one scoring function of training, predict, export, bench and parity.

A batch of views is ``{branch: uint8 (B, clips, T, H, W, 3)}`` (what `kvq_jax.data.views.sample_views` returns,
stacked). Pixels are normalised here, on the device, with each branch's own `PixelNorm` (so only uint8 crosses
the host link), the clips go through the model as one batch, and a branch's video score is the mean of its score
map over clips, time and space, as the official code averages it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from flax import nnx

# Imports nothing of kvq_jax: `kvq_jax.export`'s loader uses `pad_batch` without loading the model code.


def normalize_views(spec: Any, views: Mapping[str, jax.Array], dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """uint8 views → the model's float inputs, each branch with its own pixel statistics."""
    return {b: spec.branch(b).pixels(v).astype(dtype) for b, v in views.items()}


def map_scores(
    model: nnx.Module, inputs: Mapping[str, jax.Array], rngs: nnx.Rngs | None = None, *, features: bool = False
):
    """Normalised clips (B, clips, T, H, W, 3) per branch → (video scores (B,), score maps (B, clips, …)).

    Branches may have different clip counts (DOVER's test views: 3 technical clips, 1 aesthetic): a branch's
    map is split back by its own count. A score computed from several branches at once needs them to agree.
    The entry point for inputs that are already normalised (parity fixtures). ``features=True`` also returns
    the model's features (B·clips, …) per branch, for models whose call takes ``return_features``.
    """
    (batch, *rest) = {v.shape[0] for v in inputs.values()}
    if rest:
        raise ValueError(f"views disagree on the batch size: { ({k: v.shape[0] for k, v in inputs.items()}) }")
    clips = {k: v.shape[1] for k, v in inputs.items()}
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in inputs.items()}
    maps, feats = model(flat, rngs=rngs, return_features=True) if features else (model(flat, rngs=rngs), None)
    out = {}
    for k, m in maps.items():
        if k in clips:
            count = clips[k]
        elif len(set(clips.values())) == 1:
            count = next(iter(clips.values()))
        else:
            raise ValueError(f"score {k!r} comes from several branches, which must have equal clip counts: {clips}")
        out[k] = m.reshape(batch, count, *m.shape[1:])
    scores = {k: m.reshape(batch, -1).mean(axis=1) for k, m in out.items()}
    return (scores, out, feats) if features else (scores, out)


def score_views(
    model: nnx.Module,
    views: Mapping[str, jax.Array],
    *,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
    features: bool = False,
):
    """uint8 views (B, clips, T, H, W, 3) per branch → (per-video branch scores (B,), maps (B, clips, T', H', W')),
    and with ``features`` the model's features too (as `map_scores`).

    ``rngs`` (a ``dropout`` stream) only in train mode. Branches absent from ``views`` are not computed.
    """
    for b, v in views.items():
        if v.ndim != 6:
            raise ValueError(f"view {b!r} must be (batch, clips, T, H, W, 3), got shape {v.shape}")
    return map_scores(model, normalize_views(model.spec, views, dtype), rngs, features=features)


def pad_batch(views: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Pad every view's batch up to ``size`` rows by repeating the last row (fixed-shape compiled programs)."""
    out = {}
    for k, v in views.items():
        pad = size - len(v)
        if pad < 0:
            raise ValueError(f"view {k!r}: batch of {len(v)} is larger than {size}")
        out[k] = np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) if pad else v
    return out
