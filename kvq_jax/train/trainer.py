"""The training and evaluation loop: one clear loop in the big_vision / Flax-examples style.

Data parallelism is `jax.jit` with `NamedSharding` over a `("data", "fsdp")` device mesh (`train/sharding.py`):
batches are split over every device; params, EMA and optimiser state are replicated (`sharding.fsdp=1`) or split
over the fsdp axis by path rules, and GSPMD inserts the gradient all-reduce (or reduce-scatter). The model and
optimiser are built and stepped inside `jax.set_mesh(mesh)`. Multi-host runs call
`jax.distributed.initialize()` first (see `kvq_jax.main`); each process reads its own shard of the records
and only process 0 writes logs. The train state is a plain pytree so orbax can save it asynchronously,
together with the grain iterator, and resume exactly: dropout keys derive from (seed, step).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from kvq_jax.data import pipeline
from kvq_jax.data import views as views_lib
from kvq_jax.eval import challenge, metrics
from kvq_jax.models import abstract_model, get_model, get_spec, with_params
from kvq_jax.models.vqa import VQAModel, clip_batch
from kvq_jax.train import losses, optim, sharding
from kvq_jax.weights import read_params

PyTree = Any


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def model_branches(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The branches trained and evaluated: all of the model's, or the subset `cfg.branches` (e.g. DOVER's
    technical branch alone); the overall score is the sum over these branches."""
    branches = get_spec(cfg.model).branches
    chosen = tuple(cfg.get("branches") or branches)
    if not chosen or set(chosen) - set(branches):
        raise ValueError(f"branches={chosen}: {cfg.model} has {branches}")
    return tuple(b for b in branches if b in chosen)


def view_specs(cfg: ml_collections.ConfigDict) -> dict[str, views_lib.ViewSpec]:
    """The test-time views of the trained branches, with the config's per-branch overrides (e.g. shorter clips)."""
    preset = cfg.data.get("views") or get_spec(cfg.model).views
    specs = views_lib.preset_views(preset)
    overrides = cfg.data.get("view_overrides") or {}
    for branch, changes in overrides.items():
        if branch not in specs:
            raise ValueError(f"data.view_overrides names branch {branch!r}; the views have {sorted(specs)}")
        specs[branch] = dataclasses.replace(specs[branch], **dict(changes))
    branches = model_branches(cfg)
    return {b: v for b, v in specs.items() if b in branches}


def ensure_dataset(cfg: ml_collections.ConfigDict) -> None:
    """Build the TFDS records if absent; for the synthetic set, generate its videos first."""
    from kvq_jax.data import build, synthetic

    data = cfg.data
    marker = Path(data.data_dir) / data.name
    if marker.is_dir() and any(marker.rglob("dataset_info.json")):
        return
    manual_dir = data.get("manual_dir")
    if data.name == "kvq_synthetic":
        manual_dir = manual_dir or os.path.join(data.data_dir, "kvq_synthetic_raw")
        if jax.process_index() == 0:
            synthetic.generate(manual_dir, **dict(data.synthetic))
    elif not manual_dir:
        raise FileNotFoundError(
            f"no {data.name} records under {data.data_dir}; build them with "
            f"`python -m kvq_jax.data.build --dataset {data.name} --manual_dir KVQ_DIR --data_dir {data.data_dir}` "
            "or set --config.data.manual_dir"
        )
    if jax.process_index() == 0:
        report = build.build(data.name, data.data_dir, manual_dir)
        logging.info("built %s: %s", data.name, build.format_report(report))
    multihost_utils.sync_global_devices("dataset built")


def truth_and_pairs(cfg: ml_collections.ConfigDict, source: Any, split: str) -> tuple[dict, challenge.Pairs]:
    from kvq_jax.data.tfds_kvq.base import load_pairs

    truth = {}
    for i in range(len(source)):
        rec = source[i]
        name = rec["name"].decode() if isinstance(rec["name"], bytes) else str(rec["name"])
        truth[name] = float(rec["mos"])
    sheets = load_pairs(cfg.data.data_dir, cfg.data.name, split)
    pairs = challenge.Pairs(
        source=tuple(challenge.Pair(*p) for p in sheets.get("source", [])),
        nonsource=tuple(challenge.Pair(*p) for p in sheets.get("nonsource", [])),
    )
    return truth, pairs


# ---------------------------------------------------------------------------------------------------------
# Model, state and steps
# ---------------------------------------------------------------------------------------------------------


def make_mesh(cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    return sharding.make_mesh(cfg.sharding.fsdp)


def place_state(cfg: ml_collections.ConfigDict, mesh, params: nnx.State, tx) -> tuple[dict, PyTree]:
    """The train state built on device with its shardings (replicated, or FSDP-split by `cfg.sharding`), and
    those shardings: with FSDP the optimiser state is never whole on one device."""

    def init(p: nnx.State) -> dict:
        return init_state(cfg, p, tx)

    shardings = sharding.state_shardings(jax.eval_shape(init, params), mesh, cfg.sharding.rules, cfg.sharding.min_size)
    params = jax.device_put(params, shardings["params"])
    return jax.jit(init, out_shardings=shardings)(params), shardings


def build_model(cfg: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.GraphDef, nnx.State]:
    """(train graph, eval graph, float32 params): fresh, or from `cfg.init_weights` (converted or official)."""
    dtype = jnp.dtype(cfg.dtype)
    drop_path = cfg.get("drop_path_rate")
    if cfg.get("init_weights"):
        abstract = abstract_model(cfg.model, dtype=dtype, drop_path_rate=drop_path)
        model = with_params(abstract, read_params(cfg.init_weights, abstract))
    else:
        model = get_model(cfg.model, dtype=dtype, seed=cfg.seed, drop_path_rate=drop_path)
    model.train()
    train_graph = nnx.graphdef(model)
    model.eval()
    eval_graph = nnx.graphdef(model)
    return train_graph, eval_graph, nnx.state(model, nnx.Param)


def branch_scores(
    graph: nnx.GraphDef, params: nnx.State, batch: Mapping, branches, dtype, rngs: nnx.Rngs | None = None
) -> dict:
    """Per-video branch scores (B,) from uint8 views: normalised on device, clips averaged."""
    model: VQAModel = nnx.merge(graph, params)
    views = {b: views_lib.normalize(batch[b]).astype(dtype) for b in branches}
    flat, bsz = clip_batch(views)
    maps = model(flat, rngs=rngs)
    return {b: m.reshape(bsz, -1).mean(axis=1) for b, m in maps.items()}


def make_train_step(
    cfg: ml_collections.ConfigDict, graph: nnx.GraphDef, tx: optax.GradientTransformation, params: nnx.State
):
    """The jit-able step: loss and grads, optax update, EMA. Frozen params (cfg.optim.freeze) enter the loss
    through stop_gradient, so no backward pass is built through a frozen backbone (head-only transfer costs
    a forward pass); the optimiser also zeroes their (zero) updates."""
    branches = model_branches(cfg)
    frozen = jax.tree.map(lambda label: label == optim.FROZEN, optim.param_labels(params, freeze=cfg.optim.freeze))
    dtype = jnp.dtype(cfg.dtype)
    weights = dict(cfg.loss.weights)
    arank = dict(cfg.loss.get("arank_options") or {})
    ema_decay = cfg.get("ema_decay")
    base_key = jax.random.key(cfg.seed)

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        key = jax.random.fold_in(base_key, state["step"])  # resumed runs draw the same dropout masks

        def loss_fn(params):
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
            preds = branch_scores(graph, params, batch, branches, dtype, nnx.Rngs(dropout=key))
            return losses.vqa_loss(preds, batch["mos"], weights=weights, group=batch["source_id"], arank_options=arank)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        if "ema" in state:
            new["ema"] = optim.ema_update(state["ema"], params, ema_decay)
        aux = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))
        return new, aux

    return train_step


def make_eval_step(cfg: ml_collections.ConfigDict, graph: nnx.GraphDef):
    branches = model_branches(cfg)
    dtype = jnp.dtype(cfg.dtype)

    def eval_step(params: nnx.State, batch: dict) -> jax.Array:
        scores = branch_scores(graph, params, batch, branches, dtype)
        return jnp.stack([scores[b] for b in branches], axis=-1)  # (B, branches)

    return eval_step


def init_state(cfg: ml_collections.ConfigDict, params: nnx.State, tx: optax.GradientTransformation) -> dict:
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    if cfg.get("ema_decay"):
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def optimizer_config(cfg: ml_collections.ConfigDict, total_steps: int) -> dict:
    oc = dict(cfg.optim)
    oc.setdefault("total_steps", total_steps)
    if "warmup_steps" not in oc:
        oc["warmup_steps"] = round(cfg.optim_warmup_fraction * total_steps)
    return oc


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------


def _names_to_array(names: np.ndarray, width: int = 256) -> np.ndarray:
    out = np.zeros((len(names), width), np.uint8)
    for i, n in enumerate(names):
        raw = n if isinstance(n, bytes) else str(n).encode()
        if len(raw) > width:
            raise ValueError(f"video name longer than {width} bytes: {raw[:60]!r}...")
        out[i, : len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def _array_to_names(arr: np.ndarray) -> list[str]:
    return [bytes(row[row > 0]).decode() for row in arr]


def predict_split(
    cfg: ml_collections.ConfigDict, mesh, eval_fn, param_sets: Mapping[str, nnx.State], source, desc: str
) -> tuple[dict[str, dict[str, np.ndarray]], list[tuple[str, str]]]:
    """Per-video branch scores for every video of `source`, for each param set (e.g. raw and EMA).

    Returns ({set: {"name": names, "scores": (n, branches)}}, failed videos [(name, reason)]).
    """
    specs = view_specs(cfg)
    it = pipeline.eval_iterator(
        source,
        specs,
        global_batch_size=cfg.eval.batch_size,
        num_clips=cfg.eval.get("num_clips"),
        num_workers=cfg.data.num_workers,
        mesh=mesh,
    )
    local: dict[str, list[np.ndarray]] = {k: [] for k in param_sets}
    names, valid, failed = [], [], []
    n_batches = pipeline.eval_num_batches(len(source), cfg.eval.batch_size)
    for batch in tqdm(it, desc=desc, total=n_batches, disable=jax.process_index() != 0, leave=False):
        failed += pipeline.failed_names(batch)
        names.append(_names_to_array(batch["name"]))
        valid.append(np.asarray(batch["valid"]))
        dev = pipeline.to_global(batch, mesh)
        for key, params in param_sets.items():
            out = eval_fn(params, {k: v for k, v in dev.items() if k not in pipeline.HOST_FIELDS})
            local[key].append(
                np.asarray(multihost_utils.global_array_to_host_local_array(out, mesh, P(sharding.BATCH_AXES)))
            )
    gathered_names = multihost_utils.process_allgather(np.concatenate(names), tiled=True)
    gathered_valid = multihost_utils.process_allgather(np.concatenate(valid), tiled=True).astype(bool)
    all_names = np.array(_array_to_names(gathered_names), dtype=object)[gathered_valid]
    out = {}
    for key, parts in local.items():
        scores = multihost_utils.process_allgather(np.concatenate(parts), tiled=True)[gathered_valid]
        out[key] = {"name": all_names, "scores": np.asarray(scores, np.float64)}
    return out, failed


def score_predictions(cfg, names, scores, truth, pairs: challenge.Pairs) -> dict[str, float]:
    """Challenge score and correlations of the overall prediction (the fused branch scores).

    A split without rank pairs of both kinds (e.g. train) has no challenge `final`: it is NaN there and
    the rank accuracies are NaN for the missing sheet.
    """
    branches = model_branches(cfg)
    overall = fuse(scores)
    pred = dict(zip(names, overall.tolist(), strict=True))
    y = np.array([truth[n] for n in names])
    if pairs.source and pairs.nonsource:
        result = challenge.challenge_score(pred, {n: truth[n] for n in names}, pairs).to_dict()
    else:
        result = {**metrics.correlations(overall, y), "n": len(names), "final": math.nan}
        result["rank1"] = challenge.pair_accuracy(pred, pairs.source) if pairs.source else math.nan
        result["rank2"] = challenge.pair_accuracy(pred, pairs.nonsource) if pairs.nonsource else math.nan
    for i, b in enumerate(branches):
        result[f"{b}_srocc"] = metrics.srocc(scores[:, i], y)
    return result


def fuse(scores: np.ndarray) -> np.ndarray:
    """Overall score per video: the sum of its branch scores (DOVER trains each branch against the MOS and
    sums them; the sigmoid fusion constants of its demo only fit the released checkpoint)."""
    return scores.sum(axis=1)


def write_predictions(path: Path, cfg, names, scores) -> None:
    branches = model_branches(cfg)
    overall = fuse(scores)
    lines = ["filename," + ",".join(branches) + ",score"]
    lines += [
        f"{n}," + ",".join(f"{v:.8g}" for v in row) + f",{o:.8g}"
        for n, row, o in zip(names, scores, overall, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def evaluate(cfg, workdir: Path, mesh, eval_fn, state: Mapping, step: int, splits) -> dict[str, dict]:
    """Evaluate raw (and EMA) params on `splits`; write predictions CSVs and results/<split>.json."""
    param_sets = {"raw": state["params"]}
    if "ema" in state:
        param_sets["ema"] = state["ema"]
    all_results = {}
    for split in splits:
        source = pipeline.load_split(cfg.data.data_dir, cfg.data.name, split)
        preds, failed = predict_split(cfg, mesh, eval_fn, param_sets, source, f"eval {split}")
        truth, pairs = truth_and_pairs(cfg, source, split)
        result: dict[str, Any] = {"step": step, "split": split, "failed": [list(f) for f in failed]}
        for key, p in preds.items():
            scored = score_predictions(cfg, p["name"], p["scores"], truth, pairs)
            if key == "raw":
                result.update(scored)
            else:
                result[key] = scored
            if jax.process_index() == 0:
                (workdir / "predictions").mkdir(parents=True, exist_ok=True)
                write_predictions(
                    workdir / "predictions" / f"{split}_{key}_step{step}.csv", cfg, p["name"], p["scores"]
                )
        if failed:
            logging.warning("%s: %d video(s) failed to decode and were not scored: %s", split, len(failed), failed)
        if jax.process_index() == 0:
            (workdir / "results").mkdir(parents=True, exist_ok=True)
            (workdir / "results" / f"{split}.json").write_text(json.dumps(result, indent=1))
        all_results[split] = result
    return all_results


def format_table(results: Mapping[str, Mapping]) -> str:
    """The challenge score table: one row per split and param set."""
    cols = ("final", "srocc", "plcc", "rank1", "rank2", "krocc")
    lines = [f"{'split':<8}{'model':<6}" + "".join(f"{c:>9}" for c in cols)]
    for split, r in results.items():
        for key, row in (("raw", r), ("ema", r.get("ema"))):
            if row:
                lines.append(f"{split:<8}{key:<6}" + "".join(f"{row[c]:>9.4f}" for c in cols))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Logging and checkpoints
# ---------------------------------------------------------------------------------------------------------


class MetricLogger:
    """JSONL + TensorBoard scalars, written by process 0 only."""

    def __init__(self, workdir: Path):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.jsonl = open(workdir / "metrics.jsonl", "a")
            self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self.jsonl.flush()
        for k, v in scalars.items():
            self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def checkpoint_manager(workdir: Path, cfg) -> ocp.CheckpointManager:
    """Keeps the latest checkpoint and the best by validation final score; async saves."""
    policies = ocp.checkpoint_managers
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(cfg.checkpoint.keep_latest),
            policies.BestN(get_metric_fn=lambda m: m["final"], n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation, enable_async_checkpointing=cfg.checkpoint.get("async", True)
    )
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(), item_names=("state", "data_iter"), options=options
    )


# ---------------------------------------------------------------------------------------------------------
# Main loop
# ---------------------------------------------------------------------------------------------------------


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
    """Train (resuming from `workdir` if it holds a checkpoint), evaluate periodically and at the end."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=1))
    ensure_dataset(cfg)
    mesh = make_mesh(cfg)
    if cfg.train.batch_size % jax.device_count():
        raise ValueError(
            f"train.batch_size {cfg.train.batch_size} must be a multiple of the {jax.device_count()} devices"
        )
    train_source = pipeline.load_split(cfg.data.data_dir, cfg.data.name, cfg.data.train_split)
    steps_per_epoch = max(1, len(train_source) // cfg.train.batch_size)
    total = cfg.train.get("num_steps") or int(cfg.train.num_epochs * steps_per_epoch)
    tx_cfg = optimizer_config(cfg, total)
    logger = MetricLogger(workdir)

    with jax.set_mesh(mesh):
        train_graph, eval_graph, params = build_model(cfg)
        tx = optim.make_optimizer(tx_cfg, params)
        state, state_sharding = place_state(cfg, mesh, params, tx)
        train_step = jax.jit(
            make_train_step(cfg, train_graph, tx, params),
            out_shardings=(state_sharding, NamedSharding(mesh, P())),
            donate_argnums=0,
        )
        eval_fn = jax.jit(make_eval_step(cfg, eval_graph))
        mngr = checkpoint_manager(workdir, cfg)
        start = mngr.latest_step() or 0
        iter_fits = start and _iterator_checkpoint_fits(mngr, start)
        train_views = {k: dataclasses.replace(v, num_clips=1) for k, v in view_specs(cfg).items()}
        data_iter = pipeline.train_iterator(
            train_source,
            train_views,
            global_batch_size=cfg.train.batch_size,
            seed=cfg.seed,
            num_workers=cfg.data.num_workers,
            mesh=mesh,
            start_batch=0 if iter_fits else start,
        )
        if start:
            items = {"state": ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, state))}
            if iter_fits:
                items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
            else:
                logging.info("data iterator saved for another process count: data resume at batch %d", start)
            state = mngr.restore(start, args=ocp.args.Composite(**items))["state"]
            logging.info("resumed from step %d in %s", start, workdir)

        eval_splits = tuple(cfg.eval.splits)
        bar = tqdm(total=total, initial=start, desc="train", disable=jax.process_index() != 0, unit="step")
        t0, seen = time.perf_counter(), 0
        results: dict[str, dict] = {}
        for step in range(start + 1, total + 1):
            batch = next(data_iter)
            dev = pipeline.to_global({k: v for k, v in batch.items() if k not in pipeline.HOST_FIELDS}, mesh)
            state, aux = train_step(state, dev)
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
                results = evaluate(cfg, workdir, mesh, eval_fn, state, step, eval_splits)
                logger.write(step, {f"{s}/{k}": v for s, r in results.items() for k, v in r.items() if _scalar(v)})
            if do_eval or step % cfg.checkpoint.every == 0 or step == total:
                first = results.get(eval_splits[0]) if do_eval else None
                mngr.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), data_iter=grain.checkpoint.CheckpointSave(data_iter)
                    ),
                    metrics={"final": selection_metric(first)} if first else None,
                )
        bar.close()
        mngr.wait_until_finished()
        if not results and eval_splits:
            results = evaluate(cfg, workdir, mesh, eval_fn, state, int(state["step"]), eval_splits)
    logger.close()
    if jax.process_index() == 0 and results:
        print(format_table(results))
    return results


def _iterator_checkpoint_fits(mngr: ocp.CheckpointManager, step: int) -> bool:
    """Whether this process's grain iterator state is in the checkpoint (grain names it per process and
    process count); if not, the data position follows from the step (see `pipeline.train_iterator`)."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return (mngr.directory / str(step) / "data_iter" / name).exists()  # an epath: local or gs://


def selection_metric(result: Mapping[str, Any]) -> float:
    """What "best" checkpoints are chosen by: the challenge final score, or SROCC where a split has no pairs."""
    final = float(result["final"])
    return final if math.isfinite(final) else float(result["srocc"])


def _scalar(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def evaluate_only(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
    """Evaluate the latest checkpoint in `workdir` (or `cfg.init_weights` when there is none)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ensure_dataset(cfg)
    mesh = make_mesh(cfg)
    with jax.set_mesh(mesh):
        _, eval_graph, params = build_model(cfg)
        params = jax.device_put(params, NamedSharding(mesh, P()))  # restore targets every process's devices
        state: dict[str, Any] = {"params": params}
        ckpt_dir = workdir / "checkpoints"
        if ckpt_dir.is_dir():
            mngr = ocp.CheckpointManager(ckpt_dir.absolute(), item_names=("state", "data_iter"))
            step = mngr.latest_step()
            if step is not None:
                meta = mngr.item_metadata(step)["state"]
                keys = [k for k in ("params", "ema") if k in meta]
                abstract = {k: jax.tree.map(ocp.utils.to_shape_dtype_struct, params) for k in keys}
                restore = ocp.args.PyTreeRestore(
                    abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True
                )
                restored = mngr.restore(step, args=ocp.args.Composite(state=restore))
                state = dict(restored["state"])
        eval_fn = jax.jit(make_eval_step(cfg, eval_graph))
        results = evaluate(cfg, workdir, mesh, eval_fn, state, 0, tuple(cfg.eval.splits))
    if jax.process_index() == 0:
        print(format_table(results))
    return results
