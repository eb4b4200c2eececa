"""torchvision's ResNet-50 (Bottleneck v1.5: the stride on the 3×3 conv), channels-last, without `fc`.

The spatial backbone of the KVQ SimpleVQA baseline, whose repository carries its own copy of torchvision's
code; attribute names are torchvision's (``conv1``, ``bn1``, ``layer1.0.downsample.1``, …), so
``resnet50-19c8e357.pth`` and the KVQ trainer's checkpoints convert key for key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kvq_jax.models.common import BatchNorm, Dtype

RESNET50_DEPTHS = (3, 4, 6, 3)


def conv2d(cin: int, cout: int, k: int, stride: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """PyTorch's Conv2d(k, stride, padding=k // 2, bias=False)."""
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=(stride, stride),
        padding=[(k // 2, k // 2)] * 2,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def max_pool(x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...], padding: tuple[int, ...]) -> jax.Array:
    """PyTorch's MaxPoolNd over the axes between batch and channels (padding never wins: it is −inf)."""
    pads = ((0, 0), *((p, p) for p in padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), pads)


class Bottleneck(nnx.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4 channels), BatchNorm after each, ReLU after the first two and after the sum."""

    def __init__(self, cin: int, width: int, stride: int, dtype: Dtype, rngs: nnx.Rngs):
        self.conv1 = conv2d(cin, width, 1, 1, dtype, rngs)
        self.bn1 = BatchNorm(width, dtype=dtype, rngs=rngs)
        self.conv2 = conv2d(width, width, 3, stride, dtype, rngs)
        self.bn2 = BatchNorm(width, dtype=dtype, rngs=rngs)
        self.conv3 = conv2d(width, width * 4, 1, 1, dtype, rngs)
        self.bn3 = BatchNorm(width * 4, dtype=dtype, rngs=rngs)
        if stride != 1 or cin != width * 4:  # torchvision's `downsample` Sequential: strided 1×1 conv, BatchNorm
            self.downsample = nnx.List(
                [conv2d(cin, width * 4, 1, stride, dtype, rngs), BatchNorm(width * 4, dtype=dtype, rngs=rngs)]
            )
        else:
            self.downsample = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(y + shortcut)


class ResNet50(nnx.Module):
    """Images (N, H, W, 3) → the stem and the four layers' outputs (`features`)."""

    def __init__(self, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.conv1 = conv2d(3, 64, 7, 2, dtype, rngs)
        self.bn1 = BatchNorm(64, dtype=dtype, rngs=rngs)
        cin = 64
        for i, (depth, width) in enumerate(zip(RESNET50_DEPTHS, (64, 128, 256, 512), strict=True)):
            blocks = []
            for b in range(depth):
                blocks.append(Bottleneck(cin, width, 2 if b == 0 and i > 0 else 1, dtype, rngs))
                cin = width * 4
            setattr(self, f"layer{i + 1}", nnx.List(blocks))

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        """``stem`` (after the max-pool, 64 channels, stride 4), ``layer1`` … ``layer4`` (256 … 2048, stride 4 … 32)."""
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        out = {"stem": max_pool(x, (3, 3), (2, 2), (1, 1))}
        x = out["stem"]
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}"):
                x = block(x)
            out[f"layer{i}"] = x
        return out
