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
    return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


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
