"""What a training run reads: the model's branches and views under the config, the records, truth and pairs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from kvq_jax.data import views as views_lib
from kvq_jax.eval import challenge
from kvq_jax.models import get_spec


def model_branches(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The branches trained and evaluated: all of the model's, or the subset `cfg.branches` (e.g. DOVER's
    technical branch alone); the overall score is the sum over these branches."""
    branches = get_spec(cfg.model).branch_names
    chosen = tuple(cfg.get("branches") or branches)
    if not chosen or set(chosen) - set(branches):
        raise ValueError(f"branches={chosen}: {cfg.model} has {branches}")
    return tuple(b for b in branches if b in chosen)


def score_names(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The scores trained and reported: one per trained branch, or the model's own outputs."""
    return get_spec(cfg.model).scores_of(model_branches(cfg))


def view_specs(cfg: ml_collections.ConfigDict) -> dict[str, views_lib.ViewSpec]:
    """The test-time views of the trained branches, with the config's per-branch overrides (e.g. shorter clips)."""
    specs = get_spec(cfg.model).views
    overrides = cfg.data.get("view_overrides") or {}
    for branch, changes in overrides.items():
        if branch not in specs:
            raise ValueError(f"data.view_overrides names branch {branch!r}; the views have {sorted(specs)}")
        specs[branch] = dataclasses.replace(specs[branch], **dict(changes))
    branches = model_branches(cfg)
    return {b: v for b, v in specs.items() if b in branches}


def train_view_specs(cfg: ml_collections.ConfigDict) -> dict[str, views_lib.ViewSpec]:
    """The training form of `view_specs`: one clip per branch (the official transfer-learning scripts)."""
    return {k: dataclasses.replace(v, num_clips=1) for k, v in view_specs(cfg).items()}


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
    """MOS per video name, and the split's rank pairs (empty where the dataset has no pair sheets)."""
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
