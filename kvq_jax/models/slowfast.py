"""SlowFast-R50 (pytorchvideo's ``slowfast_r50``, Kinetics-400), channels-last: SimpleVQA's motion features.

What the KVQ repo's ``SlowFast_features.slowfast`` runs: ``blocks[0..4]`` of ``create_slowfast`` (kept under its
``feature_extraction`` name, so pytorchvideo's ``blocks.N`` keys convert by renaming the prefix), then the head's
two average pools. One clip is 32 frames (the fast path); the slow path takes frames ``linspace(0, 31, 8)``
truncated, i.e. 0, 4, 8, 13, 17, 22, 26, 31.

* stem per path: conv (1,7,7) slow / (5,7,7) fast, stride (1,2,2), padding kernel // 2, BatchNorm, ReLU,
  max-pool (1,3,3) stride (1,2,2) padding (0,1,1); 64 slow / 8 fast channels;
* four stages of bottleneck blocks (3, 4, 6, 3): conv_a (kt,1,1) with kt = 1, 1, 3, 3 on the slow path and 3 on
  the fast path (temporal padding kt // 2), conv_b (1,3,3) with the stage's spatial stride (1, 2, 2, 2), conv_c
  1×1×1, BatchNorm after each, ReLU after a, b and the residual sum; a ``branch1`` 1×1×1 conv + BatchNorm on the
  shortcut when the channels or the stride change;
* fast→slow fusion after the stem and stages 1–3 (Identity after stage 4): conv (7,1,1) stride (4,1,1) padding
  (3,0,0), BatchNorm, ReLU, concatenated behind the slow channels;
* pools: AvgPool3d (8,7,7) slow / (32,7,7) fast, stride 1, then the mean: at 224² they cover the whole map, so the
  features are the global means, 2048 slow + 256 fast. At other sizes a window larger than the map is cut to it
  (where PyTorch raises).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvq_jax.models.common import BatchNorm, Dtype
from kvq_jax.models.resnet import max_pool

ALPHA = 4  # fast frames per slow frame
DEPTHS = (3, 4, 6, 3)
SLOW_CONV_A_KT = (1, 1, 3, 3)
FAST_CONV_A_KT = 3
HEAD_POOL = ((8, 7, 7), (32, 7, 7))


def slow_frame_index(frames: int) -> np.ndarray:
    """``torch.linspace(0, frames − 1, frames // 4).long()``: the slow path's frames of a clip."""
    return np.floor(np.linspace(0, frames - 1, frames // ALPHA)).astype(np.int64)


def conv3d(cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], dtype: Dtype, rngs: nnx.Rngs):
    """PyTorch's Conv3d(kernel, stride, padding=kernel // 2, bias=False)."""
    return nnx.Conv(
        cin,
        cout,
        tuple(kernel),
        strides=tuple(stride),
        padding=[(k // 2, k // 2) for k in kernel],
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class ResBasicStem(nnx.Module):
    def __init__(self, cout: int, kt: int, dtype: Dtype, rngs: nnx.Rngs):
        self.conv = conv3d(3, cout, (kt, 7, 7), (1, 2, 2), dtype, rngs)
        self.norm = BatchNorm(cout, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(jax.nn.relu(self.norm(self.conv(x))), (1, 3, 3), (1, 2, 2), (0, 1, 1))


class BottleneckBlock(nnx.Module):
    def __init__(self, cin: int, inner: int, cout: int, kt: int, stride: int, dtype: Dtype, rngs: nnx.Rngs):
        self.conv_a = conv3d(cin, inner, (kt, 1, 1), (1, 1, 1), dtype, rngs)
        self.norm_a = BatchNorm(inner, dtype=dtype, rngs=rngs)
        self.conv_b = conv3d(inner, inner, (1, 3, 3), (1, stride, stride), dtype, rngs)
        self.norm_b = BatchNorm(inner, dtype=dtype, rngs=rngs)
        self.conv_c = conv3d(inner, cout, (1, 1, 1), (1, 1, 1), dtype, rngs)
        self.norm_c = BatchNorm(cout, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.norm_a(self.conv_a(x)))
        x = jax.nn.relu(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nnx.Module):
    def __init__(self, cin: int, inner: int, cout: int, kt: int, stride: int, dtype: Dtype, rngs: nnx.Rngs):
        if cin != cout or stride != 1:
            self.branch1_conv = conv3d(cin, cout, (1, 1, 1), (1, stride, stride), dtype, rngs)
            self.branch1_norm = BatchNorm(cout, dtype=dtype, rngs=rngs)
        else:
            self.branch1_conv = self.branch1_norm = None
        self.branch2 = BottleneckBlock(cin, inner, cout, kt, stride, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return jax.nn.relu(shortcut + self.branch2(x))


class ResStage(nnx.Module):
    def __init__(self, depth: int, cin: int, inner: int, cout: int, kt: int, stride: int, dtype, rngs):
        rest = [ResBlock(cout, inner, cout, kt, 1, dtype, rngs) for _ in range(depth - 1)]
        self.res_blocks = nnx.List([ResBlock(cin, inner, cout, kt, stride, dtype, rngs), *rest])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.res_blocks:
            x = block(x)
        return x


class FuseFastToSlow(nnx.Module):
    def __init__(self, fast: int, dtype: Dtype, rngs: nnx.Rngs):
        self.conv_fast_to_slow = nnx.Conv(
            fast,
            2 * fast,
            (7, 1, 1),
            strides=(ALPHA, 1, 1),
            padding=[(3, 3), (0, 0), (0, 0)],
            use_bias=False,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.norm = BatchNorm(2 * fast, dtype=dtype, rngs=rngs)

    def __call__(self, slow: jax.Array, fast: jax.Array) -> jax.Array:
        return jnp.concatenate([slow, jax.nn.relu(self.norm(self.conv_fast_to_slow(fast)))], axis=-1)


class MultiPathWayWithFuse(nnx.Module):
    def __init__(self, blocks: list[nnx.Module], fusion: FuseFastToSlow | None):
        self.multipathway_blocks = nnx.List(blocks)
        self.multipathway_fusion = fusion

    def __call__(self, slow: jax.Array, fast: jax.Array) -> tuple[jax.Array, jax.Array]:
        slow, fast = self.multipathway_blocks[0](slow), self.multipathway_blocks[1](fast)
        if self.multipathway_fusion is not None:
            slow = self.multipathway_fusion(slow, fast)
        return slow, fast


class SlowFastR50(nnx.Module):
    """Clips (N, 32, H, W, 3), normalised → per-stage (slow, fast) maps and the pooled 2048 + 256 features."""

    def __init__(self, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        stages = [
            MultiPathWayWithFuse(
                [ResBasicStem(64, 1, dtype, rngs), ResBasicStem(8, 5, dtype, rngs)], FuseFastToSlow(8, dtype, rngs)
            )
        ]
        dim_in, dim_out = 64, 256
        for i, depth in enumerate(DEPTHS):
            stride = 1 if i == 0 else 2
            slow = ResStage(depth, dim_in + dim_in // 4, dim_out // 4, dim_out, SLOW_CONV_A_KT[i], stride, dtype, rngs)
            fast = ResStage(depth, dim_in // 8, dim_out // 32, dim_out // 8, FAST_CONV_A_KT, stride, dtype, rngs)
            fusion = FuseFastToSlow(dim_out // 8, dtype, rngs) if i < len(DEPTHS) - 1 else None
            stages.append(MultiPathWayWithFuse([slow, fast], fusion))
            dim_in, dim_out = dim_out, dim_out * 2
        self.feature_extraction = nnx.List(stages)

    def stages(self, clips: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """The (slow, fast) output of the stem and each stage, fusion included: (N, T', H', W', C) each."""
        slow, fast = clips[:, slow_frame_index(clips.shape[1])], clips
        out = []
        for stage in self.feature_extraction:
            slow, fast = stage(slow, fast)
            out.append((slow, fast))
        return out

    @staticmethod
    def pool(slow: jax.Array, fast: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The head's AvgPool3d per path, then the mean over its windows: (N, 2048), (N, 256)."""
        return tuple(_window_means(x, k).mean(axis=(1, 2, 3)) for x, k in zip((slow, fast), HEAD_POOL, strict=True))

    def __call__(self, clips: jax.Array) -> jax.Array:
        """The extractor's features of each clip, slow then fast: (N, 2304)."""
        return jnp.concatenate(self.pool(*self.stages(clips)[-1]), axis=-1)


def _window_means(x: jax.Array, kernel: Sequence[int]) -> jax.Array:
    """AvgPool3d(kernel, stride 1, no padding) over (T, H, W) of (N, T, H, W, C); windows cut to the map."""
    window = (1, *(min(k, n) for k, n in zip(kernel, x.shape[1:4], strict=True)), 1)
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * 5, "VALID")
    return sums / float(np.prod(window))
