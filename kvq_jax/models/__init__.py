"""Model registry: `get_model("dover" | "dover_mobile" | "fastvqa_b" | ...)`.

Each entry is a `ModelSpec` (see `vqa.py`): the official architecture arguments, the view preset the model
was trained with, and its score normalisation. `fastervqa*` share FAST-VQA-B's architecture (the official
FasterVQA checkpoint drives -MT and -MS too); only their views and normalisation constants differ.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from kvq_jax.models.common import Dtype
from kvq_jax.models.convnext3d import convnext_femto, convnext_tiny
from kvq_jax.models.init import init_params
from kvq_jax.models.swin3d import SwinConfig
from kvq_jax.models.vqa import ModelSpec, VQAModel, dover_fusion, fastvqa_sigmoid, video_scores

_FAST_SWIN = SwinConfig(adaptive_window=True)
_FAST_SWIN_M = SwinConfig(window_size=(4, 4, 4), frag_biases=(False,) * 4, adaptive_window=True)


def _fast(name: str, swin: SwinConfig, mean: float, std: float) -> ModelSpec:
    """A FAST-VQA-family model: one `fragments` Swin branch, one shared `vqa_head`, its own views and sigmoid."""
    return ModelSpec(
        name=name,
        backbones=(("fragments", swin),),
        head_hidden=64,
        shared_head=True,
        views=name,
        normalize=fastvqa_sigmoid(mean, std),
    )


MODELS: dict[str, ModelSpec] = {
    "dover": ModelSpec(
        name="dover",
        backbones=(("technical", SwinConfig()), ("aesthetic", convnext_tiny())),
        head_hidden=64,
        shared_head=False,
        views="dover",
        normalize=dover_fusion,
    ),
    "dover_mobile": ModelSpec(
        name="dover_mobile",
        backbones=(("technical", convnext_femto()), ("aesthetic", convnext_femto())),
        head_hidden=32,
        shared_head=False,
        views="dover_mobile",
        normalize=dover_fusion,
    ),
    # (mean, std) of the sigmoid rescale: the official vqa.py table.
    "fastvqa_b": _fast("fastvqa_b", _FAST_SWIN, -0.110198185, 0.04178565),
    "fastervqa": _fast("fastervqa", _FAST_SWIN, 0.14759505, 0.03613452),
    "fastervqa_mt": _fast("fastervqa_mt", _FAST_SWIN, 0.14699507, 0.036453716),
    "fastervqa_ms": _fast("fastervqa_ms", _FAST_SWIN, 0.15218826, 0.03230298),
    "fastvqa_m": _fast("fastvqa_m", _FAST_SWIN_M, 0.023889644, 0.030781006),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None


def abstract_model(name: str, *, dtype: Dtype = jnp.float32, drop_path_rate: float | None = None) -> VQAModel:
    """The model with `jax.ShapeDtypeStruct` params: structure only, built in about a second."""
    spec = get_spec(name)
    if drop_path_rate is not None:
        spec = dataclasses.replace(
            spec,
            backbones=tuple((b, dataclasses.replace(c, drop_path_rate=drop_path_rate)) for b, c in spec.backbones),
        )
    return nnx.eval_shape(lambda: VQAModel(spec, dtype=dtype, rngs=nnx.Rngs(0)))


def with_params(abstract: VQAModel, params: nnx.State) -> VQAModel:
    """Materialise an abstract model with the given concrete param State (e.g. from a checkpoint)."""
    graphdef, _ = nnx.split(abstract)
    return nnx.merge(graphdef, params)


def get_model(name: str, *, dtype: Dtype = jnp.float32, seed: int = 0, drop_path_rate: float | None = None) -> VQAModel:
    """A registered model with fresh float32 params (official init, see `init.py`) and `dtype` compute."""
    abstract = abstract_model(name, dtype=dtype, drop_path_rate=drop_path_rate)
    return with_params(abstract, init_params(nnx.state(abstract, nnx.Param), seed))


__all__ = [
    "MODELS",
    "ModelSpec",
    "VQAModel",
    "abstract_model",
    "get_model",
    "get_spec",
    "video_scores",
    "with_params",
]
