"""Layers shared by every backbone: the exact numerics the official PyTorch models use.

PyTorch's defaults differ from Flax's in three places that matter for parity: GELU is exact (erf) rather
than tanh-approximated, LayerNorm variance is E[(x-μ)²] rather than E[x²]-μ², and the epsilons differ
by family (1e-5 Swin, 1e-6 ConvNeXt). Everything here is channels-last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype | type


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch.nn.GELU() computes it.

    The final `where` (NaN in, NaN out: the same value as without it) keeps the whole GELU in one XLA loop
    fusion. Without it XLA:CPU's YNNPACK rewriter pulls the trailing multiplies into the next Linear's fusion
    and, because the constant 0.5 is shared by every GELU of that shape, materialises it as a full-size array
    that every block then reads (77 MB per ConvNeXt stage-1 GELU).
    """
    return jnp.where(jnp.isnan(x), x, jax.nn.gelu(x, approximate=False))


def layer_norm(dim: int, eps: float, dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis with PyTorch's two-pass variance (float32 params)."""
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs)


def dense(din: int, dout: int, dtype: Dtype, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    """A Linear layer with float32 params and `dtype` compute (values: `models/init.py`)."""
    return nnx.Linear(
        din, dout, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, dot_general=linear_dot, rngs=rngs
    )


def linear_dot(x: jax.Array, kernel: jax.Array, dimension_numbers, precision=None, **kwargs) -> jax.Array:
    """`nnx.Linear`'s product x (..., in) · kernel (in, out); on XLA:CPU with the backward of `_cpu_matmul`."""
    if jax.default_backend() != "cpu" or precision is not None or kwargs.get("out_sharding") is not None:
        return jax.lax.dot_general(x, kernel, dimension_numbers, precision=precision, **kwargs)
    if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())) or kernel.ndim != 2:
        raise ValueError(f"linear_dot computes x · kernel over x's last axis, got {dimension_numbers}")
    return _cpu_matmul(x, kernel)


@jax.custom_vjp
def _cpu_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (..., in) · kernel (in, out), with its two gradient products written out: g · kernelᵀ and Σ_rows xᵀ·g.

    Under autodiff XLA:CPU computed xᵀ·g from transposed copies of both activations, and fused the element-wise
    backward of everything that produced g (LayerNorms, residual adds, drop-path masks of a whole Swin stage) into
    the copy of g, re-evaluating it once per consumer: 40–100 ms per stage-3 layer of DOVER's train step; the DOVER
    step is 7% slower that way (paired rounds, `data/bench/train_steps_xeon.json`). Summing xᵀ·g over cache-sized
    row chunks instead of one product was 6% slower still: XLA:CPU's products with a transposed left operand
    are slow, and shorter ones more so.
    """
    return jnp.matmul(x, kernel)


def _cpu_matmul_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return jnp.matmul(x, kernel), (x, kernel)


def _cpu_matmul_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    dx = jnp.matmul(g, kernel.T).astype(x.dtype)
    xs, gs = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dk = jnp.einsum("ri,ro->io", xs, gs, preferred_element_type=jnp.float32)
    return dx, dk.astype(kernel.dtype)


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of `n` not above `at_most` (1 at least): how many windows or channels of `n` go into
    one step of a loop that must cut them evenly. Counts down from `at_most`, so that a large `n` costs no more at
    trace time than a small one."""
    return next(d for d in range(max(1, min(n, at_most)), 0, -1) if n % d == 0)


class DropPath(nnx.Module):
    """Stochastic depth: drops whole samples of a residual branch during training (timm's DropPath).

    Like every dropout in kvq_jax it owns no RNG state: random keys come in with the call, so a model's
    state is its params alone (cheap to build abstractly, to shard and to checkpoint).
    """

    def __init__(self, rate: float):
        # One Bernoulli draw per sample of a (B, T, H, W, C) tensor.
        self.rate = rate
        self.drop = nnx.Dropout(rate, broadcast_dims=(1, 2, 3, 4)) if rate > 0 else None

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        if self.drop is None:
            return x
        return self.drop(x, rngs=rngs)


class BatchNorm(nnx.BatchNorm):
    """BatchNorm over the last axis with PyTorch's semantics: the ResNet, SlowFast and EfficientNet-Lite layers.

    Why not `nnx.BatchNorm` as it is: in train mode PyTorch normalises with the biased batch variance but updates
    ``running_var`` with the *unbiased* one (× n / (n − 1)), and its momentum weighs the new batch
    (``running ← (1 − momentum)·running + momentum·batch``); flax uses the biased variance for both. Statistics
    are float32 whatever the compute dtype. Eval mode (``model.eval()``) uses the running statistics.

    The batch statistics are means over every axis but the last of the array the call sees. Under `jax.jit` with a
    global batch sharded over devices that array is the *global* batch, so normalisation and running statistics
    are synchronised over all devices (PyTorch's SyncBatchNorm, not DistributedDataParallel's per-device
    statistics).
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, momentum: float = 0.1, dtype: Dtype, rngs: nnx.Rngs):
        super().__init__(
            dim,
            momentum=1.0 - momentum,
            epsilon=eps,
            dtype=dtype,
            param_dtype=jnp.float32,
            use_fast_variance=False,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        eval_mode = self.use_running_average if use_running_average is None else use_running_average
        if eval_mode:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            n = x.size // x.shape[-1]
            m = 1.0 - self.momentum  # PyTorch's momentum
            unbiased = var * (n / max(n - 1, 1))
            self.mean[...] = jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
            self.var[...] = jax.lax.stop_gradient((1 - m) * self.var[...] + m * unbiased)
        inv = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
        shift = self.bias[...] - mean * inv
        return (x.astype(jnp.float32) * inv + shift).astype(self.dtype or x.dtype)
