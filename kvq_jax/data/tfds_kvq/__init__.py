"""TF-free TFDS builders for KVQ (``kvq``), the synthetic KVQ-like set (``kvq_synthetic``) and any labelled
folder or standard dataset (``vqa_folder/<config>``).

Importing this package registers them with TFDS. Build with ``python -m kvq_jax.data.build`` (the ``tfds build``
CLI needs TensorFlow and Beam); read back with ``kvq_jax.data.pipeline.load_split``.
"""

from kvq_jax.data.tfds_kvq.base import (
    KvqBuilderBase,
    dataset_dir,
    load_metadata,
    load_pairs,
    load_skipped,
    probe_video,
)
from kvq_jax.data.tfds_kvq.folder import FolderConfig, VqaFolder
from kvq_jax.data.tfds_kvq.kvq import Kvq
from kvq_jax.data.tfds_kvq.kvq_synthetic import KvqSynthetic

BUILDERS = {"kvq": Kvq, "kvq_synthetic": KvqSynthetic, "vqa_folder": VqaFolder}

__all__ = [
    "BUILDERS",
    "FolderConfig",
    "Kvq",
    "KvqBuilderBase",
    "KvqSynthetic",
    "VqaFolder",
    "dataset_dir",
    "load_metadata",
    "load_pairs",
    "load_skipped",
    "probe_video",
]
