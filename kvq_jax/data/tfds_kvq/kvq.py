"""TFDS builder ``kvq``: the NTIRE 2024 KVQ challenge data from a manual download, without TensorFlow.

Build: ``python -m kvq_jax.data.build --dataset kvq --manual_dir /path/to/KVQ --data_dir data/tfds``.

The manual dir is the challenge release (as the KVQ code and challenge entries use it)::

    train/0001.mp4 ...   val/...   test/...      7 consecutive numbers per source: source = (n - 1) // 7
    train_data.csv       "filename,score", filename relative to the folder ("train/0001.mp4")
    val_data.csv | truth.csv | groundtruth_label/truth.csv
    test_data.csv        (optional; no score column -> unlabelled split, MOS NaN)
    rank-pair-val.xlsx   (optional) sheets source / nonsource: video1, video2, rank (1 = video1 better)

Details (accepted variants, validation) in ``kvq_jax.data.kvq_layout``; the record format, probing of
every video and the metadata (pairs, skipped videos) in ``kvq_jax.data.tfds_kvq.base``.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from kvq_jax.data import kvq_layout
from kvq_jax.data.tfds_kvq.base import KvqBuilderBase


def find_kvq_root(manual_dir: Path) -> Path:
    """``manual_dir`` itself, or its single sub-folder that holds the label files (an unpacked archive)."""

    def has_labels(d: Path) -> bool:
        return any(p.is_file() for s in kvq_layout.SPLITS for p in kvq_layout.label_candidates(d, s))

    if has_labels(manual_dir):
        return manual_dir
    subs = [d for d in manual_dir.iterdir() if d.is_dir() and has_labels(d)]
    return subs[0] if len(subs) == 1 else manual_dir


class Kvq(KvqBuilderBase):
    """KVQ (Kaleidoscope short Video database for Quality assessment, NTIRE 2024): 600 user-uploaded
    short-form videos and 3600 processed versions (7 per source), MOS 1-5, plus rank pairs."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the KVQ challenge data (https://github.com/lixinustc/KVQ-Challenge-CVPR-NTIRE2024, data link in
its README; validation labels and rank pairs were released separately) and unpack it so that --manual_dir
looks like this (a single sub-folder that does is accepted too):

  train/0001.mp4 ... train/NNNN.mp4     the 7 versions of a source have consecutive numbers
  val/...   test/...
  train_data.csv                        header "filename,score"; filename relative to this folder
                                        ("train/0001.mp4") or to the split folder ("0001.mp4")
  val_data.csv or truth.csv or groundtruth_label/truth.csv     validation labels, same columns
  test_data.csv                         optional; without a score column the split is built unlabelled
  rank-pair-val.xlsx                    optional; sheets "source" and "nonsource", columns video1, video2,
                                        rank (1 = video1 better); rank-pair-{split}.xlsx for other splits

Headerless "filename,cls_label,dis_label,score" lists (the KVQ repository's format) are accepted as label
files. An optional "source_id" column overrides the source id derived from the file name."""

    def _manual_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
        return find_kvq_root(Path(dl_manager.manual_dir))
