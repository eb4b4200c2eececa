"""Optimiser, learning-rate schedules and parameter EMA (optax), following the DOVER / FAST-VQA recipes.

The official scripts use ``torch.optim.AdamW`` with one parameter group per top-level child module (children
whose name contains "backbone" get ``lr·backbone_lr_mult``), weight decay on every parameter, a per-iteration
``LambdaLR`` (linear warm-up, then a cosine whose period is the *whole* run) and an EMA copy of the parameters
(decay 0.999). ``make_optimizer`` builds the same thing as one optax chain::

    [zero frozen grads] → [clip_by_global_norm] → multi_transform{group: adam → decoupled decay → ×mult}
                        → ×(−schedule(step))

The learning rate is applied once, at the end, from a single step counter, so the per-group multipliers and
the schedule behave exactly like torch param groups sharing one ``LambdaLR``.

Configuration (an ``ml_collections.ConfigDict`` or any mapping):

===================  ====================================================================================
``lr``               base learning rate (required)
``weight_decay``     AdamW decoupled weight decay (default 0.0; DOVER/FAST-VQA use 0.05)
``b1``, ``b2``       Adam betas (default 0.9, 0.999 = torch defaults); ``eps`` (default 1e-8)
``schedule``         ``"official"`` (the DOVER / FAST-VQA / KVQ scripts') | ``"cosine"`` | ``"constant"``
``warmup_steps``     warm-up length in optimiser steps (required by official/cosine)
``total_steps``      run length in optimiser steps (required by official/cosine)
``end_lr``           final LR of ``"cosine"`` (default 0.0)
``backbone_lr_mult`` LR multiplier of params whose top-level path component contains "backbone" (default 1)
``freeze``           regexes (``re.fullmatch`` on ``path_str``); matched params get zero updates, no decay
``no_decay``         regexes of params excluded from weight decay (default none: the official code decays all)
``grad_clip_norm``   clip the global gradient norm of the trainable params; 0/None = off (official: off)
``ema_decay``        not used here; accepted so that the train loop can keep it in the same config block
===================  ====================================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

PyTree = Any

# Labels of the optimiser groups (the keys of the multi_transform).
FROZEN = "frozen"
GROUPS = ("backbone", "backbone_nodecay", "other", "other_nodecay")

_KNOWN_KEYS = frozenset(
    {
        "lr",
        "weight_decay",
        "b1",
        "b2",
        "eps",
        "schedule",
        "warmup_steps",
        "total_steps",
        "end_lr",
        "backbone_lr_mult",
        "freeze",
        "no_decay",
        "grad_clip_norm",
        "ema_decay",
    }
)
_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0.0,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "schedule": "official",
    "warmup_steps": None,
    "total_steps": None,
    "end_lr": 0.0,
    "backbone_lr_mult": 1.0,
    "freeze": (),
    "no_decay": (),
    "grad_clip_norm": None,
    "ema_decay": None,
}


# ----------------------------------------------------------------------------------------------- config


def _config(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Plain dict of the optimiser config with defaults filled in; unknown or missing keys raise."""
    keys = list(cfg.keys())
    unknown = sorted(set(keys) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"optimizer config: unknown keys {unknown}; known keys: {sorted(_KNOWN_KEYS)}")
    if "lr" not in keys:
        raise ValueError("optimizer config: missing required key 'lr'")
    out = dict(_DEFAULTS)
    out.update({k: cfg[k] for k in keys})
    for k in ("freeze", "no_decay"):
        v = out[k]
        if v is None:
            out[k] = ()
        elif isinstance(v, str):
            raise ValueError(f"optimizer config: '{k}' must be a list of regex strings, got the string {v!r}")
        else:
            out[k] = tuple(v)
    return out


# ----------------------------------------------------------------------------------------------- schedules


def official_schedule(base_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """The DOVER / FAST-VQA / KVQ ``LambdaLR``: ``lr·f(step)`` with the step counted from 0.

    ``f = step/warmup`` while ``step ≤ warmup``, then ``0.5·(1 + cos(π·(step − warmup)/total))``. The cosine
    period is the whole run (``total``), not ``total − warmup``, so the LR never reaches 0: at the last step
    it is ``0.5·(1 + cos(π·(1 − warmup/total)))·lr``. As in torch, the very first update uses ``f(0) = 0``.
    ``warmup_steps = 0`` (a division by zero in the official lambda) means no warm-up.
    """
    if total_steps <= 0 or warmup_steps < 0:
        raise ValueError(
            f"official_schedule: need total_steps > 0 and warmup_steps ≥ 0; got {total_steps}, {warmup_steps}"
        )
    # optax's cosine clamps its count at decay_steps; with decay_steps = total and count ≤ total − warmup it
    # never does inside the run, so it is exactly the official 0.5·(1 + cos(π·s/total)).
    cosine = optax.cosine_decay_schedule(init_value=base_lr, decay_steps=total_steps)
    if warmup_steps == 0:
        return cosine
    warmup = optax.linear_schedule(init_value=0.0, end_value=base_lr, transition_steps=warmup_steps)
    # At step == warmup both pieces equal base_lr, so the boundary convention (≤ vs <) does not matter.
    return optax.join_schedules([warmup, cosine], boundaries=[warmup_steps])


def cosine_schedule(base_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0) -> optax.Schedule:
    """The standard form: linear warm-up 0 → ``base_lr`` over ``warmup_steps``, then a cosine that reaches
    ``end_lr`` at ``total_steps`` (``optax.warmup_cosine_decay_schedule``; ``total_steps`` includes warm-up).
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=base_lr,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=end_lr,
    )


SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {"official": official_schedule, "cosine": cosine_schedule}


def make_schedule(cfg: Mapping[str, Any] | Any) -> optax.Schedule:
    """The LR schedule named by ``cfg.schedule`` (``official`` | ``cosine`` | ``constant``)."""
    c = _config(cfg)
    name = c["schedule"]
    if name == "constant":
        return optax.constant_schedule(c["lr"])
    if name not in SCHEDULES:
        raise ValueError(f"optimizer config: unknown schedule {name!r}; choose from {[*SCHEDULES, 'constant']}")
    for k in ("warmup_steps", "total_steps"):
        if c[k] is None:
            raise ValueError(f"optimizer config: schedule {name!r} needs '{k}'")
    kwargs = {"end_lr": c["end_lr"]} if name == "cosine" else {}
    return SCHEDULES[name](c["lr"], int(c["warmup_steps"]), int(c["total_steps"]), **kwargs)


def lr_at(cfg: Mapping[str, Any] | Any, step: int, *, backbone: bool = False) -> float:
    """Learning rate used by the update with 0-based index ``step`` (for logging); ``backbone=True`` applies
    ``backbone_lr_mult``."""
    lr = float(make_schedule(cfg)(step))
    return lr * float(_config(cfg)["backbone_lr_mult"]) if backbone else lr


# ----------------------------------------------------------------------------------------------- param paths


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(path: Sequence[Any]) -> str:
    """'/'-joined names of a ``tree_flatten_with_path`` key path: ``DictKey``, ``GetAttrKey``, ``SequenceKey``
    and ``FlattenedIndexKey`` all give their bare name/index (``"technical_head/fc_hid/kernel"``).

    A trailing ``GetAttrKey('value')`` is dropped: it is how an NNX ``Variable`` exposes its array, so the
    same patterns match ``nnx.state(model, nnx.Param)`` and ``nnx.to_pure_dict(...)``.
    """
    parts = list(path)
    if parts and isinstance(parts[-1], jax.tree_util.GetAttrKey) and parts[-1].name == "value":
        parts = parts[:-1]
    return "/".join(_key_name(k) for k in parts)


def param_label(path: str, *, freeze: Sequence[str] = (), no_decay: Sequence[str] = ()) -> str:
    """Optimiser group of one parameter: ``frozen``, or ``backbone``/``other``, optionally ``_nodecay``.

    ``backbone``: a module on the path has "backbone" in its name, as the official trainers group the children
    of their model (DOVER's ``technical_backbone``; SimpleVQA's ``vqa/simpleVQA_backbone``, whose official
    network is one level down in our module).
    """
    if any(re.fullmatch(pat, path) for pat in freeze):
        return FROZEN
    group = "backbone" if any("backbone" in part for part in path.split("/")[:-1]) else "other"
    return group + ("_nodecay" if any(re.fullmatch(pat, path) for pat in no_decay) else "")


def param_labels(tree: PyTree, *, freeze: Sequence[str] = (), no_decay: Sequence[str] = ()) -> PyTree:
    """Label pytree (same structure as ``tree``) for ``optax.multi_transform``."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: param_label(path_str(p), freeze=freeze, no_decay=no_decay), tree
    )


def _check_patterns(params: PyTree, key: str, patterns: Sequence[str]) -> None:
    """A pattern that matches no parameter is almost always a typo; fail loudly."""
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pat in patterns:
        try:
            rx = re.compile(pat)
        except re.error as e:
            raise ValueError(f"optimizer config: '{key}' pattern {pat!r} is not a valid regex: {e}") from e
        if not any(rx.fullmatch(p) for p in paths):
            sample = ", ".join(paths[:5])
            raise ValueError(
                f"optimizer config: '{key}' pattern {pat!r} matches no parameter path (full match); "
                f"paths look like: {sample}"
            )


# ----------------------------------------------------------------------------------------------- optimiser


def make_optimizer(cfg: Mapping[str, Any] | Any, params: PyTree) -> optax.GradientTransformation:
    """AdamW with backbone LR multiplier, frozen params, optional clipping and the configured schedule.

    ``params`` (a nested dict, an ``nnx.State`` …) is only used to check that every ``freeze``/``no_decay``
    pattern matches something; labels are recomputed from the paths of whatever tree the optimiser receives.
    Per parameter the update equals torch ``AdamW`` with the param-group LR ``lr·mult``:
    ``−lr(step)·mult·(m̂/(√v̂ + eps) + wd·p)``; frozen params get exactly 0 (no decay, like torch params with
    ``requires_grad=False``) and their gradients do not count towards the clipping norm.
    """
    c = _config(cfg)
    freeze, no_decay = c["freeze"], c["no_decay"]
    _check_patterns(params, "freeze", freeze)
    _check_patterns(params, "no_decay", no_decay)
    schedule = make_schedule(c)

    def labels(tree: PyTree) -> PyTree:
        return param_labels(tree, freeze=freeze, no_decay=no_decay)

    def adamw_group(mult: float, wd: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.scale_by_adam(b1=c["b1"], b2=c["b2"], eps=c["eps"]),
            optax.add_decayed_weights(wd),
            optax.scale(mult),
        )

    mult, wd = float(c["backbone_lr_mult"]), float(c["weight_decay"])
    transforms = {
        "backbone": adamw_group(mult, wd),
        "backbone_nodecay": adamw_group(mult, 0.0),
        "other": adamw_group(1.0, wd),
        "other_nodecay": adamw_group(1.0, 0.0),
        FROZEN: optax.set_to_zero(),
    }
    parts: list[optax.GradientTransformation] = []
    if c["grad_clip_norm"]:
        if freeze:
            parts.append(
                optax.masked(optax.set_to_zero(), lambda t: jax.tree.map(lambda lab: lab == FROZEN, labels(t)))
            )
        parts.append(optax.clip_by_global_norm(float(c["grad_clip_norm"])))
    parts.append(optax.multi_transform(transforms, labels))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


# ----------------------------------------------------------------------------------------------- EMA


def ema_init(params: PyTree, frozen: PyTree | None = None) -> dict:
    """EMA copies of the trainable params only, as a nested dict by path.

    A frozen param's average is the param itself, so storing it again only doubles a head-only checkpoint (DOVER:
    225 MB of frozen backbones, 0.1 MB of heads). `frozen` is a bool pytree like `params` (None: all trainable).
    """
    flags = jax.tree.leaves(frozen) if frozen is not None else None
    out: dict = {}
    for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
        if flags is not None and flags[i]:
            continue
        node = out
        *parents, name = path_str(path).split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = jax.numpy.copy(leaf)
    return out


def _by_path(tree: PyTree) -> dict[str, Any]:
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
    """Parameter EMA ``ema ← decay·ema + (1 − decay)·params`` (DOVER/FAST-VQA: decay 0.999, every step).

    ``ema`` holds some or all of the params (matched by path, see :func:`ema_init`); pass trainable parameters
    only (``nnx.state(model, nnx.Param)``): the official code averages ``named_parameters``, buffers such as
    BatchNorm statistics are not averaged. ``decay`` may be a traced value (e.g. an EMA warm-up).
    """
    if isinstance(decay, (int, float)) and not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema_update: decay must be in [0, 1]; got {decay}")
    current = _by_path(params)
    return jax.tree_util.tree_map_with_path(
        lambda p, e: optax.incremental_update(current[path_str(p)], e, step_size=1.0 - decay), ema
    )


def ema_params(params: PyTree, ema: PyTree) -> PyTree:
    """The params with their EMA where one is kept (frozen params are their own average)."""
    averaged = _by_path(ema)
    return jax.tree_util.tree_map_with_path(lambda p, x: averaged.get(path_str(p), x), params)
