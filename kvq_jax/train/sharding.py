"""Device mesh and state sharding: data parallelism, optionally FSDP over a second mesh axis.

The mesh is always 2-D, ``("data", "fsdp")``. Batches are split over both axes (every device gets its own
rows), so ``fsdp=1`` is pure data parallelism and ``fsdp=N`` keeps the same global batch semantics while the
params, their EMA and the optimiser state are split N ways (ZeRO-3 style): GSPMD all-gathers a weight where a
layer needs it and reduce-scatters its gradient. Which leaves are split is chosen by regexes over their paths
(:func:`kvq_jax.train.optim.path_str`, so ``opt_state/.../technical_backbone/...`` matches a backbone rule);
each split leaf is cut along its largest dimension that the axis size divides (big_vision's ``fsdp`` rule).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kvq_jax.train.optim import path_str

BATCH_AXES = ("data", "fsdp")

PyTree = Any


def make_mesh(fsdp: int = 1) -> Mesh:
    """A (devices/fsdp, fsdp) mesh over every device of every process.

    Auto axes let GSPMD propagate shardings through the model's reshapes (`jax.make_mesh` defaults to
    Explicit axes, which demand per-op output shardings).
    """
    n = jax.device_count()
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"sharding.fsdp={fsdp} must be a positive divisor of the {n} devices")
    return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def fsdp_spec(shape: Sequence[int], size: int, min_size: int) -> P:
    """Split the largest dimension that `size` divides; replicate arrays under `min_size` elements (biases,
    norms: all-gathering them costs more latency than their memory is worth) and indivisible ones."""
    if size == 1 or math.prod(shape) < min_size:
        return P()
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[d] % size == 0:
            return P(*(["fsdp" if i == d else None for i in range(len(shape))]))
    return P()


def state_shardings(tree: PyTree, mesh: Mesh, rules: Sequence[str] = (".*",), min_size: int = 1 << 16) -> PyTree:
    """A `NamedSharding` per leaf of `tree` (arrays or `ShapeDtypeStruct` s): leaves whose path fully matches
    one of `rules` follow :func:`fsdp_spec`, all others are replicated."""
    compiled = [re.compile(r) for r in rules]
    size = mesh.shape["fsdp"]

    def one(path: Sequence[Any], leaf: Any) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        split = any(r.fullmatch(path_str(path)) for r in compiled)
        return NamedSharding(mesh, fsdp_spec(shape, size, min_size) if split else P())

    return jax.tree_util.tree_map_with_path(one, tree)
