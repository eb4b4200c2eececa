"""The train state: the model (fresh or from weights), optimiser, EMA, placed on the mesh with its shardings.

The state is a plain pytree so orbax can save it asynchronously: ``params``, ``stats`` (the model's other
variables, e.g. BatchNorm statistics, only when it has any), ``opt_state``, ``step`` and ``ema`` (of the trainable
params only, as the official code averages ``named_parameters`` and a frozen param is its own average; evaluating
the EMA uses the current statistics).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kvq_jax.models import abstract_model, get_model, get_spec, split_model, with_state
from kvq_jax.train import optim, sharding
from kvq_jax.weights import load_pretrained, read_variables

PyTree = Any


def build_model(cfg: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.GraphDef, nnx.State, nnx.State]:
    """(train graph, eval graph, float32 params, other variables): fresh (with the spec's pretrained backbones
    where `cfg.pretrained` asks for them and they are installed), or from `cfg.init_weights`."""
    spec = get_spec(cfg.model)
    dtype = jnp.dtype(cfg.dtype)
    drop_path = cfg.get("drop_path_rate")
    if cfg.get("init_weights"):
        abstract = abstract_model(spec, dtype=dtype, drop_path_rate=drop_path)
        model = with_state(abstract, read_variables(cfg.init_weights, abstract))
    else:
        model = get_model(spec, dtype=dtype, seed=cfg.seed, drop_path_rate=drop_path)
        if cfg.get("pretrained") and spec.pretrained is not None:
            files = load_pretrained(model)
            if files:
                logging.info("%s: backbones from %s", spec.name, ", ".join(files))
            else:
                logging.warning("%s: no pretrained backbone weights installed; training from random ones", spec.name)
    model.train()
    freeze_batch_norm(model, cfg.optim.freeze, tuple(cfg.get("train_batch_norm") or ()))
    train_graph = nnx.graphdef(model)
    model.eval()
    eval_graph, params, stats = split_model(model)
    return train_graph, eval_graph, params, stats


def freeze_batch_norm(model: nnx.Module, freeze: Sequence[str], keep_training: Sequence[str] = ()) -> None:
    """Put back in eval mode every BatchNorm whose scale and bias `freeze` matches, except those whose module path
    (``a/b/bn1``) one of the regexes ``keep_training`` matches in full: they normalise with batch statistics and
    update their running ones although their parameters are frozen (KSVQE's CONTRIQUE, as the official code runs it).

    A frozen backbone is a fixed feature extractor: in train mode its BatchNorm layers would normalise with the
    statistics of each small batch and overwrite the pretrained running statistics, so the features would differ
    between training and evaluation. (The official SimpleVQA trains its ResNet, BatchNorm included, but extracts
    the SlowFast features offline in eval mode.)
    """
    for path, module in nnx.iter_graph(model):
        if isinstance(module, nnx.BatchNorm):
            prefix = "/".join(map(str, path))
            if any(re.fullmatch(p, prefix) for p in keep_training):
                continue
            if all(optim.param_label(f"{prefix}/{leaf}", freeze=freeze) == optim.FROZEN for leaf in ("scale", "bias")):
                module.use_running_average = True


def init_state(
    params: nnx.State, stats: nnx.State, tx: optax.GradientTransformation, ema: bool, frozen: PyTree | None = None
) -> dict:
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    if jax.tree.leaves(stats):
        state["stats"] = stats
    if ema:
        state["ema"] = optim.ema_init(params, frozen)
    return state


def place_state(cfg: ml_collections.ConfigDict, mesh, params: nnx.State, stats: nnx.State, tx) -> tuple[dict, PyTree]:
    """The train state built on device with its shardings (replicated, or FSDP-split by `cfg.sharding`), and
    those shardings: with FSDP the optimiser state is never whole on one device."""

    frozen = frozen_mask(cfg, params)

    def init(p: nnx.State, s: nnx.State) -> dict:
        return init_state(p, s, tx, ema=bool(cfg.get("ema_decay")), frozen=frozen)

    shardings = sharding.state_shardings(
        jax.eval_shape(init, params, stats), mesh, cfg.sharding.rules, cfg.sharding.min_size
    )
    params = jax.device_put(params, shardings["params"])
    stats = jax.device_put(stats, NamedSharding(mesh, P()))
    return jax.jit(init, out_shardings=shardings)(params, stats), shardings


def optimizer_config(cfg: ml_collections.ConfigDict, total_steps: int) -> dict:
    oc = dict(cfg.optim)
    oc.setdefault("total_steps", total_steps)
    if "warmup_steps" not in oc:
        oc["warmup_steps"] = round(cfg.optim_warmup_fraction * total_steps)
    return oc


def frozen_mask(cfg: ml_collections.ConfigDict, params: nnx.State) -> PyTree:
    """True for the params `cfg.optim.freeze` matches (they enter the loss through stop_gradient)."""
    labels = optim.param_labels(params, freeze=cfg.optim.freeze)
    return jax.tree.map(lambda label: label == optim.FROZEN, labels)
