"""The VQA regression head shared by DOVER, FAST-VQA and their relatives."""

from __future__ import annotations

import jax
from flax import nnx

from kvq_jax.models.common import Dtype, dense, gelu


class VQAHead(nnx.Module):
    """Per-position MLP: dropout → Linear C→hidden → GELU → dropout → Linear hidden→1.

    The official head is two 1×1×1 Conv3d layers on a channels-first map; on a channels-last map that is two
    Dense layers, so it outputs a score *map* (B, T', H', W') rather than a pooled score.
    """

    def __init__(self, in_channels: int, hidden: int, dropout: float, dtype: Dtype, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(dropout)
        self.fc_hid = dense(in_channels, hidden, dtype, rngs)
        self.fc_last = dense(hidden, 1, dtype, rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.dropout(x, rngs=rngs)
        return self.fc_last(self.dropout(gelu(self.fc_hid(x)), rngs=rngs))[..., 0]
