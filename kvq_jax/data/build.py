"""Build the KVQ TFDS records without TensorFlow: ``python -m kvq_jax.data.build``.

Why our own CLI: ``tfds build`` imports TensorFlow when it loads and then wants Apache Beam. This calls
``Builder(...).download_and_prepare(...)`` directly and prints a report: examples per split, rank pairs
kept and dropped, and every video that was skipped, with the decoder's reason (also in ``skipped.json``
next to the records). A bad label row (missing file, NaN / non-numeric / empty score, duplicate name) stops
the build with an error naming the file and line.

    python -m kvq_jax.data.build --dataset kvq --manual_dir /data/KVQ --data_dir data/tfds
    python -m kvq_jax.data.build --dataset kvq_synthetic --data_dir data/tfds [--manual_dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from kvq_jax.data import kvq_layout
from kvq_jax.data.tfds_kvq import BUILDERS
from kvq_jax.data.tfds_kvq.base import SKIPPED_FILE


def build(
    dataset: str,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    num_shards: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prepare ``dataset`` under ``data_dir`` and return its build report (see :func:`format_report`)."""
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)}")
    if manual_dir is not None and not Path(manual_dir).is_dir():
        raise kvq_layout.LayoutError(f"{manual_dir}: --manual_dir is not a directory")
    builder = BUILDERS[dataset](data_dir=os.fspath(data_dir))
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # regenerates the records
    config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None,
        num_shards=num_shards,
        download_mode=mode,
    )
    builder.download_and_prepare(download_config=config)
    meta = json.loads((epath.Path(builder.data_path) / "metadata.json").read_text())
    return {
        "dataset": dataset,
        "path": str(builder.data_path),
        "examples": {name: info.num_examples for name, info in builder.info.splits.items()},
        "listed": meta["listed"],
        "labelled": meta["labelled"],
        "pairs": {s: {k: len(v) for k, v in sheets.items()} for s, sheets in meta["pairs"].items()},
        "dropped_pairs": meta["dropped_pairs"],
        "skipped": meta["skipped"],
        "manual_dir": meta["manual_dir"],
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable build report."""
    lines = [f"{report['dataset']}: {report['path']}  (from {report['manual_dir']})"]
    order = {s: i for i, s in enumerate(kvq_layout.SPLITS)}
    for split, n in sorted(report["examples"].items(), key=lambda kv: (order.get(kv[0], 9), kv[0])):
        listed = report["listed"].get(split, n)
        label = "" if report["labelled"].get(split, True) else "  (unlabelled: mos = NaN)"
        pairs = ", ".join(f"{k} {v}" for k, v in report["pairs"].get(split, {}).items()) or "none"
        lines.append(f"  {split:5s} {n:6d} examples of {listed} listed; rank pairs: {pairs}{label}")
    dropped = {k: v for k, v in report["dropped_pairs"].items() if v}
    if dropped:
        lines.append(f"  rank pairs dropped because they name a skipped video: {dropped}")
    skipped = report["skipped"]
    lines.append(
        f"  skipped {len(skipped)} video(s)" + (f", listed in {report['path']}/{SKIPPED_FILE}:" if skipped else "")
    )
    lines += [f"    [{s['split']}] {s['name']} ({s['path']}): {s['reason']}" for s in skipped]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build KVQ TFDS records (ArrayRecord) without TensorFlow.")
    parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write <dataset>/<version>/ into")
    parser.add_argument(
        "--manual_dir", default=None, help="the KVQ folder (required for kvq; optional for kvq_synthetic)"
    )
    parser.add_argument("--num_shards", type=int, default=None, help="ArrayRecord shards per split")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the records exist")
    args = parser.parse_args(argv)
    if args.dataset == "kvq" and args.manual_dir is None:
        parser.error("--manual_dir is required for --dataset kvq")
    try:
        report = build(args.dataset, args.data_dir, args.manual_dir, args.num_shards, args.overwrite)
    except kvq_layout.LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
