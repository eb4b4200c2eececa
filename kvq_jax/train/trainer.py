"""The training and evaluation loop: one clear loop in the big_vision / Flax-examples style.

Data parallelism is `jax.jit` with `NamedSharding` over a `("data", "fsdp")` device mesh (`sharding.py`): batches
are split over every device; params, EMA and optimiser state are replicated (`sharding.fsdp=1`) or split over the
fsdp axis by path rules, and GSPMD inserts the gradient all-reduce (or reduce-scatter). Multi-host runs call
`jax.distributed.initialize()` first (see `kvq_jax.main`); each process reads its own shard of the records and
only process 0 writes logs. The pieces live beside this file: `data` (views, records, truth), `state` (model,
optimiser, EMA), `steps` (the jitted steps), `evaluate`, `checkpoints` and `logger`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from kvq_jax.data import pipeline
from kvq_jax.train import checkpoints, data, optim, sharding, state, steps
from kvq_jax.train.evaluate import evaluate, format_table
from kvq_jax.train.logger import MetricLogger


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def train_step_for(cfg: ml_collections.ConfigDict, graph, tx, params):
    """The train step a config asks for (loss weights, frozen params, EMA, seed, compute dtype)."""
    return steps.make_train_step(
        graph,
        tx,
        branches=data.model_branches(cfg),
        loss_weights=dict(cfg.loss.weights),
        arank_options=dict(cfg.loss.get("arank_options") or {}),
        frozen=state.frozen_mask(cfg, params),
        ema_decay=cfg.get("ema_decay"),
        seed=cfg.seed,
        dtype=jax.numpy.dtype(cfg.dtype),
    )


def eval_step_for(cfg: ml_collections.ConfigDict, graph):
    names = data.score_names(cfg)
    return jax.jit(steps.make_eval_step(graph, data.model_branches(cfg), names, jax.numpy.dtype(cfg.dtype)))


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
    """Train (resuming from `workdir` if it holds a checkpoint), evaluate periodically and at the end."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=1))
    data.ensure_dataset(cfg)
    mesh = sharding.make_mesh(cfg.sharding.fsdp)
    if cfg.train.batch_size % jax.device_count():
        raise ValueError(
            f"train.batch_size {cfg.train.batch_size} must be a multiple of the {jax.device_count()} devices"
        )
    train_source = pipeline.load_split(cfg.data.data_dir, cfg.data.name, cfg.data.train_split)
    steps_per_epoch = max(1, len(train_source) // cfg.train.batch_size)
    total = cfg.train.get("num_steps") or int(cfg.train.num_epochs * steps_per_epoch)
    tx_cfg = state.optimizer_config(cfg, total)
    logger = MetricLogger(workdir)

    with jax.set_mesh(mesh):
        train_graph, eval_graph, params, stats = state.build_model(cfg)
        tx = optim.make_optimizer(tx_cfg, params)
        train_state, state_sharding = state.place_state(cfg, mesh, params, stats, tx)
        train_step = jax.jit(
            train_step_for(cfg, train_graph, tx, params),
            out_shardings=(state_sharding, NamedSharding(mesh, P())),
            donate_argnums=0,
        )
        eval_fn = eval_step_for(cfg, eval_graph)

        def make_iterator(start_batch: int):
            return pipeline.train_iterator(
                train_source,
                data.train_view_specs(cfg),
                global_batch_size=cfg.train.batch_size,
                seed=cfg.seed,
                num_workers=cfg.data.num_workers,
                mesh=mesh,
                start_batch=start_batch,
            )

        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, train_state)
        mngr, start, restored, data_iter = checkpoints.resume(workdir, cfg, target, make_iterator)
        if restored is not None:
            train_state = restored

        eval_splits = tuple(cfg.eval.splits)
        bar = tqdm(total=total, initial=start, desc="train", disable=jax.process_index() != 0, unit="step")
        t0, seen = time.perf_counter(), 0
        results: dict[str, dict] = {}
        for step in range(start + 1, total + 1):
            batch = next(data_iter)
            dev = pipeline.to_global({k: v for k, v in batch.items() if k not in pipeline.HOST_FIELDS}, mesh)
            train_state, aux = train_step(train_state, dev)
            seen += cfg.train.batch_size
            if step % cfg.train.log_every == 0 or step == total:
                aux = jax.device_get(aux)
                if not all(math.isfinite(float(v)) for v in aux.values()):
                    mngr.wait_until_finished()
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step}: {aux}; the last good checkpoint "
                        f"(step {mngr.latest_step()}) is kept in {workdir / 'checkpoints'}"
                    )
                rate = seen / (time.perf_counter() - t0)
                lr = optim.lr_at(tx_cfg, step - 1)
                logger.write(
                    step, {**{f"train/{k}": v for k, v in aux.items()}, "train/lr": lr, "train/videos_per_s": rate}
                )
                bar.set_postfix(loss=f"{float(aux['loss']):.4f}", vid_s=f"{rate:.2f}")
                t0, seen = time.perf_counter(), 0
            bar.update(1)
            do_eval = eval_splits and (step % cfg.train.eval_every == 0 or step == total)
            if do_eval:
                results = evaluate(cfg, workdir, mesh, eval_fn, train_state, step, eval_splits)
                logger.write(step, {f"{s}/{k}": v for s, r in results.items() for k, v in r.items() if _scalar(v)})
            if do_eval or step % cfg.checkpoint.every == 0 or step == total:
                first = results.get(eval_splits[0]) if do_eval else None
                mngr.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(train_state),
                        data_iter=grain.checkpoint.CheckpointSave(data_iter),
                    ),
                    metrics={"final": checkpoints.selection_metric(first)} if first else None,
                )
                checkpoints.notice(f"checkpoint of step {step} -> {mngr.directory}/{step}")
        bar.close()
        mngr.wait_until_finished()
        if not results and eval_splits:
            step = int(train_state["step"])
            results = evaluate(cfg, workdir, mesh, eval_fn, train_state, step, eval_splits)
    logger.close()
    if jax.process_index() == 0 and results:
        print(format_table(results))
    return results


def _scalar(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def evaluate_only(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
    """Evaluate the latest checkpoint in `workdir` (raw and EMA params), or `cfg.init_weights` when there is none.

    ``eval.checkpoints=N`` uses the latest N kept checkpoints (keep them with ``checkpoint.keep_latest``):
    ``eval.average="predictions"`` averages their per-video predictions (the NTIRE 2024 KVQ winner averaged 10),
    ``"params"`` evaluates the uniform average of their weights (a model soup) once.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data.ensure_dataset(cfg)
    mesh = sharding.make_mesh(cfg.sharding.fsdp)
    average = cfg.eval.get("average") or "predictions"
    if average not in ("predictions", "params"):
        raise ValueError(f"eval.average={average!r}: use 'predictions' or 'params'")
    with jax.set_mesh(mesh):
        _, eval_graph, params, stats = state.build_model(cfg)
        replicated = NamedSharding(mesh, P())  # restore targets every process's devices
        current: dict[str, Any] = jax.device_put({"params": params, "stats": stats}, replicated)
        states, step, tag = [current], 0, None
        ckpt_dir = workdir / "checkpoints"
        kept = []
        if ckpt_dir.is_dir():
            mngr = ocp.CheckpointManager(ckpt_dir.absolute(), item_names=("state", "data_iter"))
            kept = sorted(mngr.all_steps())[-(cfg.eval.get("checkpoints") or 1) :]
        if kept:
            frozen = state.frozen_mask(cfg, params)
            ema = optim.ema_init(current["params"], frozen) if cfg.get("ema_decay") else None
            states = [checkpoints.restore_model_state(mngr, s, current, ema) for s in kept]
            step = kept[-1]
            if len(kept) > 1:
                tag = f"{'soup' if average == 'params' else 'avg'}{len(kept)}_step{step}"
                if average == "params":
                    states = [jax.tree.map(lambda *xs: sum(xs) / len(xs), *states)]
            checkpoints.notice(f"evaluating the checkpoint(s) of step(s) {kept} in {ckpt_dir}")
        for st in states:
            if not jax.tree.leaves(st.get("stats")):
                st.pop("stats", None)
        eval_fn = eval_step_for(cfg, eval_graph)
        results = evaluate(cfg, workdir, mesh, eval_fn, states, step, tuple(cfg.eval.splits), tag)
    if jax.process_index() == 0:
        print(format_table(results))
    return results
