"""The multi-branch evaluator of DOVER, DOVER-Mobile and the FAST-VQA family: a backbone and a VQA head per branch.

Attribute names mirror the official `DOVER` / `DiViDeAddEvaluator` modules (`<branch>_backbone`, and
`<branch>_head` or one shared `vqa_head`) so checkpoints convert by a plain key mapping. The families that use
it (`dover.py`, `fastvqa.py`) differ only in their `MultiBranchConfig`, views and score normalisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from kvq_jax.models.common import Dtype
from kvq_jax.models.convnext3d import ConvNeXt3D, ConvNeXtConfig
from kvq_jax.models.head import VQAHead
from kvq_jax.models.registry import ModelSpec
from kvq_jax.models.swin3d import SwinConfig, SwinTransformer3D
from kvq_jax.scoring import map_scores

BackboneConfig = SwinConfig | ConvNeXtConfig


@dataclasses.dataclass(frozen=True)
class MultiBranchConfig:
    """Backbone config per branch (in forward order) and the head layout."""

    backbones: tuple[tuple[str, BackboneConfig], ...]
    head_hidden: int
    shared_head: bool  # FAST-VQA: one `vqa_head` for every branch
    head_dropout: float = 0.5


def build_backbone(cfg: BackboneConfig, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Module:
    if isinstance(cfg, SwinConfig):
        return SwinTransformer3D(cfg, dtype=dtype, rngs=rngs)
    return ConvNeXt3D(cfg, dtype=dtype, rngs=rngs)


class MultiBranchVQA(nnx.Module):
    """Backbone + head per branch; each branch's score map is its head applied at every position."""

    def __init__(
        self, spec: ModelSpec, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs, drop_path_rate: float | None = None
    ):
        self.spec = spec
        arch: MultiBranchConfig = spec.arch
        for branch, cfg in arch.backbones:
            if drop_path_rate is not None:
                cfg = dataclasses.replace(cfg, drop_path_rate=drop_path_rate)
            setattr(self, f"{branch}_backbone", build_backbone(cfg, dtype, rngs))
        if arch.shared_head:
            (width,) = {cfg.num_features for _, cfg in arch.backbones}
            self.vqa_head = VQAHead(width, arch.head_hidden, arch.head_dropout, dtype, rngs)
        else:
            for branch, cfg in arch.backbones:
                head = VQAHead(cfg.num_features, arch.head_hidden, arch.head_dropout, dtype, rngs)
                setattr(self, f"{branch}_head", head)

    def backbone(self, branch: str) -> nnx.Module:
        return getattr(self, f"{branch}_backbone")

    def head(self, branch: str) -> VQAHead:
        return self.vqa_head if self.spec.arch.shared_head else getattr(self, f"{branch}_head")

    def __call__(
        self, views: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None, return_features: bool = False
    ) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Score maps (N, T', H', W') of the branches given in ``views``, float32; optionally the backbone features."""
        maps, feats = {}, {}
        for branch, _ in self.spec.arch.backbones:
            if branch not in views:
                continue
            f = self.backbone(branch)(views[branch], rngs)
            maps[branch] = self.head(branch)(f, rngs).astype(jnp.float32)
            feats[branch] = f
        if not maps:
            raise ValueError(f"no input for any branch of {self.spec.name}: expected {self.spec.branch_names}")
        return (maps, feats) if return_features else maps


def parity_arrays(model: MultiBranchVQA, inputs: Mapping[str, jax.Array], case: Mapping) -> dict[str, jax.Array]:
    """What the official DOVER / FAST-VQA parity fixtures hold, from their normalised [B, C, T, H, W] inputs:
    per branch the head's map [B, 1, T', H', W'], the backbone output [B, C, T', H', W'] and its channel means,
    the branch means (each map's mean, as the official scripts report it) and the fused score."""
    clips = {b: jnp.moveaxis(x, 1, -1)[:, None] for b, x in inputs.items()}  # → (B, 1 clip, T, H, W, C)
    _, maps, feats = map_scores(model, clips, features=True)
    out = {}
    for branch, m in maps.items():
        out[f"{branch}_score_map"] = m  # (B, 1 clip, T', H', W'): the clip axis stands for the channel axis
        out[f"{branch}_feat_channel_mean"] = feats[branch].mean(axis=(1, 2, 3))
        out[f"{branch}_feat"] = jnp.moveaxis(feats[branch], -1, 1)
    means = {b: maps[b].mean() for b in model.spec.branch_names if b in maps}
    out["branch_means"] = jnp.stack(list(means.values()))
    if model.spec.fusion is not None and set(model.spec.fusion.branches) <= set(means):
        out["fused"] = model.spec.fusion(means)
    return out
