"""Multi-branch VQA models (DOVER, DOVER-Mobile, the FAST-VQA family) built from one class.

Attribute names mirror the official `DOVER` / `DiViDeAddEvaluator` modules (`<branch>_backbone`,
`<branch>_head` or a shared `vqa_head`) so checkpoints convert by a plain key mapping.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from kvq_jax.models.common import Dtype
from kvq_jax.models.convnext3d import ConvNeXt3D, ConvNeXtConfig
from kvq_jax.models.head import VQAHead
from kvq_jax.models.swin3d import SwinConfig, SwinTransformer3D

BackboneConfig = SwinConfig | ConvNeXtConfig


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that defines one registered model: branches, heads, views and score normalisation."""

    name: str
    backbones: tuple[tuple[str, BackboneConfig], ...]  # (branch, config), in forward order
    head_hidden: int
    shared_head: bool  # FAST-VQA: one `vqa_head` for every branch
    views: str  # preset name in kvq_jax.data.views.VIEW_PRESETS
    normalize: Callable[[Mapping[str, float]], float]  # branch means → a [0, 1] quality score
    head_dropout: float = 0.5

    @property
    def branches(self) -> tuple[str, ...]:
        return tuple(b for b, _ in self.backbones)


def build_backbone(cfg: BackboneConfig, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Module:
    if isinstance(cfg, SwinConfig):
        return SwinTransformer3D(cfg, dtype=dtype, rngs=rngs)
    return ConvNeXt3D(cfg, dtype=dtype, rngs=rngs)


class VQAModel(nnx.Module):
    """Backbone + head per branch. Input: normalised clips per branch, (N, T, H, W, 3)."""

    def __init__(self, spec: ModelSpec, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.spec = spec
        for branch, cfg in spec.backbones:
            setattr(self, f"{branch}_backbone", build_backbone(cfg, dtype, rngs))
        feats = {cfg.num_features for _, cfg in spec.backbones}
        if spec.shared_head:
            (width,) = feats
            self.vqa_head = VQAHead(width, spec.head_hidden, spec.head_dropout, dtype, rngs)
        else:
            for branch, cfg in spec.backbones:
                head = VQAHead(cfg.num_features, spec.head_hidden, spec.head_dropout, dtype, rngs)
                setattr(self, f"{branch}_head", head)

    def backbone(self, branch: str) -> nnx.Module:
        return getattr(self, f"{branch}_backbone")

    def head(self, branch: str) -> VQAHead:
        return self.vqa_head if self.spec.shared_head else getattr(self, f"{branch}_head")

    def __call__(
        self,
        views: Mapping[str, jax.Array],
        *,
        rngs: nnx.Rngs | None = None,
        return_features: bool = False,
    ) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Score maps (N, T', H', W') per branch, float32; optionally the backbone features too.

        `rngs` (a `dropout` stream) is needed only in train mode, for dropout and stochastic depth.
        """
        maps, feats = {}, {}
        for branch in self.spec.branches:
            if branch not in views:
                continue
            f = self.backbone(branch)(views[branch], rngs)
            maps[branch] = self.head(branch)(f, rngs).astype(jnp.float32)
            feats[branch] = f
        if not maps:
            raise ValueError(f"no input for any branch of {self.spec.name}: expected {self.spec.branches}")
        return (maps, feats) if return_features else maps


def clip_batch(views: Mapping[str, jax.Array]) -> tuple[dict[str, jax.Array], int]:
    """(B, clips, T, H, W, 3) per branch → (B·clips, T, H, W, 3), returning B."""
    out, batch = {}, None
    for k, v in views.items():
        if v.ndim != 6:
            raise ValueError(f"view {k!r} must be (batch, clips, T, H, W, 3), got shape {v.shape}")
        batch = v.shape[0]
        out[k] = v.reshape(-1, *v.shape[2:])
    return out, batch


def video_scores(model: VQAModel, views: Mapping[str, jax.Array], rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Per-video branch scores (B,): the mean of each score map over clips, T', H' and W'."""
    flat, batch = clip_batch(views)
    maps = model(flat, rngs=rngs)
    return {k: m.reshape(batch, -1).mean(axis=1) for k, m in maps.items()}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def dover_fusion(means: Mapping[str, float]) -> float:
    """DOVER's fused overall score in [0, 1] (`fuse_results` of its evaluate_one_video.py)."""
    t = (means["technical"] - 0.1107) / 0.07355
    a = (means["aesthetic"] + 0.08285) / 0.03774
    return _sigmoid(0.6104 * t + 0.3896 * a)


def fastvqa_sigmoid(mean: float, std: float) -> Callable[[Mapping[str, float]], float]:
    """FAST-VQA's `sigmoid_rescale` of its vqa.py, with the per-model (mean, std) of the official table."""

    def normalize(means: Mapping[str, float]) -> float:
        return _sigmoid((means["fragments"] - mean) / std)

    return normalize
