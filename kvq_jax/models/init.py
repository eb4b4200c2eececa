"""Fresh parameters for a model, in NumPy, following the official initialisation.

Building an NNX model eagerly runs one small compiled program per parameter shape (about a minute for
DOVER on 2 CPU cores); building it abstractly with `nnx.eval_shape` and filling the params here takes a
second. The rules are those of the official code:

* Linear / Conv weights and relative-position tables: timm's `trunc_normal_(std=0.02)`, whose ±2 bounds
  are absolute, so at std 0.02 it is a plain N(0, 0.02²);
* biases, GRN γ/β and the fragment bias tables (FPB; FAST-VQA's own training leaves them at zero): 0;
* LayerNorm scales: 1; ConvNeXt layer scale γ: 1e-6.
"""

from __future__ import annotations

import zlib

import numpy as np
from flax import nnx


def _init_value(path: tuple, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    leaf = str(path[-1])
    parent = str(path[-2]) if len(path) > 1 else ""
    if leaf in ("kernel", "relative_position_bias_table"):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    if leaf == "scale":
        return np.ones(shape, np.float32)
    if leaf == "gamma" and parent != "grn":
        return np.full(shape, 1e-6, np.float32)
    return np.zeros(shape, np.float32)  # biases, FPB tables, GRN gamma/beta


def init_params(abstract: nnx.State, seed: int) -> nnx.State:
    """Concrete float32 params for an abstract param State; each leaf's stream depends on (seed, path)."""
    filled = []
    for path, var in nnx.to_flat_state(abstract):
        key = zlib.crc32("/".join(map(str, path)).encode())
        rng = np.random.default_rng([seed, key])
        filled.append((path, var.replace(_init_value(path, tuple(var.shape), rng))))
    return nnx.from_flat_state(filled)
