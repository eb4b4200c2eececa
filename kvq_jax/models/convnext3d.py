"""Inflated 3-D ConvNeXt (DOVER's aesthetic branch) and ConvNeXt-V2 (DOVER-Mobile's two branches).

As the official `conv_backbone.py`: a (2,4,4) stem, (1,2,2) downsamplers (T is only halved once), blocks with
a depthwise (k,7,7) convolution whose temporal extent follows the inflation pattern "131" over the block index,
LayerNorms with eps 1e-6 (the channels-first ones in the stem/downsamplers are plain channel LayerNorms in our
channels-last layout), layer scale `gamma` (V1) or GRN (V2), and a final LayerNorm on the spatial feature map.

The same module is timm's 2-D ConvNeXt on frames (Zoom-VQA's CPNet): clips of one frame, a (1,4,4) stem
(``stem_t=1``), every block's kernel of depth 1 (``inflate="1"``), no final LayerNorm (``final_norm=False``, timm's
``features_only``) and the four stage maps read with :meth:`ConvNeXt3D.stage_outputs`.

GRN quirk kept on purpose: the official V2 block takes the L2 norm over dims (1, 2) of a (N, T, H, W, C)
tensor, i.e. over **T and H**, not H and W.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvq_jax.models.common import DropPath, Dtype, dense, gelu, largest_divisor, layer_norm


@dataclasses.dataclass(frozen=True)
class ConvNeXtConfig:
    """Defaults: ConvNeXt3D-T (`conv_tiny`); `convnext_femto()` gives the V2 femto of DOVER-Mobile."""

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    inflate: str = "131"
    version: int = 1  # 1: layer scale; 2: GRN
    drop_path_rate: float = 0.0
    # ConvNeXt-V2 carries an (unused) ImageNet classifier; kept so official checkpoints load strictly.
    num_classes: int = 0
    stem_t: int = 2  # the stem's temporal patch (1: frames, the 2-D network)
    final_norm: bool = True

    @property
    def num_features(self) -> int:
        return self.dims[-1]


def convnext_tiny() -> ConvNeXtConfig:
    return ConvNeXtConfig()


def convnext_femto() -> ConvNeXtConfig:
    return ConvNeXtConfig(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), version=2, num_classes=1000)


def conv3d(cin: int, cout: int, kernel, strides, padding, dtype: Dtype, rngs: nnx.Rngs):
    return nnx.Conv(
        cin,
        cout,
        kernel_size=kernel,
        strides=strides,
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def _spatial_taps(frames: jax.Array, kernel2d: jax.Array, h: int, w: int) -> jax.Array:
    """Σ over the (kh, kw) taps of (B, T, h + kh − 1, w + kw − 1, C) frames, shifted, × per-channel weights."""
    kh, kw = kernel2d.shape[:2]
    acc = None
    for b in range(kh):
        rows = frames[:, :, b : b + h]
        for c in range(kw):
            term = rows[:, :, :, c : c + w] * kernel2d[b, c]
            acc = term if acc is None else acc + term
    return acc


def _depthwise_same(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """The forward sum: x (B, T, H, W, C), kernel (k, kh, kw, C), bias (C,), all of one dtype.

    The taps are summed inside `lax.scan` bodies, for two measured reasons (2 cores, CPU time):
    * XLA fuses a fully unrolled sum into one loop whose generated code falls off a cliff past ~100 taps
      (147 taps on 16×56×56×96: 0.84 s; three 49-tap scan steps, one per temporal tap: 0.12 s).
    * Outside a loop body, XLA:CPU's YNNPACK rewriter pulls the multiply-adds into the fusion of the
      following LayerNorm + Linear and materialises every shifted slice and every broadcast weight as a
      full-size array (49-tap conv: 25 ms alone, 0.25 s in the block). With k == 1 the scan instead runs
      over two halves of the B·T frames, which are independent.
    """
    k, kh, kw = kernel.shape[:3]
    n, t, h, w, c = x.shape
    pad_hw = ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
    if k == 1:
        chunks = 2 if (n * t) % 2 == 0 else 1

        def chunk(_: None, frames: jax.Array) -> tuple[None, jax.Array]:
            frames = jnp.pad(frames, ((0, 0), (0, 0), *pad_hw))
            return None, _spatial_taps(frames, kernel[0], h, w) + bias

        _, out = jax.lax.scan(chunk, None, x.reshape(chunks, n * t // chunks, 1, h, w, c))
        return out.reshape(n, t, h, w, c)

    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), *pad_hw))

    def step(acc: jax.Array, tap: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        a, kernel2d = tap
        return acc + _spatial_taps(jax.lax.dynamic_slice_in_dim(xp, a, t, axis=1), kernel2d, h, w), None

    acc, _ = jax.lax.scan(step, jnp.broadcast_to(bias, x.shape), (jnp.arange(k), kernel))
    return acc


def _depthwise_kernel_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, int, int]) -> jax.Array:
    """∂/∂kernel of the 'same' depthwise conv: (k, kh, kw, C) = Σ_p x_padded[p + tap] · g[p] per channel.

    XLA:CPU has no fast path for these 147 per-channel reductions (written as reduces: 2.4 s on 16×56×56×96;
    as the grouped conv's own gradient: 7.5 s), so they run as matrix products, which it does well (see
    `_kernel_grad_chunk`). The channels are independent, so they go through a `lax.map` a few at a time, laid out
    channel-major once: a chunk's copies then stay in cache, where copies of the whole tensor went through memory.
    """
    c = x.shape[-1]
    k, kh, kw = kernel_shape
    n, t, h, w = x.shape[:4]
    (sh, nbh), (sw, nbw) = _blocks(h), _blocks(w)
    per_channel = 4 * (sh + kh - 1) * (sw + kw - 1) * (t + k - 1) * nbh * nbw * n  # bytes of its blocked copy
    chunk = largest_divisor(c, _CHUNK_BYTES // per_channel)
    xs, gs = (a.transpose(4, 0, 1, 2, 3).reshape(c // chunk, chunk, n, t, h, w) for a in (x, g))
    out = jax.lax.map(lambda xg: _kernel_grad_chunk(*xg, kernel_shape), (xs, gs))  # (chunks, k, kh, kw, chunk)
    return out.transpose(1, 2, 3, 0, 4).reshape(*kernel_shape, c)


_CHUNK_BYTES = 1 << 20
_BLOCK = 8  # outputs per spatial block side


def _blocks(size: int) -> tuple[int, int]:
    """(block side, block count) along one spatial axis."""
    side = min(_BLOCK, size)
    return side, -(-size // side)


def _kernel_grad_chunk(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, int, int]) -> jax.Array:
    """The kernel gradient of channel-major x, g (C, B, T, H, W) → (k, kh, kw, C), as matrix products.

    H and W are cut into blocks of up to 8 × 8 outputs. Per block, the (8 + kh − 1)(8 + kw − 1) padded inputs
    times the 8 · 8 output gradients, contracted over batch, T and the blocks, hold every spatial tap as a
    diagonal; so a temporal tap is one product and one shift of the blocked input along T (the earlier
    one-product-per-(T, H)-tap form copied the input 21 times per 3×7×7 kernel; T=8, batch 2: stage 1
    128 → 101 ms, stage 3 67 → 27 ms).
    The products do (8 + kh − 1)(8 + kw − 1)/(kh·kw) = 4× the minimal arithmetic.
    """
    k, kh, kw = kernel_shape
    c, n, t, h, w = x.shape
    (sh, nbh), (sw, nbw) = _blocks(h), _blocks(w)
    uh, uw = sh + kh - 1, sw + kw - 1
    pad_h, pad_w = (kh // 2, kh // 2 + nbh * sh - h), (kw // 2, kw // 2 + nbw * sw - w)
    xp = jnp.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), pad_h, pad_w))
    xb = jnp.stack([xp[:, :, :, i * sh : i * sh + uh] for i in range(nbh)], axis=3)  # (C, B, T', nbh, uh, Wp)
    xb = jnp.stack([xb[..., j * sw : j * sw + uw] for j in range(nbw)], axis=5)  # (C, B, T', nbh, uh, nbw, uw)
    xb = xb.transpose(0, 4, 6, 2, 3, 5, 1).reshape(c, uh * uw, t + k - 1, nbh * nbw * n)
    gb = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, nbh * sh - h), (0, nbw * sw - w)))
    gb = gb.reshape(c, n, t, nbh, sh, nbw, sw).transpose(0, 4, 6, 2, 3, 5, 1).reshape(c, sh * sw, t, nbh * nbw * n)
    # The product's (input row, output column) pair of tap (b, cw) for output (vh, vw).
    vh, vw = np.meshgrid(np.arange(sh), np.arange(sw), indexing="ij")
    tb, tw = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    rows = (vh + tb[..., None, None]) * uw + vw + tw[..., None, None]  # (kh, kw, sh, sw)
    cols = np.broadcast_to(vh * sw + vw, rows.shape)
    taps = []
    for a in range(k):
        m = jnp.einsum("cutq,cvtq->cuv", xb[:, :, a : a + t], gb, preferred_element_type=jnp.float32)
        taps.append(m[:, rows, cols].sum(axis=(3, 4)))  # (C, kh, kw)
    return jnp.stack(taps).transpose(0, 2, 3, 1)


@jax.custom_vjp
def depthwise_conv3d(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """'Same' depthwise 3-D convolution, (B, T, H, W, C) with a (k, kh, kw, 1, C) kernel of odd sizes.

    Written as a sum of shifted, per-channel-scaled copies because XLA:CPU lowers grouped convolutions
    with feature_group_count=C to a generic loop that is 30–40× slower (23.5 s vs 0.75 s for one (3,7,7)
    conv on 16×56×56×96). Same arithmetic, so outputs agree with a grouped conv to float rounding.
    The gradient is written by hand (JAX's own transpose of the shifted slices is a sum of 147 pads that
    took 2–3 s per conv): ∂x is the same convolution of the cotangent with the flipped kernel, ∂kernel
    comes from `_depthwise_kernel_grad`.
    """
    return _depthwise_fwd(x, kernel, bias)[0]


def _depthwise_fwd(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array, tuple]:
    if any(s % 2 == 0 for s in kernel.shape[:3]):
        raise ValueError(f"depthwise_conv3d needs odd kernel sizes for 'same' padding, got {kernel.shape[:3]}")
    out = _depthwise_same(x, kernel[:, :, :, 0, :].astype(x.dtype), bias.astype(x.dtype))
    return out, (x, kernel, bias)


def _depthwise_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, kernel, bias = res
    taps = kernel[:, :, :, 0, :].astype(g.dtype)
    dx = _depthwise_same(g, taps[::-1, ::-1, ::-1], jnp.zeros((), g.dtype))
    dk = _depthwise_kernel_grad(x, g, kernel.shape[:3])[:, :, :, None, :]
    db = g.astype(jnp.float32).sum(axis=(0, 1, 2, 3))
    return dx, dk.astype(kernel.dtype), db.astype(bias.dtype)


depthwise_conv3d.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv3D(nnx.Module):
    """Depthwise Conv3d with PyTorch's 'same' padding (k//2, 3, 3); params named like nnx.Conv's."""

    def __init__(self, dim: int, kernel: tuple[int, int, int], dtype: Dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jnp.zeros((*kernel, 1, dim), jnp.float32))  # values: models/init.py
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return depthwise_conv3d(x.astype(self.dtype), self.kernel[...], self.bias[...])


class GRN(nnx.Module):
    """Global response normalisation with the official (T, H) reduction axes."""

    def __init__(self, dim: int):
        self.gamma = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        g = jnp.sqrt(jnp.sum(xf * xf, axis=(1, 2), keepdims=True))
        n = g / (jnp.mean(g, axis=-1, keepdims=True) + 1e-6)
        return (self.gamma[...] * (xf * n) + self.beta[...] + xf).astype(x.dtype)


class Block(nnx.Module):
    """dwconv (k,7,7) → LN → Linear 4× → GELU → [GRN] → Linear → [layer scale] → residual."""

    def __init__(self, dim: int, k: int, version: int, drop_path: float, dtype: Dtype, rngs: nnx.Rngs):
        self.dwconv = DepthwiseConv3D(dim, (k, 7, 7), dtype, rngs)
        self.norm = layer_norm(dim, 1e-6, dtype, rngs)
        self.pwconv1 = dense(dim, 4 * dim, dtype, rngs)
        self.grn = GRN(4 * dim) if version == 2 else None
        self.pwconv2 = dense(4 * dim, dim, dtype, rngs)
        self.gamma = nnx.Param(jnp.zeros((dim,), jnp.float32)) if version == 1 else None  # layer scale
        self.drop_path = DropPath(drop_path)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = gelu(self.pwconv1(self.norm(self.dwconv(x))))
        if self.grn is not None:
            y = self.grn(y)
        y = self.pwconv2(y)
        if self.gamma is not None:
            y = self.gamma[...].astype(y.dtype) * y
        return x + self.drop_path(y, rngs)


class ConvNeXt3D(nnx.Module):
    """(B, T, H, W, 3) normalised video → (B, T/2, H/32, W/32, C) features (final LayerNorm applied)."""

    def __init__(self, cfg: ConvNeXtConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        dims = cfg.dims
        stem = nnx.List(
            [
                conv3d(3, dims[0], (cfg.stem_t, 4, 4), (cfg.stem_t, 4, 4), "VALID", dtype, rngs),
                layer_norm(dims[0], 1e-6, dtype, rngs),
            ]
        )
        downs = [
            nnx.List(
                [
                    layer_norm(dims[i], 1e-6, dtype, rngs),
                    conv3d(dims[i], dims[i + 1], (1, 2, 2), (1, 2, 2), "VALID", dtype, rngs),
                ]
            )
            for i in range(len(dims) - 1)
        ]
        self.downsample_layers = nnx.List([stem, *downs])
        dpr = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        starts = np.cumsum((0, *cfg.depths)).tolist()
        self.stages = nnx.List(
            [
                nnx.List(
                    [
                        Block(
                            dims[i],
                            int(cfg.inflate[j % len(cfg.inflate)]),
                            cfg.version,
                            dpr[starts[i] + j],
                            dtype,
                            rngs,
                        )
                        for j in range(depth)
                    ]
                )
                for i, depth in enumerate(cfg.depths)
            ]
        )
        self.norm = layer_norm(dims[-1], 1e-6, dtype, rngs) if cfg.final_norm else None
        self.head = dense(dims[-1], cfg.num_classes, dtype, rngs) if cfg.num_classes else None

    def stage_outputs(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> list[jax.Array]:
        """Every stage's output map (B, T', H/4·2⁻ⁱ, W/4·2⁻ⁱ, Cᵢ), before any final LayerNorm."""
        outs = []
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            for layer in down:
                x = layer(x)
            for block in stage:
                x = block(x, rngs)
            outs.append(x)
        return outs

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.stage_outputs(x, rngs)[-1]
        return self.norm(x) if self.norm is not None else x
