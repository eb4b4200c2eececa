"""Model weights on disk: orbax checkpoints written by `python -m kvq_jax.convert`, or official files.

A converted checkpoint is a directory holding an orbax `variables` item (every model variable — params and
any BatchNorm statistics — as a pure dict) and `kvq_jax.json` naming the model, so loading never guesses the
architecture.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from kvq_jax.convert.checkpoint_io import read_state_dicts
from kvq_jax.convert.torch_layout import convert_state_dict
from kvq_jax.models import abstract_model, get_model, with_state
from kvq_jax.models.common import Dtype

META_FILE = "kvq_jax.json"
ITEM = "variables"


def save_weights(model: nnx.Module, out_dir: str | os.PathLike, **meta) -> Path:
    """Write the model's variables as an orbax checkpoint plus a metadata file; returns the directory."""
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / ITEM, nnx.to_pure_dict(nnx.state(model)), force=True)
    (out / META_FILE).write_text(json.dumps({"model": model.spec.name, **meta}, indent=1))
    return out


def read_meta(path: str | os.PathLike) -> dict:
    meta = Path(path) / META_FILE
    if not meta.is_file():
        raise FileNotFoundError(
            f"{path}: not a kvq_jax weights directory (no {META_FILE}); convert official weights with "
            "`python -m kvq_jax.convert --model NAME --src FILE.pth --out DIR`"
        )
    return json.loads(meta.read_text())


Weights = str | os.PathLike | Sequence[str | os.PathLike]


def read_variables(weights: Weights, abstract: nnx.Module) -> nnx.State:
    """Concrete variables for `abstract` from a converted directory, or from the official checkpoint file(s)."""
    if not isinstance(weights, str | os.PathLike):
        files = [Path(w) for w in weights]
        if len(files) != 1:
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{missing[0]}: no such checkpoint file")
            return convert_state_dict(read_state_dicts(files), abstract)
        weights = files[0]
    path = Path(weights)
    if path.is_dir():
        meta = read_meta(path)
        if meta["model"] != abstract.spec.name:
            raise ValueError(f"{path} holds weights for {meta['model']!r}, not {abstract.spec.name!r}")
        state = nnx.state(abstract)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(path.absolute() / ITEM, target)
        nnx.replace_by_pure_dict(state, restored)
        return state
    if path.is_file():
        return convert_state_dict(read_state_dicts([path]), abstract)
    raise FileNotFoundError(f"{path}: no such weights directory or checkpoint file")


def load_model(name: str, weights: Weights | None, *, dtype: Dtype = jnp.float32) -> nnx.Module:
    """A registered model with weights loaded (fresh random weights when `weights` is None)."""
    if weights is None:
        return get_model(name, dtype=dtype)
    abstract = abstract_model(name, dtype=dtype)
    return with_state(abstract, read_variables(weights, abstract))


def load_pretrained(model: nnx.Module) -> list[str]:
    """Put the spec's pretrained backbone weights (``ModelSpec.pretrained``: ImageNet / Kinetics files, where
    installed) into `model`; returns the files used, [] when there are none. The variables those files lack (the
    VQA head) keep their values; every key the files hold must convert (strict otherwise)."""
    spec = model.spec
    files = spec.pretrained() if spec.pretrained is not None else []
    if files:
        nnx.update(model, convert_state_dict(read_state_dicts(files), model, allow_missing=True))
    return files


def weights_allclose(a: nnx.Module, b: nnx.Module) -> bool:
    """True if two models hold the same variables (used by round-trip checks)."""
    fa = nnx.to_flat_state(nnx.state(a))
    fb = dict(nnx.to_flat_state(nnx.state(b)))
    return set(dict(fa)) == set(fb) and all(np.array_equal(np.asarray(v[...]), np.asarray(fb[p][...])) for p, v in fa)
