"""Fresh values for a model's variables, in NumPy: the one place where initialisation is decided.

Models are always built abstractly (`nnx.eval_shape`: structure only, about a second) and filled here, because
building an NNX model eagerly runs one small compiled program per parameter shape (about a minute for DOVER on
2 CPU cores) and one jitted initialiser takes 15–35 s to compile. So the modules declare shapes only (their
own initialisers never run), and these rules, by variable kind and leaf name, follow the official code:

* Linear / Conv kernels, relative-position tables and the packed attention projection of CLIP towers
  (``in_proj_weight``): timm's ``trunc_normal_(std=0.02)``, whose ±2 bounds are absolute, so at std 0.02 it is
  a plain N(0, 0.02²);
* CLIP's class and positional embeddings and output projection: N(0, 1) × width^-0.5, as OpenAI's
  `VisionTransformer` draws them (the width is the embeddings' last axis and the projection's first);
* LayerNorm / BatchNorm scales: 1; ConvNeXt layer scale γ: 1e-6;
* biases, GRN γ/β and the fragment bias tables (FPB; FAST-VQA's own training leaves them at zero): 0;
* BatchNorm statistics: running mean 0, running variance 1 (PyTorch's reset values);
* KSVQE's modulation mixing weights ``a1`` / ``a2``: 1 and 2, the values of its training yml.

Each leaf draws from its own stream, seeded by (seed, path), so adding a module never changes another's values.
"""

from __future__ import annotations

import zlib

import numpy as np
from flax import nnx

_NORMAL_LEAVES = ("kernel", "relative_position_bias_table", "in_proj_weight")
_CLIP_SCALED = {"class_embedding": -1, "positional_embedding": -1, "proj": 0}  # leaf → axis holding the width
_CONSTANT_LEAVES = {"a1": 1.0, "a2": 2.0}  # KSVQE (Kwai_KSVQE.yml)


def _init_value(path: tuple, var: nnx.Variable, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(var.shape)
    leaf = str(path[-1])
    parent = str(path[-2]) if len(path) > 1 else ""
    if isinstance(var, nnx.BatchStat):
        return np.ones(shape, np.float32) if leaf == "var" else np.zeros(shape, np.float32)
    if leaf in _CONSTANT_LEAVES:
        return np.full(shape, _CONSTANT_LEAVES[leaf], np.float32)
    if leaf in _NORMAL_LEAVES:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    if leaf in _CLIP_SCALED:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(shape[_CLIP_SCALED[leaf]] ** -0.5)
    if leaf == "scale":
        return np.ones(shape, np.float32)
    if leaf == "gamma" and parent != "grn":
        return np.full(shape, 1e-6, np.float32)
    return np.zeros(shape, np.float32)  # biases, FPB tables, GRN gamma/beta


def init_variables(abstract: nnx.State, seed: int) -> nnx.State:
    """Concrete float32 values for an abstract State (params and BatchNorm statistics alike)."""
    filled = []
    for path, var in nnx.to_flat_state(abstract):
        key = zlib.crc32("/".join(map(str, path)).encode())
        rng = np.random.default_rng([seed, key])
        filled.append((path, var.replace(_init_value(path, var, rng))))
    return nnx.from_flat_state(filled)
