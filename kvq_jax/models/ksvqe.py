"""KSVQE (the KVQ paper, CVPR 2024) as the KVQ repository implements it (lixinustc/KVQ-Challenge-CVPR-NTIRE2024,
``models/backbones/KSVQE_model.py`` built from ``config/Kwai_KSVQE.yml``; its test yml cannot build the model).

One score from two views of the same frames: 9×9 fragments of 32 px (288², ImageNet statistics on 0–255) and the
frames resized to 112² (CLIP statistics on 0–1). Per forward:

1. Key frames 0, T/4−1, T/2−1, 3T/4−1 of the resized view; frame j belongs to the group of the last key boundary
   ≤ j (:func:`key_frames`, the official loop). A frozen CLIP ViT-B/16 image tower runs on the key frames with its
   14×14 positional table resized bicubically to the 7×7 grid; after blocks 8–11 the CLS token becomes
   ``0.5·A(CLS) + 0.5·CLS`` (trainable adapters A). The cosine of CLS with each final patch token is a 7×7 map.
2. QRS: the map, nearest-resized to the 9×9 fragment grid, is averaged over the 3×3 windows of 7×7 fragments
   and min-max normalised; each key frame picks a window (hard top-1 in eval, the perturbed top-1 of
   :func:`perturbed_top1` in training, σ 0.5) and every frame takes its group's window of its own fragments: 224².
3. A frozen CONTRIQUE ResNet-50 + projector scores every 32×32 patch of every second selected frame (``z``, 128-d;
   its BatchNorm follows the model's train/eval mode, as in the official code); the distortion tokens are
   ``0.2·adapter(z) + 0.8·z``.
4. Swin3D-T GRPB on the selected frames, run stage by stage; after stages 1–3 the map is replaced by
   ``(a1·x_dist + a2·x_sem)/2``: semantic cross-attention to the key frame's CLIP patch tokens with spatial gates
   ``σ(conv(·))·x + conv(·)``, and distortion cross-attention to the distortion tokens, then temporal
   self-attention, with channel gates from its mean and (unbiased) std over T·H·W.
5. Final LayerNorm, VQAHead → score map; the video score is its mean.

Training adds 0.3 × a supervised contrastive loss over the distortion tokens (:func:`distortion_contrastive_loss`,
videos of one ``dis_label`` are positives), declared as the spec's auxiliary loss.

Attribute names are the official ones (``KSVQE_backbone.{CLIP_tool, spa_patchnet, distortion_tool, dist_adapter,
patch_embed, layers, norm, semantic_adapter, …}``, ``KSVQE_head``); Sequentials with ReLU gaps are `nnx.List` s
with None there, so ``dist_adapter.0`` / ``.2`` keep their indices. :func:`checkpoint_filter` maps the official
files onto them: the KSVQE checkpoint, OpenAI's ViT-B-16.pt, ``CONTRIQUE_checkpoint25.tar`` and the Kinetics-400
Swin-T, with the KSVQE checkpoint's keys winning, as its load comes last in the official trainer.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvq_jax.data.views import PixelNorm, ViewSpec
from kvq_jax.models.common import BatchNorm, Dtype, dense
from kvq_jax.models.head import VQAHead
from kvq_jax.models.registry import (
    AuxLoss,
    Branch,
    ModelSpec,
    OfficialCode,
    OfficialWeights,
    StateDict,
    register,
    torch_hub_file,
)
from kvq_jax.models.resnet import ResNet50
from kvq_jax.models.swin3d import SwinConfig, SwinTransformer3D
from kvq_jax.models.vit import VisionTransformer, ViTConfig, is_clip_text_key, resize_positional_table
from kvq_jax.scoring import map_scores

SCORE = "quality"
FRAGMENT, RESIZED = "fragment", "resize_video"

# ViewDecompositionDataset_KVQ: OpenAI CLIP's statistics on x / 255.
CLIP_01 = PixelNorm((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), scale=1 / 255)
# Kwai_KSVQE.yml: Sampler(32, num_clips, 4) (no t_frag); 9×9 fragments of 32 px, aligned 8; the same frames at 112².
# At val/test num_clips is 3 and nothing splits the 96 frames: one stacked clip. Training takes one clip of 32.
BRANCHES = (
    Branch(
        FRAGMENT,
        ViewSpec("fragments", clip_len=32, frame_interval=4, num_clips=3, fragments_h=9, fragments_w=9, aligned=8,
                 stack_clips=True),
    ),
    Branch(
        RESIZED,
        ViewSpec("resize", clip_len=32, frame_interval=4, num_clips=3, size_h=112, size_w=112, stack_clips=True,
                 frames_of=FRAGMENT),
        CLIP_01,
    ),
)  # fmt: skip


# OpenAI's ViT-B/16 image tower; its 14×14 positional table is resized to the view's patch grid on every call.
CLIP_B16 = ViTConfig(width=768, layers=12, heads=12, patch_size=16, output_dim=512, positional_tokens=197)


@dataclasses.dataclass(frozen=True)
class KSVQEConfig:
    """The towers and the KSVQE hyper-parameters of ``Kwai_KSVQE.yml`` (``CLIP_location 8``, ``tuning_stage 1``,
    ``num_samples 1``, σ 0.5, head 768 → 64 → 1). ``region_margin``: the candidate windows are the fragment grid
    less this many fragments (7 of 9: 3×3 candidates; a smaller grid keeps 3×3 candidates)."""

    clip: ViTConfig = dataclasses.field(default_factory=lambda: CLIP_B16)
    clip_location: int = 8
    swin: SwinConfig = dataclasses.field(default_factory=SwinConfig)
    tuning_stage: int = 1
    fragment_px: int = 32
    region_margin: int = 2
    sigma: float = 0.5
    num_samples: int = 1
    contrique_features: int = 2048
    distortion_dim: int = 128
    head_hidden: int = 64
    head_dropout: float = 0.5
    temperature: float = 0.1


# ----------------------------------------------------------------------------------------------- geometry


@functools.cache
def key_frames(t: int) -> tuple[np.ndarray, np.ndarray]:
    """(the 4 key-frame indices, the group of every frame), as ``obtain_keyframes`` computes them for T frames.

    Keys are frames 0, T//4−1, T//2−1, 3T//4−1 (Python indexing: −1 is the last frame). A frame's group counts the
    boundaries T//4−1, T//2−1, 3T//4−1 met so far, one per frame even where two coincide (the official ``elif``).
    """
    bounds = (t // 4 - 1, t // 2 - 1, t * 3 // 4 - 1)
    keys = np.array([0, *bounds]) % t
    groups, group = [], 0
    for j in range(t):
        group += j in bounds
        groups.append(group)
    return keys, np.array(groups)


def nearest_index(out_size: int, in_size: int) -> np.ndarray:
    """Source rows of torch's ``F.interpolate(scale_factor=out/in, mode="nearest")``: the kernel's float32 scale
    ``1 / scale_factor``, floored (the output size ``floor(in · scale_factor)`` must come out as ``out_size``)."""
    factor = out_size / in_size
    if int(np.floor(in_size * factor)) != out_size:
        raise ValueError(f"nearest resize by {factor} turns {in_size} into {int(np.floor(in_size * factor))}")
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(1.0 / factor)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


# ----------------------------------------------------------------------------------------------- QRS


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def perturbed_top1(scores: jax.Array, noise: jax.Array, sigma: float) -> jax.Array:
    """The official ``PerturbedTopKFunction`` with k = 1: (M, R) scores and (M, S, R) standard normal noise → the
    mean over the S samples of the one-hot of ``argmax(scores + σ·noise)``, (M, R).

    Its backward is the official estimator, ``grad · E[one_hot · noise] / σ`` element by element (the diagonal of
    the Berthet et al. Jacobian estimate, as the official einsum ``bnkd,bnd->bkd`` computes it).
    """
    return _perturbed_hits(scores, noise, sigma).mean(axis=1)


def _perturbed_hits(scores: jax.Array, noise: jax.Array, sigma: float) -> jax.Array:
    best = jnp.argmax(scores[:, None, :] + sigma * noise, axis=-1)
    return jax.nn.one_hot(best, scores.shape[-1], dtype=scores.dtype)


def _perturbed_fwd(scores: jax.Array, noise: jax.Array, sigma: float) -> tuple[jax.Array, tuple]:
    hits = _perturbed_hits(scores, noise, sigma)
    return hits.mean(axis=1), (hits, noise)


def _perturbed_bwd(sigma: float, residuals: tuple, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    hits, noise = residuals
    return grad * (hits * noise).mean(axis=1) / sigma, jnp.zeros_like(noise)


perturbed_top1.defvjp(_perturbed_fwd, _perturbed_bwd)


class RegionSelection(nnx.Module):
    """QRS (the official ``RegionNet_CLIP`` with ``stride 1``, ``k 49``): no parameters, only the train/eval mode.

    ``deterministic`` (set by ``model.train()`` / ``model.eval()`` like dropout's): the hard top-1 in eval, the
    perturbed top-1 in training, whose noise comes from the call's ``dropout`` stream.
    """

    def __init__(self, cfg: KSVQEConfig):
        self.px = cfg.fragment_px
        self.margin = cfg.region_margin
        self.sigma = cfg.sigma
        self.num_samples = cfg.num_samples
        self.deterministic = False

    def region_scores(self, cls_attn: jax.Array, grid: tuple[int, int]) -> tuple[jax.Array, int]:
        """(M, L) CLS-patch cosines on a square CLIP grid → min-max normalised window scores (M, R), row-major
        over the candidate windows, and the window size in fragments."""
        m, length = cls_attn.shape
        side = round(length**0.5)
        attn = cls_attn.reshape(m, side, side).astype(jnp.float32)
        if (side, side) != grid:
            attn = attn[:, nearest_index(grid[0], side)][:, :, nearest_index(grid[1], side)]
        size = min(grid) - self.margin
        if size < 1:
            raise ValueError(f"a {grid[0]}×{grid[1]} fragment grid leaves no window of {self.margin} fewer fragments")
        windows = [
            attn[:, i : i + size, j : j + size].mean(axis=(1, 2))
            for i in range(grid[0] - size + 1)
            for j in range(grid[1] - size + 1)
        ]
        s = jnp.stack(windows, axis=-1)
        low, high = s.min(axis=-1, keepdims=True), s.max(axis=-1, keepdims=True)
        return (s - low) / (high - low + 1e-5), size

    def __call__(
        self, fragment: jax.Array, cls_attn: jax.Array, groups: np.ndarray, rngs: nnx.Rngs | None
    ) -> dict[str, jax.Array]:
        """fragment (N, T, H, W, C), cls_attn (N, K, L) → ``scores`` (N, K, R), ``index`` (N, K) and ``regions``
        (N, T, h, w, C): frame t's window of its group ``groups[t]``, as Σ_r indicator_r · window_r (exact copies
        under a one-hot indicator, and the official gradient path to the scores in training)."""
        n, t, h, w, c = fragment.shape
        k = cls_attn.shape[1]
        grid = (h // self.px, w // self.px)
        scores, size = self.region_scores(cls_attn.reshape(n * k, -1), grid)
        if self.deterministic:
            indicator = jax.nn.one_hot(jnp.argmax(scores, axis=-1), scores.shape[-1], dtype=scores.dtype)
        else:
            if rngs is None:
                raise ValueError("KSVQE's training-mode region selection draws noise: pass rngs (or call model.eval())")
            noise = jax.random.normal(rngs.dropout(), (n * k, self.num_samples, scores.shape[-1]), scores.dtype)
            indicator = perturbed_top1(scores, noise, self.sigma)
        per_frame = indicator.reshape(n, k, -1)[:, groups].astype(fragment.dtype)  # (N, T, R)
        cols, span = grid[1] - size + 1, size * self.px
        regions = jnp.zeros((n, t, span, span, c), fragment.dtype)
        for r in range(per_frame.shape[-1]):
            y, x = (r // cols) * self.px, (r % cols) * self.px
            regions = regions + per_frame[:, :, r, None, None, None] * fragment[:, :, y : y + span, x : x + span]
        return {
            "scores": scores.reshape(n, k, -1),
            "index": jnp.argmax(indicator, axis=-1).reshape(n, k),
            "regions": regions,
        }


# ----------------------------------------------------------------------------------------------- modules


def relu_mlp(dims: tuple[int, int, int], dtype: Dtype, rngs: nnx.Rngs) -> nnx.List:
    """``Sequential(Linear, ReLU, Linear, ReLU)`` with the official indices: Linears at 0 and 2."""
    return nnx.List([dense(dims[0], dims[1], dtype, rngs), None, dense(dims[1], dims[2], dtype, rngs), None])


def apply_relu_mlp(layers: nnx.List, x: jax.Array) -> jax.Array:
    return jax.nn.relu(layers[2](jax.nn.relu(layers[0](x))))


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``torch.cosine_similarity`` over the last axis (each vector divided by its norm, clamped to ``eps``)."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
    return ((a / na) * (b / nb)).sum(axis=-1)


class ClipTool(nnx.Module):
    """The CLIP image tower (``visual``) with CLS adapters after blocks ``clip_location`` … 11 (``adapter_layer``).

    ``visual.ln_post`` and ``visual.proj`` are kept (they are in every checkpoint) and never used.
    """

    def __init__(self, cfg: KSVQEConfig, dtype: Dtype, rngs: nnx.Rngs):
        self.clip_location = cfg.clip_location
        self.visual = VisionTransformer(cfg.clip, dtype=dtype, rngs=rngs)
        width = cfg.clip.width
        self.adapter_layer = nnx.List(
            [relu_mlp((width, width // 4, width), dtype, rngs) for _ in range(cfg.clip.layers - cfg.clip_location)]
        )

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(M, H, W, 3) → the final CLS token (M, width) and patch tokens (M, grid², width), no ``ln_post``."""
        p = self.visual.cfg.patch_size
        grid = (images.shape[1] // p, images.shape[2] // p)
        table = resize_positional_table(self.visual.positional_embedding[...], grid)
        x = self.visual.embed(images, table)
        for i, block in enumerate(self.visual.transformer.resblocks):
            x = block(x)
            if i >= self.clip_location:
                cls = x[:, :1]
                cls = 0.5 * apply_relu_mlp(self.adapter_layer[i - self.clip_location], cls) + 0.5 * cls
                x = jnp.concatenate([cls, x[:, 1:]], axis=1)
        return x[:, 0], x[:, 1:]


class Contrique(nnx.Module):
    """CONTRIQUE: torchvision's ResNet-50 up to layer4 (``encoder``), L2-normalised, then the projector
    ``Linear(no bias), BatchNorm1d, ReLU, Linear(no bias), BatchNorm1d`` (``projector.0/1/3/4``)."""

    def __init__(self, cfg: KSVQEConfig, dtype: Dtype, rngs: nnx.Rngs):
        self.px = cfg.fragment_px
        f, d = cfg.contrique_features, cfg.distortion_dim
        self.encoder = ResNet50(dtype=dtype, rngs=rngs)
        self.projector = nnx.List(
            [
                dense(f, f, dtype, rngs, use_bias=False),
                BatchNorm(f, dtype=dtype, rngs=rngs),
                None,
                dense(f, d, dtype, rngs, use_bias=False),
                BatchNorm(d, dtype=dtype, rngs=rngs),
            ]
        )

    def __call__(self, frames: jax.Array) -> jax.Array:
        """(N, T, H, W, 3) → ``z`` (N, T, patches, 128): each 32×32 patch, row by row (the official permute)."""
        n, t, h, w, c = frames.shape
        gh, gw, p = h // self.px, w // self.px, self.px
        patches = frames.reshape(n * t, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, p, p, c)
        feat = self.encoder.features(patches)["layer4"]
        if feat.shape[1:3] != (1, 1):
            raise ValueError(f"CONTRIQUE expects {p}-px patches to end 1×1, got {feat.shape[1:3]}")
        h0 = feat.reshape(feat.shape[0], -1).astype(jnp.float32)
        h0 = h0 / jnp.maximum(jnp.linalg.norm(h0, axis=-1, keepdims=True), 1e-12)
        proj = self.projector
        z = proj[4](proj[3](jax.nn.relu(proj[1](proj[0](h0)))))
        return z.astype(jnp.float32).reshape(n, t, gh * gw, -1)


class CrossAttention(nnx.Module):
    """The official ``crossattention1``: Q from the queries, K and V from the tokens (Linears with bias), heads by
    channel blocks, logits divided by √C (the full width), softmax; no output projection, no residual."""

    def __init__(self, dim: int, heads: int, dtype: Dtype, rngs: nnx.Rngs):
        self.heads = heads
        self.fc_q = dense(dim, dim, dtype, rngs)
        self.fc_k = dense(dim, dim, dtype, rngs)
        self.fc_v = dense(dim, dim, dtype, rngs)

    def __call__(self, queries: jax.Array, tokens: jax.Array) -> jax.Array:
        """(B, Nq, C) attending to (B, Nk, C) → (B, Nq, C)."""
        b, nq, c = queries.shape
        split = (self.heads, c // self.heads)
        q = self.fc_q(queries).reshape(b, nq, *split)
        k = self.fc_k(tokens).reshape(b, -1, *split)
        v = self.fc_v(tokens).reshape(b, -1, *split)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / np.float32(np.sqrt(c))
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", attn, v, preferred_element_type=jnp.float32).reshape(b, nq, c)


class TemporalAttention(nnx.Module):
    """The official ``Attention``: ``to_qkv`` without bias, heads of C/heads, scale head_dim^-0.5, ``to_out.0``."""

    def __init__(self, dim: int, heads: int, dtype: Dtype, rngs: nnx.Rngs):
        self.heads = heads
        self.to_qkv = dense(dim, 3 * dim, dtype, rngs, use_bias=False)
        self.to_out = nnx.List([dense(dim, dim, dtype, rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, N, C) → (B, N, C)."""
        b, n, c = x.shape
        hd = c // self.heads
        q, k, v = (y.reshape(b, n, self.heads, hd) for y in jnp.split(self.to_qkv(x), 3, axis=-1))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * np.float32(hd**-0.5)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v, preferred_element_type=jnp.float32).reshape(b, n, c)
        return self.to_out[0](out.astype(x.dtype))


def _conv1x1(dim: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(dim, 1, (1, 1), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class SemanticModulation(nnx.Module):
    """``Semantic_Transformation2``: ``σ(conv_gama(e))·x + conv_beta(e)``, one-channel 1×1 convs on the
    cross-attention output e: a gate per position."""

    def __init__(self, dim: int, dtype: Dtype, rngs: nnx.Rngs):
        self.conv_gama = _conv1x1(dim, dtype, rngs)
        self.conv_beta = _conv1x1(dim, dtype, rngs)

    def __call__(self, e: jax.Array, x: jax.Array) -> jax.Array:
        """e, x: (B, H, W, C)."""
        return jax.nn.sigmoid(self.conv_gama(e)) * x + self.conv_beta(e)


class DistortionModulation(nnx.Module):
    """``Dist_Transformation3``: ``σ(get_gamma(std(e)))·x + get_beta(mean(e))`` per channel, the statistics over
    T·H·W (the std unbiased, as ``torch.std``)."""

    def __init__(self, dim: int, dtype: Dtype, rngs: nnx.Rngs):
        self.get_gamma = dense(dim, dim, dtype, rngs)
        self.get_beta = dense(dim, dim, dtype, rngs)

    def __call__(self, e: jax.Array, x: jax.Array) -> jax.Array:
        """e, x: (N, T, H, W, C)."""
        flat = e.reshape(e.shape[0], -1, e.shape[-1]).astype(jnp.float32)
        gamma = jax.nn.sigmoid(self.get_gamma(flat.std(axis=1, ddof=1).astype(e.dtype)))
        beta = self.get_beta(flat.mean(axis=1).astype(e.dtype))
        return gamma[:, None, None, None] * x + beta[:, None, None, None]


class KSVQEBackbone(nnx.Module):
    """Everything but the head: CLIP tool, QRS, CONTRIQUE, the Swin3D-T stages and the modulation modules."""

    def __init__(self, cfg: KSVQEConfig, dtype: Dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        stages = len(cfg.swin.depths)
        mods = stages - cfg.tuning_stage
        self.a1 = nnx.Param(jnp.zeros((mods, 1), jnp.float32))  # values: models/init.py (the yml's 1 and 2)
        self.a2 = nnx.Param(jnp.zeros((mods, 1), jnp.float32))
        self.CLIP_tool = ClipTool(cfg, dtype, rngs)
        self.distortion_tool = Contrique(cfg, dtype, rngs)
        d = cfg.distortion_dim
        self.dist_adapter = relu_mlp((d, d // 4, d), dtype, rngs)
        self.spa_patchnet = RegionSelection(cfg)
        swin = SwinTransformer3D(cfg.swin, dtype=dtype, rngs=rngs)
        self.patch_embed, self.layers, self.norm = swin.patch_embed, swin.layers, swin.norm
        widths, heads = [], []
        for stage in range(cfg.tuning_stage, stages):
            i = min(stage, stages - 2)  # the official modules after the last stage are built like the one before
            widths.append(cfg.swin.embed_dim * 2 ** (i + 1))
            heads.append(cfg.swin.num_heads[i])
        width = cfg.clip.width
        self.semantic_adapter = nnx.List([relu_mlp((width, width // 4, c), dtype, rngs) for c in widths])
        self.distortion_adapter = nnx.List([relu_mlp((d, d // 4, c), dtype, rngs) for c in widths])
        self.semantic_mod = nnx.List([SemanticModulation(c, dtype, rngs) for c in widths])
        self.distortion_mod = nnx.List([DistortionModulation(c, dtype, rngs) for c in widths])
        self.semantic_cross = nnx.List([CrossAttention(c, h, dtype, rngs) for c, h in zip(widths, heads, strict=True)])
        self.distortion_cross = nnx.List(
            [CrossAttention(c, h, dtype, rngs) for c, h in zip(widths, heads, strict=True)]
        )
        self.distortion_self = nnx.List(
            [TemporalAttention(c, h, dtype, rngs) for c, h in zip(widths, heads, strict=True)]
        )

    def modulate(
        self, k: int, x: jax.Array, semantic: jax.Array, distortion: jax.Array, feats: dict[str, jax.Array]
    ) -> jax.Array:
        """Modulation ``k`` of the stage output x (N, T', H, W, C) by the CLIP patch tokens of each step's key frame
        (N, T', L, 768) and the distortion tokens (N, T', G, 128): ``(a1[k]·x_dist + a2[k]·x_sem) / 2``."""
        n, tp, h, w, c = x.shape
        queries = x.reshape(n * tp, h * w, c)
        tokens = apply_relu_mlp(self.semantic_adapter[k], semantic).reshape(n * tp, -1, c)
        sem_cross = self.semantic_cross[k](queries, tokens).reshape(n * tp, h, w, c).astype(x.dtype)
        x_sem = self.semantic_mod[k](sem_cross, x.reshape(n * tp, h, w, c)).reshape(x.shape)
        tokens = apply_relu_mlp(self.distortion_adapter[k], distortion.astype(x.dtype)).reshape(n * tp, -1, c)
        dist_cross = self.distortion_cross[k](queries, tokens).reshape(n, tp, h * w, c).astype(x.dtype)
        sequences = dist_cross.transpose(0, 2, 1, 3).reshape(n * h * w, tp, c)  # one per spatial site, over time
        dist_self = self.distortion_self[k](sequences).reshape(n, h, w, tp, c).transpose(0, 3, 1, 2, 4)
        x_dist = self.distortion_mod[k](dist_self, x)
        feats |= {
            f"mod{k}_semantic_cross": sem_cross.reshape(x.shape),
            f"mod{k}_semantic_out": x_sem,
            f"mod{k}_distortion_cross": dist_cross.reshape(x.shape),
            f"mod{k}_distortion_self": dist_self,
            f"mod{k}_distortion_out": x_dist,
        }
        return ((self.a1[k] * x_dist + self.a2[k] * x_sem) / 2).astype(x.dtype)

    def __call__(self, fragment: jax.Array, resized: jax.Array, rngs: nnx.Rngs | None) -> dict[str, jax.Array]:
        """fragment (N, T, H, W, 3) and resized (N, T, h, w, 3), normalised → every intermediate, ``feat`` (the
        final LayerNorm's output, (N, T/2, H/32·…, C)) and ``distortion_tokens`` (N, T/2, patches, 128) included."""
        n, t = fragment.shape[:2]
        if resized.shape[:2] != (n, t):
            raise ValueError(f"KSVQE's two views must hold the same frames: {fragment.shape} and {resized.shape}")
        keys, groups = key_frames(t)
        cls, patches = self.CLIP_tool(resized[:, keys].reshape(n * len(keys), *resized.shape[2:]))
        cls_attn = cosine_similarity(cls[:, None], patches).reshape(n, len(keys), -1)
        qrs = self.spa_patchnet(fragment.astype(self.dtype), cls_attn, groups, rngs)
        regions = qrs["regions"]
        z = self.distortion_tool(jax.lax.stop_gradient(regions[:, ::2]))
        adapted = apply_relu_mlp(self.dist_adapter, z)
        distortion = 0.2 * adapted + 0.8 * z
        feats = {
            "clip_cls_attn": cls_attn,
            "clip_cls_token": cls.reshape(n, len(keys), -1),
            "clip_patch_tokens": patches.reshape(n, len(keys), *patches.shape[1:]),
            "qrs_region_scores": qrs["scores"],
            "qrs_region_index": qrs["index"],
            "regions": regions,
            "contrique_z": z,
            "dist_adapter_out": adapted,
            "distortion_tokens": distortion,
        }
        step_tokens = feats["clip_patch_tokens"][:, groups[::2]].astype(self.dtype)  # each Swin step's key frame
        x = self.patch_embed(regions)
        for stage, layer in enumerate(self.layers):
            x = layer(x, None, False, rngs)
            feats[f"stage{stage}"] = x
            if stage >= self.cfg.tuning_stage:
                x = self.modulate(stage - self.cfg.tuning_stage, x, step_tokens, distortion, feats)
                feats[f"stage{stage}_modulated"] = x
        feats["feat"] = self.norm(x)
        return feats


class KSVQE(nnx.Module):
    """Views ``fragment`` and ``resize_video`` (N, T, H, W, 3) of the same frames → {quality: (N, T/2, 7, 7) map}."""

    def __init__(
        self, spec: ModelSpec, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs, drop_path_rate: float | None = None
    ):
        self.spec = spec
        cfg: KSVQEConfig = spec.arch
        if drop_path_rate is not None:
            cfg = dataclasses.replace(cfg, swin=dataclasses.replace(cfg.swin, drop_path_rate=drop_path_rate))
        self.KSVQE_backbone = KSVQEBackbone(cfg, dtype, rngs)
        self.KSVQE_head = VQAHead(cfg.swin.num_features, cfg.head_hidden, cfg.head_dropout, dtype, rngs)

    def __call__(
        self, views: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None, return_features: bool = False
    ) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """The score map, float32; with ``return_features`` also every intermediate (see `KSVQEBackbone`)."""
        if set(views) != {FRAGMENT, RESIZED}:
            raise ValueError(f"{self.spec.name} scores {FRAGMENT} and {RESIZED} together, got {sorted(views)}")
        feats = self.KSVQE_backbone(views[FRAGMENT], views[RESIZED], rngs)
        maps = {SCORE: self.KSVQE_head(feats["feat"], rngs).astype(jnp.float32)}
        return (maps, feats) if return_features else maps


# ----------------------------------------------------------------------------------------------- loss


def distortion_contrastive_loss(tokens: jax.Array, labels: jax.Array, temperature: float = 0.1) -> jax.Array:
    """``distortion_contrastive_supervised``: tokens (N, T', G, D) of N videos with distortion classes ``labels``
    (N,). Over all N·T'·G tokens, L2-normalised: ``sim = cos / temperature``; the positives of a token are the other
    tokens of videos of its class (itself excluded), the denominator sums ``exp(sim)`` over every other token;
    ``loss = mean(log Σ_{s≠r} exp(sim) − mean over positives of sim)``. (The official positive mask holds a
    per-class count, which cancels in its row mean.) float32 scalar."""
    n, t, g, d = tokens.shape
    z = tokens.reshape(-1, d).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    sim = (z @ z.T) / temperature
    label = jnp.repeat(jnp.asarray(labels).reshape(n), t * g)
    others = ~jnp.eye(z.shape[0], dtype=bool)
    positive = (label[:, None] == label[None, :]) & others
    log_denominator = jax.nn.logsumexp(jnp.where(others, sim, -jnp.inf), axis=1)
    mean_positive = (sim * positive).sum(axis=1) / positive.sum(axis=1)
    return jnp.mean(log_denominator - mean_positive)


def contrastive_aux(features: Mapping[str, jax.Array], labels: Mapping[str, jax.Array]) -> jax.Array:
    """KSVQE's training term: the contrastive loss of its distortion tokens against the batch's ``dis_label``."""
    return distortion_contrastive_loss(features["distortion_tokens"], labels["dis_label"])


# ----------------------------------------------------------------------------------------------- checkpoint

# Sequentials and their names in the official files: CONTRIQUE's encoder (torchvision's ResNet-50 children up to
# layer4) → our ResNet50's attributes.
_ENCODER = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_BACKBONE = "KSVQE_backbone."
_DROPPED_PREFIXES = ("cls_head.",)  # the Kinetics-400 Swin's classifier (load_swin keeps "backbone" keys only)


def _rename(key: str) -> str:
    """An official KSVQE key → this module's: CONTRIQUE's encoder indices become ResNet50 attribute names."""
    prefix = f"{_BACKBONE}distortion_tool.encoder."
    if key.startswith(prefix):
        index, rest = key[len(prefix) :].split(".", 1)
        return f"{prefix}{_ENCODER.get(index, index)}.{rest}"
    return key


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """The official files, merged → this model's keys; everything not dropped here is converted strictly.

    * the KSVQE checkpoint (``KSVQE_backbone.*``, ``KSVQE_head.*``; ``module.`` already stripped by the reader);
    * OpenAI's ViT-B-16.pt: ``visual.*`` under ``KSVQE_backbone.CLIP_tool.``, its text tower dropped by name;
    * ``CONTRIQUE_checkpoint25.tar``: ``encoder.*`` / ``projector.*`` under ``KSVQE_backbone.distortion_tool.``;
    * the Kinetics-400 Swin-T (``backbone.*``, its ``cls_head`` dropped) as ``load_swin`` reads it: its relative
      position tables also fill the fragment tables of the stages that have them.

    A key of the KSVQE checkpoint wins over the same weight from another file: the official trainer loads it last
    (over the Swin, CLIP and CONTRIQUE weights its constructor loaded).
    """
    parts: StateDict = {}
    own: StateDict = {}
    frag_stages = {str(i) for i, on in enumerate(KSVQEConfig().swin.frag_biases) if on}
    for key, value in state_dict.items():
        if key.startswith((_BACKBONE, "KSVQE_head.")):
            own[_rename(key)] = value
        elif key.startswith("visual."):
            parts[f"{_BACKBONE}CLIP_tool.{key}"] = value
        elif key.startswith(("encoder.", "projector.")):
            parts[_rename(f"{_BACKBONE}distortion_tool.{key}")] = value
        elif key.startswith("backbone."):
            name = f"{_BACKBONE}{key[len('backbone.') :]}"
            parts[name] = value
            fragment = name.replace("relative_position_bias_table", "fragment_position_bias_table")
            stage = name.split(".")[2] if name.startswith(f"{_BACKBONE}layers.") else None
            if fragment != name and stage in frag_stages and fragment.removeprefix(_BACKBONE) not in state_dict:
                parts[fragment] = value
        elif is_clip_text_key(key) or key.startswith(_DROPPED_PREFIXES):
            continue
        else:
            own[key] = value  # unknown: the strict conversion names it
    return parts | own


# ----------------------------------------------------------------------------------------------- parity


def parity_arrays(model: KSVQE, inputs: Mapping[str, jax.Array], case: Mapping) -> dict[str, jax.Array]:
    """The arrays of the official KSVQE fixtures from their inputs ``resize_video`` and ``fragment``
    [B, 3, T, H, W] (normalised) and ``dis_label`` in the case."""
    clips = {b: jnp.moveaxis(x, 1, -1)[:, None] for b, x in inputs.items()}  # → (B, 1 clip, T, H, W, C)
    scores, maps, feats = map_scores(model, clips, features=True)

    def channel_mean(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)

    out = {k: feats[k] for k in ("clip_cls_attn", "clip_cls_token", "clip_patch_tokens", "qrs_region_scores")}
    out["qrs_region_index"] = feats["qrs_region_index"]
    px = model.spec.arch.fragment_px
    out["x_sel_fragment_corners"] = jnp.moveaxis(feats["regions"][:, :, ::px, ::px], -1, 1)
    out["contrique_z"], out["dist_adapter_out"] = feats["contrique_z"], feats["dist_adapter_out"]
    for stage in range(len(model.spec.arch.swin.depths)):
        out[f"stage{stage}_out_channel_mean"] = channel_mean(feats[f"stage{stage}"])
        if f"stage{stage}_modulated" in feats:
            out[f"stage{stage}_modulated_channel_mean"] = channel_mean(feats[f"stage{stage}_modulated"])
    for name in [k for k in feats if k.startswith("mod")]:
        out[f"{name}_mean"] = channel_mean(feats[name])
    out["feat_channel_mean"] = channel_mean(feats["feat"])
    out["feat"] = jnp.moveaxis(feats["feat"], -1, 1)
    out["score_map"] = maps[SCORE]  # (B, 1 clip, T', H', W'): the clip axis stands for the channel axis
    out["score"] = scores[SCORE][:, None]
    labels = jnp.asarray(case["dis_label"])
    temperature = model.spec.arch.temperature
    out["dis_contra_loss"] = distortion_contrastive_loss(feats["distortion_tokens"], labels, temperature)
    return out


# ----------------------------------------------------------------------------------------------- weights


def pretrained_files() -> list[str]:
    """The component weights where the official code's tools cache them: OpenAI's ``ViT-B-16.pt``
    (``~/.cache/clip``, clip._download's folder), and the Kinetics-400 Swin-T and ``CONTRIQUE_checkpoint25.tar``
    under ``$TORCH_HOME/hub/checkpoints`` (the official code reads them from fixed paths of its authors')."""
    clip = os.path.join(os.path.expanduser("~"), ".cache", "clip", "ViT-B-16.pt")
    found = [
        clip if os.path.isfile(clip) else None,
        torch_hub_file("swin_tiny_patch244_window877_kinetics400_1k.pth"),
        torch_hub_file("CONTRIQUE_checkpoint25.tar"),
    ]
    return [f for f in found if f]


_REPO = "https://github.com/lixinustc/KVQ-Challenge-CVPR-NTIRE2024"
_CLIP_SHA = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
# The LSVQ-pretrained KSVQE (the KVQ README's Google Drive link; no KVQ-trained checkpoint is published), then the
# component files the official constructor loads: OpenAI's CLIP (the URL's last folder is its sha256), CONTRIQUE
# (its README's Box link) and the Kinetics-400 Video Swin-T.
WEIGHTS = OfficialWeights(
    "https://drive.google.com/file/d/1HcbqCRRnVLnh738VHkpz7UMNuM3v59QU",
    filename="KSVQE_techniqual_pretrainonLSVQ.pth",
    also=(
        OfficialWeights(f"https://openaipublic.azureedge.net/clip/models/{_CLIP_SHA}/ViT-B-16.pt", _CLIP_SHA),
        OfficialWeights(
            "https://utexas.box.com/shared/static/rhpa8nkcfzpvdguo97n2d5dbn4qb03z8.tar",
            filename="CONTRIQUE_checkpoint25.tar",
        ),
        OfficialWeights(
            "https://github.com/SwinTransformer/storage/releases/download/v1.0.4/"
            "swin_tiny_patch244_window877_kinetics400_1k.pth"
        ),
    ),
)

register(
    ModelSpec(
        name="ksvqe",
        family="ksvqe",
        branches=BRANCHES,
        build=KSVQE,
        arch=KSVQEConfig(),
        outputs=(SCORE,),
        weights=WEIGHTS,
        official=OfficialCode(
            _REPO,
            "models",
            "config/Kwai_KSVQE.yml",
            requires=("timm", "einops"),
            build_note="OpenAI's ViT-B-16.pt (downloaded into ~/.cache/clip), CONTRIQUE_checkpoint25.tar and the "
            "Kinetics-400 Swin-T at its authors' absolute paths, the Swin one opened when swin_backbone.py is imported",
        ),
        checkpoint_filter=checkpoint_filter,
        parity=parity_arrays,
        pretrained=pretrained_files,
        aux_losses=(AuxLoss("dis_contra", contrastive_aux, labels=("dis_label",), weight=0.3),),
    )
)
