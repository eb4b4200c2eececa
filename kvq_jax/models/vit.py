"""The CLIP ViT image tower (OpenAI CLIP's `VisionTransformer`), one module for every family that uses CLIP.

Attribute names are OpenAI's (`conv1`, `class_embedding`, `positional_embedding`, `ln_pre`,
`transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_post`, `proj`), so the `visual.*` keys of a
CLIP checkpoint convert by the generic torch-layout mapping. `nn.MultiheadAttention`'s packed projection stays a raw
(3d, d) `in_proj_weight` applied as ``x @ w.T``, and `proj` stays (width, output), as the checkpoint holds them.

Numerics follow `model.py` of openai/CLIP (COVER keeps a copy): pre-LN residual blocks, LayerNorm eps 1e-5 computed
in float32 (CLIP's LayerNorm upcasts), QuickGELU ``x·σ(1.702x)``, attention scaled by ``head_dim**-0.5``, no bias on
the patch convolution. The positional table is optional: COVER adds none at all (its 512² frames give a 36×36 grid
that the 16×16 table of ViT-L/14 does not fit); a tower built with one adds it when its rows match the tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvq_jax.models.common import Dtype, dense, layer_norm

_LN_EPS = 1e-5
# Attention logits held by one step of `encode_in_steps` (256 MB in float32): two 512² ViT-L/14 frames.
_STEP_LOGITS = 1 << 26


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of the CLIP image tower; defaults are OpenAI's ViT-L/14 as COVER runs it.

    ``positional_tokens`` is the row count of the positional table (grid² + 1, e.g. 257 for ViT-L/14 at 224²);
    0 builds a tower without one, which is COVER's (its checkpoint's table is dropped by the family's filter).
    """

    width: int = 1024
    layers: int = 24
    heads: int = 16
    patch_size: int = 14
    output_dim: int = 768
    positional_tokens: int = 0

    def tokens(self, height: int, width: int) -> int:
        """Sequence length for a ``height × width`` image: the VALID patch grid plus the class token."""
        return (height // self.patch_size) * (width // self.patch_size) + 1


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's activation: ``x · sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


# What an OpenAI CLIP checkpoint holds besides its image tower (`visual.*`): the text tower and the scalars that
# OpenAI's build_model deletes. Families that convert a CLIP file drop these by name.
CLIP_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
CLIP_TEXT_KEYS = ("positional_embedding", "text_projection", "logit_scale", "input_resolution", "context_length",
                  "vocab_size")  # fmt: skip


def is_clip_text_key(key: str) -> bool:
    """True for the keys of a CLIP checkpoint that belong to its text side."""
    return key in CLIP_TEXT_KEYS or key.startswith(CLIP_TEXT_PREFIXES)


def _cubic_weights(t: np.float32, a: float) -> np.ndarray:
    """PyTorch's `get_cubic_upsample_coefficients` (Keys' kernel with ``a``) for the four taps around ``t``."""
    a = np.float32(a)
    one = np.float32(1)

    def near(x: np.float32) -> np.float32:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + one

    def far(x: np.float32) -> np.float32:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.array([far(t + one), near(t), near(one - t), far(one - t + one)], np.float32)


def bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """(out_size, in_size) float32 weights of PyTorch's bicubic ``F.interpolate(size=…, align_corners=False)``
    along one axis, without antialiasing: source ``(dst + 0.5)·in/out − 0.5`` (not clamped, as for cubic), taps
    ``floor(src) − 1 … + 2`` clamped to the edge, Keys' kernel with a = −0.75. (`jax.image.resize` uses another
    cubic and antialiases when shrinking, so it does not give PyTorch's numbers.)"""
    scale = np.float32(in_size) / np.float32(out_size)
    out = np.zeros((out_size, in_size), np.float32)
    for dst in range(out_size):
        src = scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5)
        base = int(np.floor(src))
        for k, w in enumerate(_cubic_weights(np.float32(src - base), a)):
            out[dst, min(max(base - 1 + k, 0), in_size - 1)] += w
    return out


def resize_positional_table(table: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """A (1 + S², width) CLIP positional table resized to ``grid`` = (h, w) patches, (1 + h·w, width): the class
    row kept, the S×S grid resized bicubically as PyTorch does it (KSVQE's ``resize_pos_embed2d``: bicubic,
    ``align_corners=False``, no antialiasing)."""
    side = round((table.shape[0] - 1) ** 0.5)
    if side * side + 1 != table.shape[0]:
        raise ValueError(f"positional table of {table.shape[0]} rows is not a class row plus a square grid")
    if tuple(grid) == (side, side):
        return table
    rows, cols = (jnp.asarray(bicubic_matrix(side, g)) for g in grid)
    square = table[1:].reshape(side, side, -1).astype(jnp.float32)
    resized = jnp.einsum("ah,hwc,bw->abc", rows, square, cols, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([table[:1], resized.reshape(grid[0] * grid[1], -1).astype(table.dtype)])


class MultiheadAttention(nnx.Module):
    """`torch.nn.MultiheadAttention` (batch-first here) with its packed q/k/v projection kept as torch holds it."""

    def __init__(self, dim: int, heads: int, dtype: Dtype, rngs: nnx.Rngs):
        self.heads = heads
        self.dtype = dtype
        self.in_proj_weight = nnx.Param(jnp.zeros((3 * dim, dim), jnp.float32))  # values: models/init.py
        self.in_proj_bias = nnx.Param(jnp.zeros((3 * dim,), jnp.float32))
        self.out_proj = dense(dim, dim, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, L, d) → (B, L, d); softmax in float32, normalised after the value product (one pass fewer)."""
        b, n, d = x.shape
        hd = d // self.heads
        w = self.in_proj_weight[...].astype(self.dtype)
        qkv = jnp.einsum("bld,ed->ble", x.astype(self.dtype), w) + self.in_proj_bias[...].astype(self.dtype)
        q, k, v = qkv.reshape(b, n, 3, self.heads, hd).transpose(2, 0, 3, 1, 4)  # each (B, heads, L, hd)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * hd**-0.5, k, preferred_element_type=jnp.float32)
        e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
        out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(self.dtype), v, preferred_element_type=jnp.float32)
        out = (out / e.sum(axis=-1, keepdims=True)).astype(self.dtype)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, n, d))


class MLP(nnx.Module):
    """`c_fc` → QuickGELU → `c_proj` (CLIP's `mlp` Sequential)."""

    def __init__(self, dim: int, dtype: Dtype, rngs: nnx.Rngs):
        self.c_fc = dense(dim, 4 * dim, dtype, rngs)
        self.c_proj = dense(4 * dim, dim, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(quick_gelu(self.c_fc(x)))


class ResidualAttentionBlock(nnx.Module):
    """Pre-LN block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, dim: int, heads: int, dtype: Dtype, rngs: nnx.Rngs):
        self.ln_1 = layer_norm(dim, _LN_EPS, dtype, rngs)
        self.attn = MultiheadAttention(dim, heads, dtype, rngs)
        self.ln_2 = layer_norm(dim, _LN_EPS, dtype, rngs)
        self.mlp = MLP(dim, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    """The stack of blocks (`transformer.resblocks.N`)."""

    def __init__(self, dim: int, layers: int, heads: int, dtype: Dtype, rngs: nnx.Rngs):
        self.resblocks = nnx.List([ResidualAttentionBlock(dim, heads, dtype, rngs) for _ in range(layers)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nnx.Module):
    """CLIP's image tower: (N, H, W, 3) normalised images → (N, output_dim) = ``ln_post(CLS) @ proj``.

    Patches are the VALID grid of the stride-``patch_size`` convolution: pixels past the last whole patch are
    never seen (COVER's 512² frames: 36×36 patches, the last 8 rows and columns unused).
    """

    def __init__(self, cfg: ViTConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        p = cfg.patch_size
        self.conv1 = nnx.Conv(
            3,
            cfg.width,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.class_embedding = nnx.Param(jnp.zeros((cfg.width,), jnp.float32))
        self.positional_embedding = (
            nnx.Param(jnp.zeros((cfg.positional_tokens, cfg.width), jnp.float32)) if cfg.positional_tokens else None
        )
        self.ln_pre = layer_norm(cfg.width, _LN_EPS, dtype, rngs)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, dtype, rngs)
        self.ln_post = layer_norm(cfg.width, _LN_EPS, dtype, rngs)
        self.proj = nnx.Param(jnp.zeros((cfg.width, cfg.output_dim), jnp.float32))

    def embed(self, images: jax.Array, table: jax.Array | None = None) -> jax.Array:
        """(N, H, W, 3) → the tokens entering the first block, (N, 1 + patches, width): the class token, then the
        patch grid row by row, plus a positional table (``table``, else the tower's own, if it has one), ln_pre.

        Families that read the tokens between blocks (KSVQE's CLS adapters) run the blocks themselves from here.
        """
        n = images.shape[0]
        x = self.conv1(images.astype(self.dtype))  # (N, gh, gw, width)
        x = x.reshape(n, -1, self.cfg.width)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (n, 1, self.cfg.width))
        x = jnp.concatenate([cls, x], axis=1)
        if table is None and self.positional_embedding is not None:
            table = self.positional_embedding[...]
        if table is not None:
            if table.shape[0] != x.shape[1]:
                raise ValueError(
                    f"positional table of {table.shape[0]} rows for {x.shape[1]} tokens "
                    f"({images.shape[1]}×{images.shape[2]} images, patch {self.cfg.patch_size}): resize it first"
                )
            x = x + table.astype(x.dtype)
        return self.ln_pre(x)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.transformer(self.embed(images))
        return self.ln_post(x[:, 0]) @ self.proj[...].astype(self.dtype)


def images_per_step(count: int, cfg: ViTConfig, height: int, width: int) -> int:
    """The most images (a divisor of ``count``) whose attention logits fit one step's budget (at least 1)."""
    logits = cfg.heads * cfg.tokens(height, width) ** 2
    fits = [k for k in range(1, count + 1) if count % k == 0 and k * logits <= _STEP_LOGITS]
    return max(fits, default=1)


def encode_in_steps(tower: VisionTransformer, images: jax.Array) -> jax.Array:
    """``tower`` over (N, T, H, W, 3) images, a few at a time in a `lax.map`: (N, T, output_dim).

    The steps are a divisor of the static T, so a symbolic batch N (jax.export) keeps a static step. Bounding
    the images per step bounds the (images, heads, L, L) attention logits: 20 frames of 512² at once would hold
    2.2 GB of them per block; two frames per step hold 215 MB and keep the matmuls large.
    """
    n, t, h, w, c = images.shape
    k = images_per_step(t, tower.cfg, h, w)
    graph, state = nnx.split(tower)
    out = jax.lax.map(lambda x: nnx.merge(graph, state)(x), images.reshape(-1, k, h, w, c))
    return out.reshape(n, t, -1)
