"""Video Swin Transformer (Swin3D-T) with the gated relative position bias (GRPB) of FAST-VQA / DOVER.

Reproduces the official `swin_backbone.py` of VQAssessment/DOVER and FAST-VQA, quirks included:

* GRPB: stages with `frag_bias` own a second table (FPB). For each token pair in a window the gate is the
  *integer* L1 distance g between the fragment ids of the two tokens, where the fragment ids come from a
  (1, wh, ww) grid (the window's own h, w — 7×7 for DOVER) nearest-interpolated onto the padded feature map
  and rolled with the shift. The bias is g·RPB + (1−g)·FPB, so pairs two fragments apart get 2·RPB − FPB.
* Zero padding after norm1 up to window multiples, padded tokens not masked; the 27-region shift mask
  with −100; window and shift clamped per dimension when the feature is not larger than the window. The shift
  is half the *constructed* window ((4,3,3) for (8,7,7)) even when adaptive windows shrink the window: it is
  zeroed only on an axis whose token count is ≤ the window, so Zoom-VQA's (2,7,7) window on 4 time steps rolls
  time by 4 (the identity) and masks space only, and 16 frames at 240² run (4,5,5) windows shifted (4,3,3).
* Relative-position index slicing for shrunken windows: DOVER's code takes `index[:N, :N]` of the index
  built for the constructed window; FAST-VQA's code (adaptive windows, scaled by input size relative to
  32×224×224) takes the 6-D block `[:d, :h, :w, :d, :h, :w]`. `adaptive_window=True` selects the latter.

The geometry (indices, fragment ids, shift regions) depends only on static shapes, so it is computed once per
shape in NumPy and enters the jitted graph as small constants; gates and masks are formed on device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvq_jax.models.common import DropPath, Dtype, dense, gelu, largest_divisor, layer_norm

Triple = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    """Hyper-parameters of `SwinTransformer3D`; defaults are DOVER's `swin_tiny_grpb`."""

    patch_size: Triple = (2, 4, 4)
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: Triple = (8, 7, 7)
    mlp_ratio: float = 4.0
    frag_biases: tuple[bool, ...] = (True, True, True, False)
    drop_path_rate: float = 0.1
    # FAST-VQA code: attention windows scale with the input size relative to base_x_size.
    adaptive_window: bool = False
    base_x_size: Triple = (32, 224, 224)

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


# ----------------------------------------------------------------------------------------------------
# Static geometry (NumPy, cached per shape)
# ----------------------------------------------------------------------------------------------------


def clamp_window(size: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
    """The official `get_window_size`: a dimension not larger than the window uses the whole extent, no shift."""
    w = tuple(s if s <= ws else ws for s, ws in zip(size, window, strict=True))
    sh = tuple(0 if s <= ws else sf for s, ws, sf in zip(size, window, shift, strict=True))
    return w, sh  # type: ignore[return-value]


def adaptive_window(window: Triple, input_size: Triple, base_size: Triple) -> Triple:
    """FAST-VQA's `get_adaptive_window_size`: integer-scaled window for non-default input sizes."""
    return tuple((w * x) // b for w, x, b in zip(window, input_size, base_size, strict=True))  # type: ignore[return-value]


@functools.cache
def relative_position_index(window: Triple) -> np.ndarray:
    """Video-Swin index (N, N) into the (2Wd−1)(2Wh−1)(2Ww−1)-row bias table."""
    wd, wh, ww = window
    coords = np.stack(np.meshgrid(np.arange(wd), np.arange(wh), np.arange(ww), indexing="ij")).reshape(3, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    rel = rel + np.array([wd - 1, wh - 1, ww - 1])
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


@functools.cache
def sliced_position_index(built: Triple, used: Triple, six_d: bool) -> np.ndarray:
    """The index for a shrunken window, sliced as the official code does (see module docstring)."""
    full = relative_position_index(built)
    if six_d:
        d, h, w = used
        return full.reshape(*built, *built)[:d, :h, :w, :d, :h, :w].reshape(d * h * w, d * h * w)
    n = int(np.prod(used))
    return full[:n, :n]


def window_partition_np(x: np.ndarray, window: Triple) -> np.ndarray:
    """(D, H, W, ...) → (num_windows, Wd·Wh·Ww, ...) in the official window order."""
    d, h, w = x.shape[:3]
    wd, wh, ww = window
    rest = x.shape[3:]
    x = x.reshape(d // wd, wd, h // wh, wh, w // ww, ww, *rest)
    x = x.transpose(0, 2, 4, 1, 3, 5, *range(6, 6 + len(rest)))
    return x.reshape(-1, wd * wh * ww, *rest)


def _torch_nearest_index(out_size: int, in_size: int) -> np.ndarray:
    """Source indices of torch's `F.interpolate(mode='nearest')` (float32 scale, floor)."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(np.float32(in_size) / np.float32(out_size))
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


@functools.cache
def fragment_ids(padded: Triple, window: Triple, shift: Triple) -> np.ndarray:
    """Fragment (h, w) ids of every token, window-partitioned: (num_windows, N, 2) int32.

    Fragment ids come from a (1, Wh, Ww) grid nearest-resized onto the padded map, rolled by −shift
    (the temporal fragment count is 1, so only h and w matter). The GRPB gate of a token pair is the
    L1 distance of their ids; it is formed on device from this small array rather than baked in as an
    (nW, N, N) constant, which would bloat the compiled program.
    """
    grid = (window[1], window[2])
    coords = np.stack(
        np.meshgrid(*[_torch_nearest_index(o, g) for o, g in zip(padded[1:], grid, strict=True)], indexing="ij"),
        axis=-1,
    )  # (Hp, Wp, 2)
    coords = np.broadcast_to(coords, (padded[0], *coords.shape))
    coords = np.roll(coords, shift=tuple(-s for s in shift), axis=(0, 1, 2))
    return window_partition_np(coords, window).astype(np.int32)


@functools.cache
def shift_regions(padded: Triple, window: Triple, shift: Triple) -> np.ndarray:
    """Region id of every token for the Video-Swin shift mask, window-partitioned: (num_windows, N) int32.

    Tokens of one window attend freely within a region and get −100 across regions.
    """
    img = np.zeros(padded, np.int32)
    cnt = 0
    slices = [
        (slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift, strict=True)
    ]  # same Python slice semantics as the official loop, including shift == 0
    for d in slices[0]:
        for h in slices[1]:
            for w in slices[2]:
                img[d, h, w] = cnt
                cnt += 1
    return window_partition_np(img[..., None], window)[..., 0]


def _pad_to(size: int, multiple: int) -> int:
    return (multiple - size % multiple) % multiple


# ----------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------


class WindowAttention3D(nnx.Module):
    """Multi-head self-attention inside 3-D windows with (gated) relative position biases."""

    def __init__(self, dim: int, window: Triple, num_heads: int, frag_bias: bool, dtype: Dtype, rngs: nnx.Rngs):
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.dtype = dtype
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nnx.Param(jnp.zeros((rows, num_heads), jnp.float32))  # models/init.py
        self.fragment_position_bias_table = nnx.Param(jnp.zeros((rows, num_heads), jnp.float32)) if frag_bias else None
        self.qkv = dense(dim, 3 * dim, dtype, rngs)
        self.proj = dense(dim, dim, dtype, rngs)

    def torch_buffers(self) -> dict[str, np.ndarray]:
        """The integer buffer the official module registers: recomputed, checked against checkpoints that hold it."""
        return {"relative_position_index": relative_position_index(self.window)}

    def position_bias(self, table: jax.Array, index: np.ndarray) -> jax.Array:
        """A (rows, heads) table gathered by an (N, N) index: (heads, N, N) float32 (from the transposed table,
        so that the result needs no transpose)."""
        n = index.shape[0]
        return table.T[:, index.reshape(-1)].reshape(-1, n, n)

    def __call__(self, windows: jax.Array, index: np.ndarray, gates: jax.Array, mask: jax.Array | None) -> jax.Array:
        """windows: (nW, B, N, C) → (nW, B, N, C).

        `index` is the (N, N) relative-position index; `gates` (nW, N, N) int8 holds the GRPB gate g of every
        token pair (used only with a fragment table) and `mask` (nW, N, N) int8 is 1 across shift regions
        (None: no shift). The attention itself is `window_attention`.
        """
        nw, b, n, _ = windows.shape
        rpb = self.position_bias(self.relative_position_bias_table[...], index)
        fpb = None
        if self.fragment_position_bias_table is not None:
            fpb = self.position_bias(self.fragment_position_bias_table[...], index)
        else:
            gates = None
        # A symbolic batch (jax.export) sizes the steps as for batch 1: the step count must be a plain int.
        step = _windows_per_step(nw, (b if isinstance(b, int) else 1) * self.num_heads * n * n)
        out = window_attention(self.qkv(windows), rpb, fpb, gates, mask, (self.num_heads, self.scale, step))
        return self.proj(out)


# ----------------------------------------------------------------------------------------------------
# The attention core, with its gradient written out
# ----------------------------------------------------------------------------------------------------

AttentionShape = tuple[int, float, int]  # heads, scale, windows per scan step


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def window_attention(
    qkv: jax.Array,
    rpb: jax.Array,
    fpb: jax.Array | None,
    gates: jax.Array | None,
    mask: jax.Array | None,
    shape: AttentionShape,
) -> jax.Array:
    """Softmax attention inside every window: qkv (nW, B, N, 3C) → (nW, B, N, C), in qkv's dtype.

    The bias of window w is g·RPB + (1−g)·FPB (RPB alone without `fpb`), −100 where `mask` is set; rpb, fpb:
    (heads, N, N) float32; gates, mask: (nW, N, N) int8. The windows go through a `lax.scan`, a few at a time
    (`_windows_per_step`), so that a step's logits stay in cache: the whole (nW, B, heads, N, N) tensor (236 MB at
    stage 1, T=32) made every pass of the softmax a trip through memory (stage-1 attention core: 1.0 s → 0.3 s
    per block). The softmax normalisation is applied to the (N, head_dim) output instead of the (N, N)
    probabilities: the same quotient, one pass fewer.

    The gradient is written by hand (`_attention_bwd`), flash-attention style: the forward keeps only each row's
    log-sum-exp, the backward recomputes the probabilities window by window and sums the bias gradient over
    the batch and the windows with element-wise adds. Differentiating the scan instead left that sum to XLA's
    reductions over a middle axis, which XLA:CPU ran at a few hundred MB/s: 7 ms per stage-1 step, 10× the
    step's matrix products.
    """
    return _attention_fwd(qkv, rpb, fpb, gates, mask, shape)[0]


def _step_inputs(
    qkv: jax.Array, gates: jax.Array | None, mask: jax.Array | None, step: int, **more: jax.Array
) -> dict[str, jax.Array]:
    """Scan inputs: every per-window array cut into (nW/step, step, ...) slices (qkv and `more` as step·B rows)."""
    nw, b = qkv.shape[:2]
    xs = {k: v.reshape(nw // step, step * b, *v.shape[2:]) for k, v in {"qkv": qkv, **more}.items()}
    for name, per_window in (("gates", gates), ("mask", mask)):
        if per_window is not None:
            xs[name] = per_window.reshape(nw // step, step, *per_window.shape[1:])
    return xs


def _step_logits(w: dict[str, jax.Array], rpb, fpb, shape: AttentionShape) -> tuple[jax.Array, ...]:
    """q, k, v (step·B, heads, N, hd) and the biased float32 logits (step·B, heads, N, N) of one scan step."""
    heads, scale, step = shape
    sb, n, c3 = w["qkv"].shape
    q, k, v = w["qkv"].reshape(sb, n, 3, heads, c3 // 3 // heads).transpose(2, 0, 3, 1, 4)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k, preferred_element_type=jnp.float32)
    bias = _window_bias(rpb, fpb, w.get("gates"), w.get("mask"))  # (heads | step, heads, N, N)
    b = sb // step
    logits = (logits.reshape(step, b, heads, n, n) + bias.reshape(-1, 1, heads, n, n)).reshape(logits.shape)
    return q, k, v, logits


def _attention_fwd(qkv, rpb, fpb, gates, mask, shape: AttentionShape):
    step = shape[2]
    nw, b, n, c3 = qkv.shape
    c = c3 // 3

    def attend(_: None, w: dict[str, jax.Array]) -> tuple[None, tuple[jax.Array, jax.Array]]:
        _, _, v, logits = _step_logits(w, rpb, fpb, shape)
        m = _row_reduce(jnp.max, logits)
        e = jnp.exp(logits - m)
        total = _row_reduce(jnp.sum, e)
        out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(qkv.dtype), v, preferred_element_type=jnp.float32)
        out = (out / total).astype(qkv.dtype)
        return None, (out.transpose(0, 2, 1, 3).reshape(-1, n, c), m + jnp.log(total))

    _, (out, lse) = jax.lax.scan(attend, None, _step_inputs(qkv, gates, mask, step))
    out = out.reshape(nw, b, n, c)
    return out, (qkv, rpb, fpb, gates, mask, out, lse)


def _attention_bwd(shape: AttentionShape, res: tuple, d_out: jax.Array):
    qkv, rpb, fpb, gates, mask, out, lse = res
    heads, scale, step = shape
    n, c3 = qkv.shape[2:]
    c = c3 // 3

    def attend_bwd(acc: tuple, w: dict[str, jax.Array]) -> tuple[tuple, jax.Array]:
        q, k, v, logits = _step_logits(w, rpb, fpb, shape)
        p = jnp.exp(logits - w["lse"])
        do = w["d_out"].reshape(-1, n, heads, c // heads).transpose(0, 2, 1, 3)
        o = w["out"].reshape(-1, n, heads, c // heads).transpose(0, 2, 1, 3)
        f32 = jnp.float32
        dv = jnp.einsum("bhqk,bhqd->bhkd", p.astype(do.dtype), do, preferred_element_type=f32)
        dp = jnp.einsum("bhqd,bhkd->bhqk", do, v, preferred_element_type=f32)
        delta = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True)
        ds = p * (dp - delta)  # ∂loss/∂logits
        dq = jnp.einsum("bhqk,bhkd->bhqd", ds.astype(k.dtype), k, preferred_element_type=f32) * scale
        dk = jnp.einsum("bhqk,bhqd->bhkd", ds.astype(q.dtype), q, preferred_element_type=f32) * scale
        d_qkv = jnp.stack([dq, dk, dv]).astype(qkv.dtype).transpose(1, 3, 0, 2, 4).reshape(-1, n, c3)
        d_bias = _sum_axis(ds.reshape(step, -1, heads, n, n), axis=1)  # Σ over the batch: (step, heads, N, N)
        if fpb is None:
            return (acc[0] + _sum_axis(d_bias),), d_qkv
        g = w["gates"][:, None].astype(f32)
        gated = _sum_axis(g * d_bias)
        return (acc[0] + gated, acc[1] + _sum_axis(d_bias) - gated), d_qkv

    zeros = jnp.zeros(rpb.shape, jnp.float32)
    init = (zeros,) if fpb is None else (zeros, zeros)
    xs = _step_inputs(qkv, gates, mask, step, out=out, d_out=d_out)
    xs["lse"] = lse
    acc, d_qkv = jax.lax.scan(attend_bwd, init, xs)
    d_fpb = None if fpb is None else acc[1].astype(fpb.dtype)
    return d_qkv.reshape(qkv.shape), acc[0].astype(rpb.dtype), d_fpb, None, None


window_attention.defvjp(_attention_fwd, _attention_bwd)


def _sum_axis(x: jax.Array, axis: int = 0) -> jax.Array:
    """Σ over `axis` by adding halves: element-wise adds of slices, which every backend runs at memory speed
    (XLA:CPU's reduce over a leading or middle axis did not)."""
    while x.shape[axis] > 1:
        half = x.shape[axis] // 2
        head = jax.lax.slice_in_dim(x, 0, half, axis=axis) + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis)
        if x.shape[axis] % 2:
            rest = jax.lax.slice_in_dim(x, 2 * half, None, axis=axis)
            first = jax.lax.slice_in_dim(head, 0, 1, axis=axis) + rest
            head = jnp.concatenate([first, jax.lax.slice_in_dim(head, 1, None, axis=axis)], axis=axis)
        x = head
    return jnp.squeeze(x, axis)


_STEP_ELEMENTS = 1 << 19  # logits per scan step: 2 MB in float32, about the L2 cache of one core here


def _windows_per_step(num_windows: int, logits_per_window: int) -> int:
    """The most windows per attention step (a divisor of `num_windows`) whose logits fit `_STEP_ELEMENTS`.

    DOVER's 8×7×7 windows fill a step each; FAST-VQA-M's 2×2×2 windows (1024 of them at stage 1) go
    hundreds at a time, where one per step spent its time on loop overhead.
    """
    return largest_divisor(num_windows, _STEP_ELEMENTS // logits_per_window)


def _row_reduce(reduce: Callable, x: jax.Array) -> jax.Array:
    """`reduce` over the last axis (kept, size 1) in two stages of at most 32 when the length allows.

    XLA:CPU otherwise rewrites a 392-long row reduction into a slow reduce-window (0.6 ms per stage-1
    window for the max alone, when YNNPACK is disabled); two short reductions are plain loop fusions.
    """
    n = x.shape[-1]
    inner = next((k for k in range(32, 7, -1) if n % k == 0), n)
    return reduce(reduce(x.reshape(*x.shape[:-1], n // inner, inner), axis=-1), axis=-1, keepdims=True)


def _window_bias(rpb: jax.Array, fpb: jax.Array | None, gates: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """Everything a step's windows add to their logits, float32: g·RPB + (1−g)·FPB (or RPB), −100 if masked.

    rpb, fpb: (heads, N, N); gates, mask: (windows, N, N) int8 → (windows, heads, N, N), or RPB alone.
    Gates and mask arrive precomputed as int8; forming them here from per-window id rows made the loop 3–4×
    slower (XLA:CPU re-evaluates the scan's dynamic slice for every element). The result ends in a `select`,
    which keeps it out of XLA:CPU's YNNPACK softmax fusion, where the same broadcasts cost 1.5 ms more per
    stage-1 window. (Unmasked GRPB windows select `g == 0 ? FPB : gated`, the same value either way.)
    """
    bias = rpb
    if fpb is not None:
        g = gates[:, None].astype(jnp.float32)
        bias = rpb * g + fpb * (1.0 - g)
        if mask is None:
            bias = jnp.where(gates[:, None] == 0, fpb, bias)
    if mask is not None:
        bias = jnp.where(mask[:, None] != 0, bias - 100.0, bias)
    return bias


def window_gates(frag_ids: np.ndarray) -> jax.Array:
    """GRPB gates, (nW, N, N) int8: the L1 distance of the two tokens' fragment ids (at most 12 here)."""
    ids = jnp.asarray(frag_ids)
    return (jnp.abs(ids[:, :, None, 0] - ids[:, None, :, 0]) + jnp.abs(ids[:, :, None, 1] - ids[:, None, :, 1])).astype(
        jnp.int8
    )


def window_mask(regions: np.ndarray) -> jax.Array:
    """Shift mask, (nW, N, N) int8: 1 where the two tokens lie in different shift regions."""
    r = jnp.asarray(regions)
    return (r[:, :, None] != r[:, None, :]).astype(jnp.int8)


class SwinBlock3D(nnx.Module):
    """Pre-norm (shifted-)window attention block followed by an MLP, both residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Triple,
        shift: Triple,
        mlp_ratio: float,
        frag_bias: bool,
        drop_path: float,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.window = window
        self.shift = shift
        self.norm1 = layer_norm(dim, 1e-5, dtype, rngs)
        self.attn = WindowAttention3D(dim, window, num_heads, frag_bias, dtype, rngs)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim, 1e-5, dtype, rngs)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden, dtype, rngs)

    def attention(self, x: jax.Array, window: Triple, six_d: bool, regions: np.ndarray) -> jax.Array:
        _, d, h, w, _ = x.shape
        win, shift = clamp_window((d, h, w), window, self.shift)
        x = self.norm1(x)
        pads = [_pad_to(s, ws) for s, ws in zip((d, h, w), win, strict=True)]
        if any(pads):
            x = jnp.pad(x, ((0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)))
        padded = (d + pads[0], h + pads[1], w + pads[2])
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = jnp.roll(x, shift=tuple(-s for s in shift), axis=(1, 2, 3))
        windows = window_partition(x, win)
        index = sliced_position_index(self.attn.window, win, six_d)
        gates = window_gates(fragment_ids(padded, win, shift))
        out = self.attn(windows, index, gates, window_mask(regions) if shifted else None)
        x = window_reverse(out, win, padded)
        if shifted:
            x = jnp.roll(x, shift=shift, axis=(1, 2, 3))
        return x[:, :d, :h, :w]

    def __call__(
        self, x: jax.Array, window: Triple, six_d: bool, regions: np.ndarray, rngs: nnx.Rngs | None
    ) -> jax.Array:
        x = x + self.drop_path(self.attention(x, window, six_d, regions), rngs)
        return x + self.drop_path(self.mlp(self.norm2(x)), rngs)


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, dtype: Dtype, rngs: nnx.Rngs):
        self.fc1 = dense(dim, hidden, dtype, rngs)
        self.fc2 = dense(hidden, dim, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


def window_partition(x: jax.Array, window: Triple) -> jax.Array:
    """(B, D, H, W, C) → (num_windows, B, N, C), windows major so that attention can scan over them."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    x = x.transpose(1, 3, 5, 0, 2, 4, 6, 7)
    return x.reshape(-1, b, wd * wh * ww, c)


def window_reverse(x: jax.Array, window: Triple, padded: Triple) -> jax.Array:
    """(num_windows, B, N, C) → (B, D, H, W, C); the inverse of `window_partition`."""
    _, b, _, c = x.shape
    wd, wh, ww = window
    d, h, w = padded
    x = x.reshape(d // wd, h // wh, w // ww, b, wd, wh, ww, c)
    x = x.transpose(3, 0, 4, 1, 5, 2, 6, 7)
    return x.reshape(b, d, h, w, c)


class PatchMerging(nnx.Module):
    """Halve H and W: concat the 2×2 neighbours in the official order, LayerNorm, Linear 4C→2C."""

    def __init__(self, dim: int, dtype: Dtype, rngs: nnx.Rngs):
        self.norm = layer_norm(4 * dim, 1e-5, dtype, rngs)
        self.reduction = dense(4 * dim, 2 * dim, dtype, rngs, use_bias=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        _, _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate(
            [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], axis=-1
        )
        return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
    """One stage (the official `BasicLayer`): blocks alternating plain and shifted windows, then merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: Triple,
        mlp_ratio: float,
        frag_bias: bool,
        drop_paths: list[float],
        downsample: bool,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.window = window
        self.shift: Triple = tuple(w // 2 for w in window)  # type: ignore[assignment]
        self.blocks = nnx.List(
            [
                SwinBlock3D(
                    dim,
                    num_heads,
                    window,
                    (0, 0, 0) if i % 2 == 0 else self.shift,
                    mlp_ratio,
                    frag_bias,
                    drop_paths[i],
                    dtype,
                    rngs,
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim, dtype, rngs) if downsample else None

    def __call__(self, x: jax.Array, window: Triple | None, six_d: bool, rngs: nnx.Rngs | None) -> jax.Array:
        _, d, h, w, _ = x.shape
        window = window or self.window
        win, shift = clamp_window((d, h, w), window, self.shift)
        padded = tuple(s + _pad_to(s, ws) for s, ws in zip((d, h, w), win, strict=True))
        regions = shift_regions(padded, win, shift)
        for blk in self.blocks:
            x = blk(x, window, six_d, regions, rngs)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed3D(nnx.Module):
    """Non-overlapping 3-D patches (zero-padded to multiples of the patch) → Linear embedding → LayerNorm."""

    def __init__(self, patch: Triple, dim: int, dtype: Dtype, rngs: nnx.Rngs):
        self.patch = patch
        self.proj = nnx.Conv(
            3,
            dim,
            kernel_size=patch,
            strides=patch,
            padding="VALID",
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.norm = layer_norm(dim, 1e-5, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        pads = [_pad_to(s, p) for s, p in zip(x.shape[1:4], self.patch, strict=True)]
        if any(pads):
            x = jnp.pad(x, ((0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)))
        return self.norm(self.proj(x))


class SwinTransformer3D(nnx.Module):
    """Swin3D backbone: (B, T, H, W, 3) normalised video → (B, T/2, H/32, W/32, 768) features."""

    def __init__(self, cfg: SwinConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.embed_dim, dtype, rngs)
        dpr = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        starts = np.cumsum((0, *cfg.depths)).tolist()
        self.layers = nnx.List(
            [
                SwinStage(
                    cfg.embed_dim * 2**i,
                    depth,
                    cfg.num_heads[i],
                    cfg.window_size,
                    cfg.mlp_ratio,
                    bool(cfg.frag_biases[i]),
                    dpr[starts[i] : starts[i + 1]],
                    i < len(cfg.depths) - 1,
                    dtype,
                    rngs,
                )
                for i, depth in enumerate(cfg.depths)
            ]
        )
        self.norm = layer_norm(cfg.num_features, 1e-5, dtype, rngs)

    def stage_outputs(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> list[jax.Array]:
        """Every stage's output (patch merging included, final LayerNorm not), as the official ``feats``."""
        cfg = self.cfg
        window = None
        if cfg.adaptive_window:
            window = adaptive_window(cfg.window_size, tuple(x.shape[1:4]), cfg.base_x_size)
        x = self.patch_embed(x)
        outs = []
        for layer in self.layers:
            x = layer(x, window, cfg.adaptive_window, rngs)
            outs.append(x)
        return outs

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.norm(self.stage_outputs(x, rngs)[-1])
