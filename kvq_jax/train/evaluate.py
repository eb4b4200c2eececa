"""Evaluation during and after training: predict a split with raw and EMA params, score it, write CSV and JSON.

Every process predicts its own contiguous slice of the split (padded so all run the same number of collective
steps); the names and scores are all-gathered, so process 0 writes complete files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from kvq_jax.data import pipeline
from kvq_jax.eval import challenge, metrics
from kvq_jax.train import optim, sharding
from kvq_jax.train.data import EvalTarget, load_source, score_names, truth_and_pairs, view_specs


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
    cfg: ml_collections.ConfigDict,
    mesh,
    eval_fn,
    param_sets: Mapping[str, nnx.State],
    stats: nnx.State,
    source,
    desc: str,
) -> tuple[dict[str, dict[str, np.ndarray]], list[tuple[str, str]]]:
    """Per-video branch scores for every video of `source`, for each param set (e.g. raw and EMA), with the
    model's other variables `stats`.

    Returns ({set: {"name": names, "scores": (n, branches)}}, failed videos [(name, reason)]).
    """
    specs = view_specs(cfg)
    it = pipeline.eval_iterator(
        source,
        specs,
        global_batch_size=cfg.eval.batch_size,
        num_clips=cfg.eval.get("num_clips"),
        tta=cfg.eval.get("tta") or 1,
        seed=cfg.seed,
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
            out = eval_fn(params, stats, {k: v for k, v in dev.items() if k not in pipeline.HOST_FIELDS})
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
    branches = score_names(cfg)
    pred = dict(zip(names, fuse(scores).tolist(), strict=True))
    y = np.array([truth[n] for n in names])
    result = challenge.split_score(pred, {n: truth[n] for n in names}, pairs)
    for i, b in enumerate(branches):
        result[f"{b}_srocc"] = metrics.srocc(scores[:, i], y)
    return result


def fuse(scores: np.ndarray) -> np.ndarray:
    """Overall score per video: the sum of its branch scores (DOVER trains each branch against the MOS and
    sums them; the sigmoid fusion constants of its demo only fit the released checkpoint)."""
    return scores.sum(axis=1)


def write_predictions(path: Path, cfg, names, scores) -> None:
    branches = score_names(cfg)
    overall = fuse(scores)
    lines = ["filename," + ",".join(branches) + ",score"]
    lines += [
        f"{n}," + ",".join(f"{v:.8g}" for v in row) + f",{o:.8g}"
        for n, row, o in zip(names, scores, overall, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def evaluate(
    cfg,
    workdir: Path,
    mesh,
    eval_fn,
    states: Mapping | Sequence[Mapping],
    step: int,
    targets: Sequence[EvalTarget],
    tag: str | None = None,
) -> dict[str, dict]:
    """Evaluate raw (and EMA) params on each target (`train.data.eval_targets`); write predictions CSVs and
    results/<label>.json.

    With several train states (checkpoints of one run) their per-video predictions are averaged before scoring:
    the NTIRE 2024 KVQ winner's checkpoint ensemble. Files are named by `tag` (default ``step<step>``).
    """
    states = [states] if isinstance(states, Mapping) else list(states)
    tag = tag or f"step{step}"
    all_results = {}
    for target in targets:
        label, split = target.label, target.split
        source = load_source(target.data, split)
        runs = []
        for state in states:
            param_sets = {"raw": state["params"]}
            if "ema" in state:
                param_sets["ema"] = optim.ema_params(state["params"], state["ema"])
            stats = state.get("stats", nnx.State({}))
            runs.append(predict_split(cfg, mesh, eval_fn, param_sets, stats, source, f"eval {label}"))
        preds = {
            key: dict(p, scores=np.mean([r[0][key]["scores"] for r in runs], axis=0)) for key, p in runs[0][0].items()
        }
        failed = runs[0][1]
        truth, pairs = truth_and_pairs(target.data, source, split)
        result: dict[str, Any] = {"step": step, "split": split, "failed": [list(f) for f in failed]}
        if label != split or target.data.name != cfg.data.name:
            result["dataset"] = target.data.name
        if len(states) > 1:
            result["averaged_checkpoints"] = len(states)
        for key, p in preds.items():
            scored = score_predictions(cfg, p["name"], p["scores"], truth, pairs)
            if key == "raw":
                result.update(scored)
            else:
                result[key] = scored
            if jax.process_index() == 0:
                (workdir / "predictions").mkdir(parents=True, exist_ok=True)
                file = f"{label.replace('/', '_')}_{key}_{tag}.csv"
                write_predictions(workdir / "predictions" / file, cfg, p["name"], p["scores"])
        if failed:
            logging.warning("%s: %d video(s) failed to decode and were not scored: %s", label, len(failed), failed)
        if jax.process_index() == 0:
            (workdir / "results").mkdir(parents=True, exist_ok=True)
            (workdir / "results" / f"{label.replace('/', '_')}.json").write_text(json.dumps(result, indent=1))
        all_results[label] = result
    return all_results


def format_table(results: Mapping[str, Mapping]) -> str:
    """The challenge score table: one row per eval target and param set."""
    width = max([8, *(len(label) + 2 for label in results)])
    cols = challenge.TABLE_COLUMNS
    lines = [f"{'split':<{width}}{'model':<6}" + "".join(f"{title:>9}" for _, title in cols)]
    for label, r in results.items():
        for key, row in (("raw", r), ("ema", r.get("ema"))):
            if row:
                lines.append(f"{label:<{width}}{key:<6}" + "".join(f"{row[c]:>9.4f}" for c, _ in cols))
    return "\n".join(lines)
