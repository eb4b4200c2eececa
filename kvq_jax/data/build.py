"""Build the KVQ TFDS records without TensorFlow: ``python -m kvq_jax.data.build``.

Why our own CLI: ``tfds build`` imports TensorFlow when it loads and then wants Apache Beam. This calls
``Builder(...).download_and_prepare(...)`` directly and prints a report: examples per split, rank pairs
kept and dropped, and every video that was skipped, with the decoder's reason (also in ``skipped.json``
next to the records). A bad label row (missing file, NaN / non-numeric / empty score, duplicate name) stops
the build with an error naming the file and line.

    python -m kvq_jax.data.build --dataset kvq --manual_dir /data/KVQ --data_dir data/tfds
    python -m kvq_jax.data.build --dataset kvq_synthetic --data_dir data/tfds [--manual_dir DIR]
    python -m kvq_jax.data.build --dataset vqa_folder/konvid --manual_dir /data/KoNViD --data_dir data/tfds
    python -m kvq_jax.data.build --dataset vqa_folder/mine --manual_dir /data/mine --data_dir data/tfds \
        --labels labels.csv --name-column file --score-column mos --split 0.8
    python -m kvq_jax.data.build --dataset kvq --manual_dir /data/KVQ --data_dir data/tfds_frames --frames jpeg

``--frames jpeg`` also stores every frame, decoded once, as JPEG (``--frames_quality``, ``--frames_short_side``;
what is kept and which views it serves: `kvq_jax.data.frames`). Records with and without frames are the same
dataset version: build them into different ``--data_dir`` s (a mismatch with records already there is an error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from kvq_jax.data import kvq_layout, labels
from kvq_jax.data.frames import FORMATS, FrameOptions
from kvq_jax.data.tfds_kvq import BUILDERS, FolderConfig, VqaFolder
from kvq_jax.data.tfds_kvq.base import SKIPPED_FILE

FOLDER = "vqa_folder"


def make_builder(
    dataset: str, data_dir: str | os.PathLike, folder: Mapping | None = None, frames: FrameOptions | None = None
) -> tfds.core.DatasetBuilder:
    """The builder of ``dataset``: ``kvq``, ``kvq_synthetic``, a standard dataset ``vqa_folder/<preset>``, or
    ``vqa_folder/<your name>`` with ``folder`` options (`kvq_jax.data.labels.spec_from_options`); ``frames``:
    pre-extract every frame into the records."""
    family, _, config = dataset.partition("/")
    common = {"data_dir": os.fspath(data_dir), "frames": frames}
    if family == FOLDER:
        if not config:
            raise ValueError(f"name the folder dataset: {FOLDER}/<name> (presets: {sorted(labels.PRESETS)})")
        if folder:
            spec = labels.spec_from_options(folder)
            return VqaFolder(config=FolderConfig(name=config, spec=spec), **common)
        if config not in labels.PRESETS:
            raise ValueError(f"{dataset}: not a preset ({sorted(labels.PRESETS)}); give its label options")
        return VqaFolder(config=config, **common)
    if dataset not in BUILDERS or config:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)} or {FOLDER}/<name>")
    return BUILDERS[dataset](**common)


def build(
    dataset: str,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    num_shards: int | None = None,
    overwrite: bool = False,
    folder: Mapping | None = None,
    frames: FrameOptions | None = None,
) -> dict[str, Any]:
    """Prepare ``dataset`` under ``data_dir`` and return its build report (see :func:`format_report`).

    Raises ``ValueError`` when records already there were built with other ``frames`` options than asked for."""
    if manual_dir is not None and not Path(manual_dir).is_dir():
        raise kvq_layout.LayoutError(f"{manual_dir}: --manual_dir is not a directory")
    builder = make_builder(dataset, data_dir, folder, frames)
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
    wanted = frames.as_dict() if frames else None
    if meta.get("frames") != wanted:
        raise ValueError(
            f"{builder.data_path} holds records built with frames={meta.get('frames')}, not {wanted}: "
            "pass --overwrite, or another --data_dir"
        )
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
        "frames": wanted,
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
    if report.get("frames"):
        lines.append(f"  pre-extracted frames: {report['frames']}")
    return "\n".join(lines)


def _column(text: str | None) -> str | int | None:
    return int(text) if text is not None and text.isdigit() else text


def folder_options(args: argparse.Namespace) -> dict[str, Any]:
    """The labelled-folder options given on the command line (empty: a preset or another dataset)."""
    opts: dict[str, Any] = {}
    if args.labels:
        pairs = [item.partition("=") for item in args.labels.split(",")]
        opts["labels"] = args.labels if len(pairs) == 1 and not pairs[0][1] else {s: f for s, _, f in pairs}
    for key in ("name", "score", "split", "source_id"):
        if getattr(args, f"{key}_column") is not None:
            opts[key] = _column(getattr(args, f"{key}_column"))
    if args.extra_columns:
        opts["extra"] = tuple(_column(c) for c in args.extra_columns.split(","))
    if args.split:
        parts = [float(x) for x in args.split.split(",")]
        opts["fractions"] = (parts[0], round(1 - parts[0], 10)) if len(parts) == 1 else tuple(parts)
    for key in ("suffix", "videos", "seed"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    return opts


def frame_options(args: argparse.Namespace) -> FrameOptions | None:
    """The ``--frames`` options (None without ``--frames``); ``ValueError`` for bad or orphaned values."""
    if args.frames == "none":
        if args.frames_quality is not None or args.frames_short_side is not None:
            raise ValueError("--frames_quality and --frames_short_side need --frames jpeg")
        return None
    opts: dict[str, Any] = {"format": args.frames, "short_side": args.frames_short_side}
    if args.frames_quality is not None:
        opts["quality"] = args.frames_quality
    return FrameOptions(**opts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build VQA TFDS records (ArrayRecord) without TensorFlow.")
    parser.add_argument(
        "--dataset",
        required=True,
        help=f"{', '.join(sorted(BUILDERS))}, {FOLDER}/<preset> ({', '.join(sorted(labels.PRESETS))}) "
        f"or {FOLDER}/<your name> with the label options below",
    )
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write <dataset>/<version>/ into")
    parser.add_argument("--manual_dir", default=None, help="the dataset's folder (required but for kvq_synthetic)")
    parser.add_argument("--num_shards", type=int, default=None, help="ArrayRecord shards per split")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the records exist")
    parser.add_argument(
        "--frames",
        choices=("none", *FORMATS),
        default="none",
        help="also store every frame, decoded once, as JPEG (views then skip the video decode)",
    )
    parser.add_argument("--frames_quality", type=int, help="JPEG quality of --frames, 1-100 (default 90)")
    parser.add_argument(
        "--frames_short_side", type=int, help="reduce --frames to this short side (resize views only; default native)"
    )
    folder = parser.add_argument_group("a labelled folder of your own")
    folder.add_argument("--labels", help="label file, or split=file,... (one file per split)")
    for key in ("name", "score", "split", "source_id"):
        folder.add_argument(f"--{key.replace('_', '-')}-column", help=f"the {key} column: title or 0-based index")
    folder.add_argument("--extra-columns", help="further numeric labels to keep, comma-separated")
    folder.add_argument("--split", help="fraction for train (e.g. 0.8), or train,val,test fractions")
    folder.add_argument("--seed", type=int, help="seed of the source-aware random split (default 0)")
    folder.add_argument("--suffix", help="added to names that lack it (e.g. .mp4)")
    folder.add_argument("--videos", help="sub-folder the names are relative to")
    args = parser.parse_args(argv)
    if args.dataset != "kvq_synthetic" and args.manual_dir is None:
        parser.error(f"--manual_dir is required for --dataset {args.dataset}")
    try:
        opts, frames = folder_options(args), frame_options(args)
        report = build(args.dataset, args.data_dir, args.manual_dir, args.num_shards, args.overwrite, opts, frames)
    except (kvq_layout.LayoutError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
