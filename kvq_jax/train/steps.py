"""The jitted steps: train (loss, grads, optax update, EMA, BatchNorm statistics) and eval (branch scores).

Both score batches with `kvq_jax.scoring.score_views`, the function predict and export run too. They are
built from explicit arguments, not a config, so the benchmark times exactly the trainer's step. A family's
auxiliary losses (`kvq_jax.models.registry.AuxLoss`, e.g. KSVQE's contrastive term) read the model's features and
the batch labels they name, and add to the score losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from kvq_jax.models.registry import AuxLoss
from kvq_jax.scoring import score_views
from kvq_jax.train import losses, optim

PyTree = Any


def make_train_step(
    graph: nnx.GraphDef,
    tx: optax.GradientTransformation,
    *,
    branches: Sequence[str],
    loss_weights: Mapping[str, float],
    arank_options: Mapping[str, Any] | None = None,
    aux_losses: Sequence[tuple[AuxLoss, float]] = (),
    frozen: PyTree | None = None,
    ema_decay: float | None = None,
    seed: int = 0,
    dtype: Any = jnp.float32,
):
    """``step(state, batch) -> (state, aux)``; jit it. ``graph`` is the model's train-mode graph.

    ``aux_losses``: (term, weight) pairs added to the score losses; each reads the model's features and the batch
    fields in its ``labels``, and is reported as ``aux/<name>``.

    Frozen params (a bool pytree like the params) enter the loss through stop_gradient, so no backward pass is
    built through a frozen backbone (head-only transfer costs a forward pass); the optimiser also zeroes their
    (zero) updates. Dropout keys derive from (seed, step), so a resumed run draws the same masks.
    """
    base_key = jax.random.key(seed)
    weights, arank = dict(loss_weights), dict(arank_options or {})

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        key = jax.random.fold_in(base_key, state["step"])
        stats = state.get("stats", nnx.State({}))

        def loss_fn(params):
            if frozen is not None:
                params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
            model = nnx.merge(graph, params, stats, copy=True)  # fresh variables: BatchNorm updates them here
            views = {b: batch[b] for b in branches}
            rngs = nnx.Rngs(dropout=key)
            if aux_losses:
                scores, _, feats = score_views(model, views, dtype=dtype, rngs=rngs, features=True)
            else:
                scores, _ = score_views(model, views, dtype=dtype, rngs=rngs)
            loss, aux = losses.vqa_loss(
                scores, batch["mos"], weights=weights, group=batch["source_id"], arank_options=arank
            )
            for term, weight in aux_losses:
                value = term.fn(feats, {k: batch[k] for k in term.labels})
                aux[f"aux/{term.name}"] = value
                loss = loss + weight * value
            aux["total"] = loss
            return loss, (aux, nnx.split(model, nnx.Param, ...)[2])

        (loss, (aux, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        if "stats" in state:
            new["stats"] = new_stats
        if "ema" in state:
            new["ema"] = optim.ema_update(state["ema"], params, ema_decay)
        return new, dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))

    return train_step


def make_eval_step(graph: nnx.GraphDef, branches: Sequence[str], names: Sequence[str], dtype: Any = jnp.float32):
    """``eval_step(params, stats, batch) -> (B, len(names))``: the scores ``names`` from the views of
    ``branches``; ``graph`` in eval mode."""

    def eval_step(params: nnx.State, stats: nnx.State, batch: dict) -> jax.Array:
        scores, _ = score_views(nnx.merge(graph, params, stats), {b: batch[b] for b in branches}, dtype=dtype)
        return jnp.stack([scores[n] for n in names], axis=-1)

    return eval_step
