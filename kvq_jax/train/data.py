"""What a training run reads: the model's branches and views under the config, the records, truth and pairs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from kvq_jax.data import pipeline
from kvq_jax.data import views as views_lib
from kvq_jax.eval import challenge
from kvq_jax.models import get_spec
from kvq_jax.models.registry import AuxLoss


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


def aux_losses(cfg: ml_collections.ConfigDict) -> tuple[tuple[AuxLoss, float], ...]:
    """The model's auxiliary training terms with their weights (``loss.aux_weights`` over the spec's own); a
    weight of 0 leaves a term out."""
    terms = get_spec(cfg.model).aux_losses
    weights = dict(cfg.loss.get("aux_weights") or {})
    unknown = set(weights) - {t.name for t in terms}
    if unknown:
        raise ValueError(f"loss.aux_weights names {sorted(unknown)}; {cfg.model} has {[t.name for t in terms]}")
    chosen = ((t, float(weights.get(t.name, t.weight))) for t in terms)
    return tuple((t, w) for t, w in chosen if w)


def batch_labels(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The record labels the training batches must carry: those of the active auxiliary losses."""
    return tuple(dict.fromkeys(label for term, _ in aux_losses(cfg) for label in term.labels))


def train_view_specs(cfg: ml_collections.ConfigDict) -> dict[str, views_lib.ViewSpec]:
    """The training form of `view_specs`: one clip per branch (the official transfer-learning scripts)."""
    return {k: dataclasses.replace(v, num_clips=1) for k, v in view_specs(cfg).items()}


def ensure_dataset(data: ml_collections.ConfigDict) -> None:
    """Build a data section's TFDS records if absent (the synthetic set: generate its videos first; a labelled
    folder: with its ``folder`` options)."""
    from kvq_jax.data import build, synthetic

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
            f"`python -m kvq_jax.data.build --dataset {data.name} --manual_dir DIR --data_dir {data.data_dir}` "
            "or set the data section's manual_dir"
        )
    if jax.process_index() == 0:
        folder = data.get("folder")
        report = build.build(data.name, data.data_dir, manual_dir, folder=dict(folder) if folder else None)
        logging.info("built %s: %s", data.name, build.format_report(report))
    multihost_utils.sync_global_devices(f"dataset {data.name} built")


class Subset:
    """Random access to some records of a data source (a re-split), in their order."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.source[self.indices[i]]


def load_source(data: ml_collections.ConfigDict, split: str) -> Any:
    """A split's records. With ``data.resplit`` (the intra-dataset protocol) the ``pool`` splits are merged and
    re-split, sources kept together, into train / (val /) test by ``fractions`` with ``seed``."""
    from kvq_jax.data import labels
    from kvq_jax.data.tfds_kvq import load_metadata

    resplit = data.get("resplit")
    if not resplit or not resplit.get("fractions"):
        return pipeline.load_split(data.data_dir, data.name, split)
    pool = tuple(resplit.pool)
    union = pipeline.load_split(data.data_dir, data.name, "+".join(pool))
    index = load_metadata(data.data_dir, data.name)["index"]
    sources = [sid for s in pool for _, sid in index[s]]
    if len(sources) != len(union):
        raise ValueError(f"{data.name}: the index lists {len(sources)} records of {pool}, the records {len(union)}")
    parts = labels.source_aware_split(sources, tuple(resplit.fractions), int(resplit.seed))
    if split not in parts:
        raise ValueError(f"re-split {data.name} has parts {sorted(set(parts))}, not {split!r}")
    return Subset(union, [i for i, p in enumerate(parts) if p == split])


@dataclasses.dataclass(frozen=True)
class EvalTarget:
    """A results table's row: ``label`` (results, files and TensorBoard names), a data section and its split."""

    label: str
    data: ml_collections.ConfigDict
    split: str


def eval_targets(cfg: ml_collections.ConfigDict) -> list[EvalTarget]:
    """The training dataset's ``eval.splits``, then each named set of ``eval.sets`` (any dataset: a data section's
    fields over the training one's, plus ``split``), e.g. LSVQ-train's run reporting KoNViD-1k and LIVE-VQC."""
    targets = [EvalTarget(s, cfg.data, s) for s in cfg.eval.splits]
    for label, extra in (cfg.eval.get("sets") or {}).items():
        data = ml_collections.ConfigDict(cfg.data.to_dict())
        data.resplit = ml_collections.ConfigDict()
        fields = {k: v for k, v in dict(extra).items() if k != "split"}
        data.update(fields)
        targets.append(EvalTarget(label, data, extra.get("split", "test")))
    labels = [t.label for t in targets]
    if len(set(labels)) < len(labels):
        raise ValueError(f"eval targets must have distinct names: {labels}")
    return targets


def best_target(cfg: ml_collections.ConfigDict) -> str | None:
    """The eval target whose score picks the "best" checkpoint: ``eval.best``, else the first."""
    labels = [t.label for t in eval_targets(cfg)]
    best = cfg.eval.get("best") or (labels[0] if labels else None)
    if best is not None and best not in labels:
        raise ValueError(f"eval.best={best!r} is none of the eval targets {labels}")
    return best


def truth_and_pairs(data: ml_collections.ConfigDict, source: Any, split: str) -> tuple[dict, challenge.Pairs]:
    """MOS per video name, and the split's rank pairs (empty where the dataset has no pair sheets)."""
    from kvq_jax.data.tfds_kvq.base import load_pairs

    truth = {}
    for i in range(len(source)):
        rec = source[i]
        name = rec["name"].decode() if isinstance(rec["name"], bytes) else str(rec["name"])
        truth[name] = float(rec["mos"])
    if data.get("resplit") and data.resplit.get("fractions"):
        return truth, challenge.Pairs((), ())
    sheets = load_pairs(data.data_dir, data.name, split)
    pairs = challenge.Pairs(
        source=tuple(challenge.Pair(*p) for p in sheets.get("source", [])),
        nonsource=tuple(challenge.Pair(*p) for p in sheets.get("nonsource", [])),
    )
    return truth, pairs
