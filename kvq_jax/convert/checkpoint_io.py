"""Reading official checkpoint files (.pth, .safetensors, .npz) into a flat dict of NumPy arrays.

`.pth` files are read with `torch.load(weights_only=True)`: never unpickle arbitrary objects from a file
downloaded off the internet. TorchScript archives (OpenAI's CLIP `.pt` files) are read with `torch.jit.load`, whose
restricted loader builds the module without running Python code, and only their state_dict is kept. Half-precision
tensors become float32. PyTorch is needed only here (the optional `torch` extra).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# Wrappers seen around official state_dicts: FAST-VQA and the DOVER training scripts save
# {"state_dict": ..., "validation_results": ...}; ImageNet/timm files use "model"; pytorchvideo's model zoo
# (PySlowFast checkpoints, e.g. SLOWFAST_8x8_R50.pyth) "model_state".
_WRAPPER_KEYS = ("state_dict", "model", "params", "model_state")


class CheckpointReadError(ValueError):
    """The file could not be read as a state_dict; the message names the file."""


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        return value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    return np.asarray(value)


def unwrap_state_dict(obj: Mapping, source: str = "<state_dict>") -> dict[str, np.ndarray]:
    """Strip `{"state_dict": ...}`-style wrappers and a DataParallel `module.` prefix."""
    while isinstance(obj, Mapping) and not _looks_flat(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise CheckpointReadError(
                f"{source}: no tensors found; top-level keys are {sorted(obj)[:10]} "
                f"(expected a state_dict or a wrapper with one of {_WRAPPER_KEYS})"
            )
        obj = inner
    out = {str(k): _to_numpy(v) for k, v in obj.items()}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _looks_flat(obj: Mapping) -> bool:
    return bool(obj) and all(hasattr(v, "shape") for v in obj.values())


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding the module's code next to its tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def read_state_dicts(paths: Sequence[str | os.PathLike]) -> dict[str, np.ndarray]:
    """One flat {key: array} from several files (e.g. COVER.pth and CLIP's ViT-L-14.pt); a key in two files is an
    error naming both."""
    merged: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for path in paths:
        for key, value in read_state_dict(path).items():
            if key in merged:
                raise CheckpointReadError(f"key {key!r} is in both {origin[key]} and {path}")
            merged[key], origin[key] = value, str(path)
    return merged


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A flat {key: array} from a .pth/.pt/.ckpt (torch or TorchScript), .safetensors or .npz file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: no such checkpoint file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            obj = load_file(str(path))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                obj = {k: z[k] for k in z.files}
        else:
            try:
                import torch
            except ImportError as e:
                raise CheckpointReadError(
                    f"{path}: reading PyTorch files needs torch; install the extra: pip install 'kvq-jax[torch]'"
                ) from e
            if _is_torchscript(path):
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
            else:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointReadError:
        raise
    except Exception as e:  # corrupt files raise many different types
        raise CheckpointReadError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointReadError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return unwrap_state_dict(obj, str(path))
