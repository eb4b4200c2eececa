"""COVER (CVPRW 2024, AIS 2024 winner): DOVER's technical and aesthetic branches gated by CLIP semantics.

Official code: vztu/COVER (`cover.yml`, `cover/models/evaluator.py`). Branch order is semantic, technical, aesthetic
(the gates read the semantic features). The semantic branch runs each of its frames (512², CLIP statistics on
0–255 values) through OpenAI's CLIP ViT-L/14 image tower without any positional embedding and L2-normalises
``ln_post(CLS) @ proj``; that (T_s, 768) feature, broadcast over space, feeds the semantic head and both cross gates.
The technical (Swin3D-T GRPB) and aesthetic (ConvNeXt3D-T) backbone outputs, T/2 time steps, pass their gate
before their heads, so a video branch's time steps must equal the semantic frames (20 and 40 frames at test time).
The overall score is the plain sum of the three branch means (`fuse_results` of `evaluate_one_video.py`).

The CLIP tower lives at ``clip.visual`` (the manifest's and OpenAI's `visual.*` keys). The official model holds it
in a Python list, so it is neither in COVER.pth nor ever trained: the configs freeze it in every variant. Weights
come from two files, COVER.pth and OpenAI's ViT-L-14.pt, merged before :func:`checkpoint_filter`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from kvq_jax.convert.torch_layout import ConversionError
from kvq_jax.data.views import PixelNorm, ViewSpec
from kvq_jax.models.common import Dtype, dense
from kvq_jax.models.convnext3d import ConvNeXtConfig, convnext_tiny
from kvq_jax.models.fusion import Sum
from kvq_jax.models.head import VQAHead
from kvq_jax.models.multibranch import build_backbone
from kvq_jax.models.registry import Branch, ModelSpec, OfficialCode, OfficialWeights, StateDict, register
from kvq_jax.models.swin3d import SwinConfig
from kvq_jax.models.vit import VisionTransformer, ViTConfig, encode_in_steps, is_clip_text_key
from kvq_jax.scoring import map_scores

# OPENAI_CLIP_MEAN / _STD of COVER's constants.py, on the 0–255 scale (evaluate_one_video.py's mean_clip/std_clip).
CLIP_255 = PixelNorm((122.77, 116.75, 104.09), (68.50, 66.63, 70.32))

# Test-time views of cover.yml (every dataset section is the same): 20 frames at 512² (one per 1/20 segment);
# 20 segments × 2 frames (stride 2) of 7×7 fragments, one offset set for all 40; the same 40-frame sampling at 224².
BRANCHES = (
    Branch("semantic", ViewSpec("resize", clip_len=20, t_frag=20, size_h=512, size_w=512), CLIP_255),
    Branch("technical", ViewSpec("fragments", clip_len=40, t_frag=20, aligned=40)),
    Branch("aesthetic", ViewSpec("resize", clip_len=40, t_frag=20)),
)
# The gate of each gated branch (attribute names of the official module).
GATES = {"technical": "smtc_gate_tech", "aesthetic": "smtc_gate_aesc"}


@dataclasses.dataclass(frozen=True)
class CoverConfig:
    """The three backbones, the head and gate widths, and the semantic map's grid (the video maps' 7×7)."""

    clip: ViTConfig = dataclasses.field(default_factory=ViTConfig)
    technical: SwinConfig = dataclasses.field(default_factory=SwinConfig)
    aesthetic: ConvNeXtConfig = dataclasses.field(default_factory=convnext_tiny)
    width: int = 768
    head_hidden: int = 64
    head_dropout: float = 0.5
    gate_dropout: float = 0.1
    semantic_grid: tuple[int, int] = (7, 7)


def gelu_tanh(x: jax.Array) -> jax.Array:
    """``nn.GELU(approximate='tanh')``, the gates' activation (everything else in COVER uses the exact GELU)."""
    return jax.nn.gelu(x, approximate=True)


class CrossGatingBlock(nnx.Module):
    """``y' = Conv_1(y)``, ``g = gelu_tanh(in_project_x(Conv_0(s)))``, ``out = dropout(out_project_y(y'·g)) + y'``.

    The official block (MAXIM's cross gating, block and grid size 1) is all per-position Linears, so the semantic
    side is computed once per frame, (N, T, 1, 1, C), and broadcast over the video map: the same numbers as on
    the official broadcast (T, 7, 7) map, and any map size works (the short training views have 3×3 maps).
    """

    def __init__(self, width: int, dropout: float, dtype: Dtype, rngs: nnx.Rngs):
        self.Conv_0 = dense(width, width, dtype, rngs)
        self.Conv_1 = dense(width, width, dtype, rngs)
        self.in_project_x = dense(width, width, dtype, rngs)
        self.out_project_y = dense(width, width, dtype, rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, s: jax.Array, y: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = self.Conv_1(y)
        gate = gelu_tanh(self.in_project_x(self.Conv_0(s)))
        return self.dropout(self.out_project_y(y * gate), rngs=rngs) + y


class COVER(nnx.Module):
    """CLIP semantic tower, two gated video backbones, three VQA heads: a score map per branch."""

    def __init__(
        self, spec: ModelSpec, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs, drop_path_rate: float | None = None
    ):
        self.spec = spec
        arch: CoverConfig = spec.arch
        self.dtype = dtype
        self.clip = nnx.Dict(visual=VisionTransformer(arch.clip, dtype=dtype, rngs=rngs))
        for branch in GATES:
            cfg = getattr(arch, branch)
            if drop_path_rate is not None:
                cfg = dataclasses.replace(cfg, drop_path_rate=drop_path_rate)
            setattr(self, f"{branch}_backbone", build_backbone(cfg, dtype, rngs))
        for branch in spec.branch_names:
            setattr(self, f"{branch}_head", VQAHead(arch.width, arch.head_hidden, arch.head_dropout, dtype, rngs))
        for gate in GATES.values():
            setattr(self, gate, CrossGatingBlock(arch.width, arch.gate_dropout, dtype, rngs))

    def semantic_features(self, frames: jax.Array) -> jax.Array:
        """(N, T, H, W, 3) CLIP-normalised frames → (N, T, 768) L2-normalised CLIP features, float32."""
        f = encode_in_steps(self.clip["visual"], frames).astype(jnp.float32)
        return f / jnp.linalg.norm(f, axis=-1, keepdims=True)

    def __call__(
        self, views: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None, return_features: bool = False
    ) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Score maps (N, T', H', W') of the branches in ``views``, float32; with ``return_features`` also the
        features: per branch its head input, ``semantic_frames`` (N, T_s, 768) and ``<branch>_backbone`` (the
        video backbones' outputs before their gates)."""
        unknown = set(views) - set(self.spec.branch_names)
        if unknown or not views:
            raise ValueError(f"{self.spec.name} takes views {self.spec.branch_names}, got {sorted(views)}")
        gated = [b for b in GATES if b in views]
        if gated and "semantic" not in views:
            raise ValueError(f"COVER's {gated} branches are gated by the semantic features: give the semantic view")
        arch: CoverConfig = self.spec.arch
        maps, feats = {}, {}
        if "semantic" in views:
            s = self.semantic_features(views["semantic"])
            n, t, c = s.shape
            grid = jnp.broadcast_to(s[:, :, None, None].astype(self.dtype), (n, t, *arch.semantic_grid, c))
            maps["semantic"] = self.semantic_head(grid, rngs).astype(jnp.float32)
            feats["semantic_frames"], feats["semantic"] = s, grid
        for branch in gated:
            y = getattr(self, f"{branch}_backbone")(views[branch], rngs)
            if y.shape[0] != n:
                raise ValueError(
                    f"COVER gates each {branch} clip with a semantic clip: {y.shape[0]} {branch} clips, {n} semantic "
                    "(give the views the same num_clips)"
                )
            if y.shape[1] != t:
                raise ValueError(
                    f"COVER's {branch} features have {y.shape[1]} time steps (half its frames), the semantic view "
                    f"{t} frames: they must be equal (cover.yml: 40 and 20)"
                )
            out = getattr(self, GATES[branch])(s[:, :, None, None].astype(self.dtype), y, rngs)
            maps[branch] = getattr(self, f"{branch}_head")(out, rngs).astype(jnp.float32)
            feats[branch], feats[f"{branch}_backbone"] = out, y
        maps = {b: maps[b] for b in self.spec.branch_names if b in maps}
        return (maps, feats) if return_features else maps


# ----------------------------------------------------------------------------------------------- checkpoint

# The CLIP-IQA+ prompt learner of COVER.pth: never run (COVER sets the text feature to 0), accepted and dropped.
DEAD_KEYS = tuple(f"semantic_backbone.prompt_learner.{k}" for k in ("ctx", "token_prefix", "token_suffix"))


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """COVER.pth and ViT-L-14.pt merged → this model's keys; everything not dropped here is converted strictly.

    CLIP's ``visual.*`` keys move under ``clip.`` (already there in the parity manifest and in our own exports);
    its text tower and scalars, the dead prompt learner and the unused positional table (COVER adds none) are
    dropped by name. Without any CLIP key the second file was forgotten, which is said plainly.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        if key in DEAD_KEYS or is_clip_text_key(key):
            continue
        name = f"clip.{key}" if key.startswith("visual.") else key
        if name == "clip.visual.positional_embedding":
            continue
        if name in out:
            raise ConversionError(f"{name} is given twice (as visual.* and as clip.visual.*)")
        out[name] = value
    if not any(k.startswith("clip.visual.") for k in out):
        raise ConversionError(
            "no CLIP image tower (visual.* keys): COVER.pth does not hold it; pass OpenAI's ViT-L-14.pt as well "
            "(convert --src COVER.pth --src ViT-L-14.pt)"
        )
    return out


# ----------------------------------------------------------------------------------------------- parity


def parity_arrays(model: COVER, inputs: Mapping[str, jax.Array], case: Mapping) -> dict[str, jax.Array]:
    """The arrays of the official COVER fixtures, from their normalised [B, C, T, H, W] inputs: per branch the
    head's map [B, 1, T', 7, 7], the head input (gated for the video branches) whole and its channel means, the
    video backbones' outputs whole and their channel means, the CLIP frame features, branch means and the sum."""
    clips = {b: jnp.moveaxis(x, 1, -1)[:, None] for b, x in inputs.items()}  # → (B, 1 clip, T, H, W, C)
    _, maps, feats = map_scores(model, clips, features=True)
    out = {"semantic_frame_feat": feats["semantic_frames"]}
    for branch, m in maps.items():
        out[f"{branch}_score_map"] = m  # (B, 1 clip, T', H', W'): the clip axis stands for the channel axis
        named = {f"{branch}_feat": feats[branch]}
        if branch in GATES:
            named[f"{branch}_backbone_feat"] = feats[f"{branch}_backbone"]
        for key, f in named.items():
            out[f"{key}_channel_mean"] = f.mean(axis=(1, 2, 3))
            out[key] = jnp.moveaxis(f, -1, 1)  # channels first, as the fixtures hold them
    means = {b: m.mean() for b, m in maps.items()}
    out["branch_means"] = jnp.stack([means[b] for b in model.spec.branch_names])
    out["fused"] = model.spec.fusion(means)
    return out


_REPO = "https://github.com/vztu/COVER"
# COVER.pth is linked from the README as a "blob" page; this is the file itself. The CLIP tower comes from OpenAI
# (the URL's last folder is the file's sha256, which OpenAI's loader checks).
_CLIP_SHA = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
WEIGHTS = OfficialWeights(
    f"{_REPO}/raw/release/Model/COVER.pth",
    also=(OfficialWeights(f"https://openaipublic.azureedge.net/clip/models/{_CLIP_SHA}/ViT-L-14.pt", _CLIP_SHA),),
)

register(
    ModelSpec(
        name="cover",
        family="cover",
        branches=BRANCHES,
        build=COVER,
        arch=CoverConfig(),
        fusion=Sum(tuple(b.name for b in BRANCHES)),
        weights=WEIGHTS,
        official=OfficialCode(
            _REPO,
            "cover",
            "cover.yml",
            requires=("pyiqa", "clip"),  # CLIP-IQA+ wrapper; OpenAI's clip package (tokenizer)
            build_note="OpenAI's ViT-L-14.pt in ~/.cache/clip (else downloaded) and the CLIP-IQA+ prompt weights "
            "(downloaded by pyiqa)",
        ),
        checkpoint_filter=checkpoint_filter,
        parity=parity_arrays,
    )
)
