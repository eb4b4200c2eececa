"""Official PyTorch `state_dict` ↔ kvq_jax model variables, strictly.

Module attribute names mirror the official ones, so the mapping is mechanical: the Flax path
`technical_backbone/layers/0/blocks/1/attn/qkv/kernel` is the PyTorch key
`technical_backbone.layers.0.blocks.1.attn.qkv.weight`. Only the leaf name and the array layout change:

* Linear weight (out, in) → kernel (in, out); a 1×1×1 Conv3d used as a head (O, I, 1, 1, 1) → Dense kernel (I, O)
* ConvNd weight (O, I, *k) → kernel (*k, I, O); depthwise convs have I = 1 in both
* LayerNorm / BatchNorm weight → scale; BatchNorm running_mean / running_var → the `mean` / `var` statistics
* GRN gamma/beta (1, 1, 1, C) → (C,)

A family whose checkpoints use other keys gives its spec a `checkpoint_filter`, applied before this mapping.
Integer buffers (`relative_position_index`, `num_batches_tracked`) are not weights: we recompute the first and,
where a checkpoint has it, require equality, so a checkpoint built for other window sizes cannot load silently.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """A checkpoint does not match the model; the message lists every offending key."""


def _torch_key(path: tuple) -> str:
    *parents, leaf = (str(p) for p in path)
    return ".".join([*parents, _LEAF_TO_TORCH.get(leaf, leaf)])


def _to_flax(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Convert one PyTorch array to the Flax layout of `shape`; None if the shapes are incompatible."""
    if name == "kernel" and value.ndim == 2 and len(shape) == 2:
        out = value.T
    elif name == "kernel" and value.ndim > 2 and len(shape) == 2:  # 1×…×1 conv used as a Dense head
        out = value.reshape(value.shape[0], -1).T if all(k == 1 for k in value.shape[2:]) else None
    elif name == "kernel" and value.ndim > 2:
        out = np.moveaxis(value, (0, 1), (-1, -2))
    elif value.shape != shape and value.size == int(np.prod(shape)) and value.squeeze().shape == shape:
        out = value.reshape(shape)  # GRN (1, 1, 1, C) → (C,)
    else:
        out = value
    if out is None or tuple(out.shape) != tuple(shape):
        return None
    return out


def _is_head_conv(path: tuple) -> bool:
    """The official VQAHead's layers (`fc_hid`, `fc_last`) are 1×1×1 Conv3d layers that we hold as Dense."""
    return len(path) > 1 and str(path[-2]) in ("fc_hid", "fc_last")


def _expected_torch_shape(name: str, shape: tuple[int, ...], is_head_conv: bool) -> tuple[int, ...]:
    if name == "kernel" and len(shape) == 2:
        return (shape[1], shape[0], 1, 1, 1) if is_head_conv else (shape[1], shape[0])
    if name == "kernel" and len(shape) > 2:
        return (shape[-1], shape[-2], *shape[:-2])
    return shape


def index_buffers(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every integer buffer the official model registers (modules that define `torch_buffers`), recomputed."""
    out = {}
    for path, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Module) and hasattr(module, "torch_buffers"):
            prefix = ".".join(str(p) for p in path)
            out.update({f"{prefix}.{k}": v for k, v in module.torch_buffers().items()})
    return out


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], model: nnx.Module, *, allow_missing: bool = False
) -> nnx.State:
    """Map an official state_dict onto `model`'s variables (abstract or concrete) and return the filled State.

    The model's spec `checkpoint_filter` (if any) runs first; `model` may also be a layer module without a spec.
    Strict: every checkpoint key must be used, every variable filled, every shape right; index buffers present in
    the checkpoint must equal the recomputed ones. Raises ConversionError listing all problems at once.
    ``allow_missing`` (pretrained backbone files, which hold no head): variables the checkpoint lacks are left
    out of the returned State instead of being an error; everything else stays strict.
    """
    spec = getattr(model, "spec", None)  # a layer module (e.g. an ImageNet backbone) has none, hence no filter
    if spec is not None and spec.checkpoint_filter is not None:
        state_dict = spec.checkpoint_filter(dict(state_dict))
    flat = nnx.to_flat_state(nnx.state(model))
    buffers = index_buffers(model)
    remaining = dict(state_dict)
    missing, misshaped, bad_buffers = [], [], []
    filled = []
    for path, var in flat:
        key = _torch_key(path)
        shape = tuple(var.shape)
        if key not in remaining:
            if not allow_missing:
                missing.append(key)
            continue
        value = np.asarray(remaining.pop(key))
        out = _to_flax(str(path[-1]), value, shape)
        if out is None:
            want = _expected_torch_shape(str(path[-1]), shape, _is_head_conv(path))
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)}, model expects {want}")
            continue
        filled.append((path, var.replace(np.asarray(out, dtype=var.dtype))))
        if isinstance(var, nnx.BatchStat) and str(path[-1]) == "mean":
            remaining.pop(key.removesuffix("running_mean") + "num_batches_tracked", None)
    for key, ref in buffers.items():
        if key in remaining:
            got = np.asarray(remaining.pop(key))
            if got.shape != ref.shape or not np.array_equal(got, ref):
                bad_buffers.append(f"{key}: checkpoint {got.shape} differs from the recomputed {ref.shape}")
    unexpected = sorted(remaining)
    problems = []
    for title, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("mis-shaped keys", misshaped),
        ("index buffers that differ", bad_buffers),
    ):
        if keys:
            problems.append(f"{len(keys)} {title}:\n  " + "\n  ".join(keys))
    if problems:
        name = spec.name if spec is not None else type(model).__name__
        raise ConversionError(f"checkpoint does not match model {name!r}:\n" + "\n".join(problems))
    return nnx.from_flat_state(filled)


def to_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The inverse mapping: Flax variables → an official-layout state_dict (float32 numpy), buffers included."""
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        value = np.asarray(var[...], np.float32)
        name = str(path[-1])
        want = _expected_torch_shape(name, value.shape, _is_head_conv(path))
        if name == "kernel" and value.ndim == 2:
            value = value.T.reshape(want)
        elif name == "kernel" and value.ndim > 2:
            value = np.moveaxis(value, (-1, -2), (0, 1))
        elif len(path) > 1 and str(path[-2]) == "grn":  # a layer module may hold top-level params
            value = value.reshape(1, 1, 1, -1)
        out[_torch_key(path)] = value
        if isinstance(var, nnx.BatchStat) and name == "mean":
            out[_torch_key(path).removesuffix("running_mean") + "num_batches_tracked"] = np.zeros((), np.int64)
    out.update({k: v.astype(np.int64) for k, v in index_buffers(model).items()})
    return out
