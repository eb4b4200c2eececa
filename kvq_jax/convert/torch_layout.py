"""Official PyTorch `state_dict` ↔ kvq_jax Flax params, strictly.

Our module attribute names mirror the official ones, so the mapping is mechanical:
a Flax path `technical_backbone/layers/0/blocks/1/attn/qkv/kernel` is the PyTorch key
`technical_backbone.layers.0.blocks.1.attn.qkv.weight`. Only the leaf name and the array layout change:

* Linear weight (out, in) → kernel (in, out)
* Conv3d weight (O, I, T, H, W) → kernel (T, H, W, I, O); depthwise convs have I = 1 in both
* 1×1×1 Conv3d of the VQA head (O, I, 1, 1, 1) → Dense kernel (I, O)
* LayerNorm weight → scale; GRN gamma/beta (1, 1, 1, C) → (C,)

Integer buffers (`relative_position_index`) are not weights: we recompute them and, where a checkpoint has
them, require equality so a checkpoint built for other window sizes cannot load silently.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from kvq_jax.models.swin3d import WindowAttention3D, relative_position_index
from kvq_jax.models.vqa import VQAModel


class ConversionError(ValueError):
    """A checkpoint does not match the model; the message lists every offending key."""


def _torch_key(path: tuple) -> str:
    *parents, leaf = (str(p) for p in path)
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join([*parents, leaf])


def _to_flax(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Convert one PyTorch array to the Flax layout of `shape`; None if the shapes are incompatible."""
    if name == "kernel" and value.ndim == 2 and len(shape) == 2:
        out = value.T
    elif name == "kernel" and value.ndim == 5 and len(shape) == 2:  # 1×1×1 conv head
        out = value.reshape(value.shape[0], -1).T if value.shape[2:] == (1, 1, 1) else None
    elif name == "kernel" and value.ndim == 5:
        out = value.transpose(2, 3, 4, 1, 0)
    elif value.shape != shape and value.size == int(np.prod(shape)) and value.squeeze().shape == shape:
        out = value.reshape(shape)  # GRN (1, 1, 1, C) → (C,)
    else:
        out = value
    if out is None or tuple(out.shape) != tuple(shape):
        return None
    return out


def _expected_torch_shape(name: str, shape: tuple[int, ...], is_head_conv: bool) -> tuple[int, ...]:
    if name == "kernel" and len(shape) == 2:
        return (shape[1], shape[0], 1, 1, 1) if is_head_conv else (shape[1], shape[0])
    if name == "kernel" and len(shape) == 5:
        t, h, w, i, o = shape
        return (o, i, t, h, w)
    return shape


def index_buffers(model: VQAModel) -> dict[str, np.ndarray]:
    """Every `relative_position_index` buffer the official model registers, recomputed."""
    out = {}
    for path, module in nnx.iter_graph(model):
        if isinstance(module, WindowAttention3D):
            key = ".".join(str(p) for p in path) + ".relative_position_index"
            out[key] = relative_position_index(module.window)
    return out


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model: VQAModel) -> nnx.State:
    """Map an official state_dict onto `model`'s params (abstract or concrete) and return the filled State.

    Strict: every checkpoint key must be used, every param filled, every shape right; index buffers present
    in the checkpoint must equal the recomputed ones. Raises ConversionError listing all problems at once.
    """
    params = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(params)
    buffers = index_buffers(model)
    remaining = dict(state_dict)
    missing, misshaped, bad_buffers = [], [], []
    filled = []
    for path, var in flat:
        key = _torch_key(path)
        shape = tuple(var.shape)
        if key not in remaining:
            missing.append(key)
            continue
        value = np.asarray(remaining.pop(key))
        head_conv = any(str(p).endswith("head") and str(p) != "head" for p in path)
        out = _to_flax(str(path[-1]), value, shape)
        if out is None:
            want = _expected_torch_shape(str(path[-1]), shape, head_conv)
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)}, model expects {want}")
            continue
        filled.append((path, var.replace(np.asarray(out, dtype=var.dtype))))
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
        raise ConversionError(f"checkpoint does not match model {model.spec.name!r}:\n" + "\n".join(problems))
    return nnx.from_flat_state(filled)


def to_state_dict(model: VQAModel) -> dict[str, np.ndarray]:
    """The inverse mapping: Flax params → an official-layout state_dict (float32 numpy), buffers included."""
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var[...], np.float32)
        name = str(path[-1])
        head_conv = any(str(p).endswith("head") and str(p) != "head" for p in path)
        want = _expected_torch_shape(name, value.shape, head_conv)
        if name == "kernel" and value.ndim == 2:
            value = value.T.reshape(want)
        elif name == "kernel" and value.ndim == 5:
            value = value.transpose(4, 3, 0, 1, 2)
        elif str(path[-2]) == "grn":
            value = value.reshape(1, 1, 1, -1)
        out[_torch_key(path)] = value
    out.update({k: v.astype(np.int64) for k, v in index_buffers(model).items()})
    return out
