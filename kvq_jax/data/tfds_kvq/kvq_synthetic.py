"""TFDS builder ``kvq_synthetic``: the synthetic KVQ-like set of ``kvq_jax.data.synthetic``.

Build: ``python -m kvq_jax.data.build --dataset kvq_synthetic --data_dir data/tfds [--manual_dir DIR]``.
With ``--manual_dir`` the builder reads a set made by ``python -m kvq_jax.data.synthetic --out DIR`` (or any
folder in the KVQ layout); without one (or with an empty one) it generates the default CI-sized set into
``<data_dir>/downloads/kvq_synthetic`` first. Records are identical in format to ``kvq``; their ``dis_label`` is
the extra processing step of the video (``metadata.csv``'s ``process``: none, blur, noise, scale, enhance → 0–4),
the synthetic set's distortion classes.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from kvq_jax.data import kvq_layout, synthetic
from kvq_jax.data.tfds_kvq.base import KvqBuilderBase


class KvqSynthetic(KvqBuilderBase):
    """Synthetic KVQ-like set: procedural portrait clips, 7 versions per source (QP ladder 16-47, blur, noise,
    downscale, enhancement), parametric MOS on KVQ's 1-5 / 0.5 scale, rank pairs per split."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Optional. Point --manual_dir at the output of `python -m kvq_jax.data.synthetic --out DIR` (train/val/test
video folders, {split}_data.csv, rank-pair-{split}.xlsx, metadata.csv). Without it, the default set
(16 sources x 7 videos, 180x320, 64 frames, seed 0) is generated into <download_dir>/kvq_synthetic."""

    def _manual_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
        try:
            return Path(dl_manager.manual_dir)
        except AssertionError:  # no manual dir given, or an empty one: make the default set
            return synthetic.generate(Path(dl_manager.download_dir) / "kvq_synthetic")

    def _layouts(self, root: Path) -> dict[str, kvq_layout.SplitLayout]:
        """The KVQ layout, each video's ``dis_label`` its processing step from ``metadata.csv`` (when present)."""
        layouts = kvq_layout.read_layout(root)
        meta = root / "metadata.csv"
        if not meta.is_file():
            return layouts
        with meta.open(newline="") as f:
            process = {row["filename"]: synthetic.PROCESSES.index(row["process"]) for row in csv.DictReader(f)}
        return {
            split: dataclasses.replace(
                lay, videos=[dataclasses.replace(v, dis_label=process.get(v.name, -1)) for v in lay.videos]
            )
            for split, lay in layouts.items()
        }
