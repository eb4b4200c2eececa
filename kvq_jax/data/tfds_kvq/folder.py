"""TFDS builder ``vqa_folder``: any labelled folder of videos (`kvq_jax.data.labels`), and the standard datasets.

Configs: ``vqa_folder/lsvq``, ``vqa_folder/konvid``, ``vqa_folder/live_vqc``, ``vqa_folder/youtube_ugc`` read the
user's download of each (see :data:`kvq_jax.data.labels.PRESETS` and the README for the expected layout); a folder
of your own gets a config made from its `FolderSpec` at build time, named by you (``vqa_folder/<name>``). Records
are those of the KVQ builders plus ``extra``: the spec's further numeric labels, in its order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from kvq_jax.data import kvq_layout, labels
from kvq_jax.data.tfds_kvq.base import KvqBuilderBase


class FolderConfig(tfds.core.BuilderConfig):
    """A labelled folder's reading rules (a `FolderSpec`) under a config name."""

    def __init__(self, *, spec: labels.FolderSpec, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec


class VqaFolder(KvqBuilderBase):
    """A labelled folder of videos: encoded bytes, name, MOS, source id, frame count and extra labels."""

    BUILDER_CONFIGS = [  # noqa: RUF012  (TFDS reads this class attribute)
        FolderConfig(name=name, spec=spec, description=f"the {name} dataset, from the user's download")
        for name, spec in labels.PRESETS.items()
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Point --manual_dir at the folder holding the videos and the label file(s) the config names (see the README's
"Your own data and the standard datasets")."""

    def _manual_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
        return Path(dl_manager.manual_dir)

    def _layouts(self, root: Path) -> dict[str, kvq_layout.SplitLayout]:
        return labels.read_folder(root, self.builder_config.spec)

    def _features(self) -> dict[str, tfds.features.FeatureConnector]:
        n = len(self.builder_config.spec.extra)
        return {**super()._features(), "extra": tfds.features.Tensor(shape=(n,), dtype=np.float32)}

    def _record(self, entry: kvq_layout.VideoEntry, num_frames: int) -> dict[str, Any]:
        return {**super()._record(entry, num_frames), "extra": np.asarray(entry.extra, np.float32)}
