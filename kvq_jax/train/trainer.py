"""The training and evaluation loop: one clear loop in the big_vision / Flax-examples style.

Data parallelism is `jax.jit` with `NamedSharding` over a `("data", "fsdp")` device mesh (`sharding.py`): batches
are split over every device; params, EMA and optimiser state are replicated (`sharding.fsdp=1`) or split over the
fsdp axis by path rules, and GSPMD inserts the gradient all-reduce (or reduce-scatter). Multi-host runs call
`jax.distributed.initialize()` first (see `kvq_jax.main`); each process reads its own shard of the records and
only process 0 writes logs. The pieces live beside this file: `data` (views, records, truth), `state` (model,
optimiser, EMA), `steps` (the jitted steps), `evaluate`, `checkpoints` and `logger`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
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
        aux_losses=data.aux_losses(cfg),
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
    targets = data.eval_targets(cfg)
    for section in (cfg.data, *(t.data for t in targets)):  # built ones return at once
        data.ensure_dataset(section)
    mesh = sharding.make_mesh(cfg.sharding.fsdp)
    if cfg.train.batch_size % jax.device_count():
        raise ValueError(
            f"train.batch_size {cfg.train.batch_size} must be a multiple of the {jax.device_count()} devices"
        )
    train_source = data.load_source(cfg.data, cfg.data.train_split)
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
                labels=data.batch_labels(cfg),
            )

        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, train_state)
        mngr, start, restored, data_iter = checkpoints.resume(workdir, cfg, target, make_iterator)
        if restored is not None:
            train_state = restored

        best = data.best_target(cfg)
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
            do_eval = bool(targets) and (step % cfg.train.eval_every == 0 or step == total)
            if do_eval:
                results = evaluate(cfg, workdir, mesh, eval_fn, train_state, step, targets)
                logger.write(step, {f"{s}/{k}": v for s, r in results.items() for k, v in r.items() if _scalar(v)})
            if do_eval or step % cfg.checkpoint.every == 0 or step == total:
                first = results.get(best) if do_eval else None
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
        if not results and targets:
            step = int(train_state["step"])
            results = evaluate(cfg, workdir, mesh, eval_fn, train_state, step, targets)
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
    targets = data.eval_targets(cfg)
    for t in targets:
        data.ensure_dataset(t.data)
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
        results = evaluate(cfg, workdir, mesh, eval_fn, states, step, targets, tag)
    if jax.process_index() == 0:
        print(format_table(results))
    return results


def run_protocol(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """The papers' intra-dataset protocol: ``protocol.splits`` seeded re-splits of the dataset (its ``pool`` splits
    merged, sources kept together, cut by ``protocol.fractions``), each trained in ``workdir/splitNN`` and tested;
    then the median and spread of SROCC, PLCC and the logistic PLCC over the splits, in ``workdir/protocol.json``.

    Resumable split by split: a finished split (its ``done.json``) is not run again; an unfinished one resumes from
    its checkpoints.
    """
    p = cfg.protocol
    workdir = Path(workdir)
    parts = ("test",) if len(p.fractions) == 2 else ("val", "test")
    per_split = []
    for k in range(p.splits):
        run = workdir / f"split{k:02d}"
        done = run / "done.json"
        if done.exists():
            per_split.append(json.loads(done.read_text()))
            checkpoints.notice(f"protocol split {k}: done before, skipped")
            continue
        ck = ml_collections.ConfigDict(cfg.to_dict())
        ck.protocol.splits = 0
        ck.data.resplit = {"seed": int(p.seed) + k, "fractions": tuple(p.fractions), "pool": tuple(p.pool)}
        ck.data.train_split = "train"
        ck.eval.splits = parts
        checkpoints.notice(f"protocol split {k} of {p.splits} (seed {int(p.seed) + k}) in {run}")
        results = train_and_evaluate(ck, run)
        row = {label: {m: r.get(m) for m in PROTOCOL_METRICS} for label, r in results.items()}
        if jax.process_index() == 0:
            done.write_text(json.dumps(row, indent=1))
        per_split.append(row)
    summary = protocol_summary(per_split)
    if jax.process_index() == 0:
        (workdir / "protocol.json").write_text(json.dumps({"splits": per_split, "summary": summary}, indent=1))
        print(format_protocol(summary, len(per_split)))
    return summary


PROTOCOL_METRICS = ("srocc", "plcc", "plcc_logistic", "krocc")


def protocol_summary(per_split: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per eval target and metric: median, mean, std (population) and the min/max over the splits."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label in per_split[0]:
        out[label] = {}
        for m in PROTOCOL_METRICS:
            v = np.array([row[label][m] for row in per_split], np.float64)
            out[label][m] = {
                "median": float(np.nanmedian(v)),
                "mean": float(np.nanmean(v)),
                "std": float(np.nanstd(v)),
                "min": float(np.nanmin(v)),
                "max": float(np.nanmax(v)),
            }
    return out


def format_protocol(summary: dict[str, dict[str, dict[str, float]]], n: int) -> str:
    lines = [f"{'split':<8}{'metric':<15}{'median':>9}{'mean':>9}{'std':>9}{'min':>9}{'max':>9}   ({n} splits)"]
    for label, metrics_ in summary.items():
        for m, s in metrics_.items():
            lines.append(
                f"{label:<8}{m:<15}" + "".join(f"{s[k]:>9.4f}" for k in ("median", "mean", "std", "min", "max"))
            )
    return "\n".join(lines)
