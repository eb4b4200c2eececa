"""TF-free TFDS builders for KVQ (``kvq``) and the synthetic KVQ-like set (``kvq_synthetic``).

Importing this package registers both with TFDS, so ``tfds.builder("kvq", data_dir=...)`` and
``tfds.data_source("kvq_synthetic", split="val", data_dir=...)`` work. Build with
``python -m kvq_jax.data.build`` (the ``tfds build`` CLI needs TensorFlow and Beam).
"""

from kvq_jax.data.tfds_kvq.base import KvqBuilderBase, load_metadata, load_pairs, load_skipped, probe_video
from kvq_jax.data.tfds_kvq.kvq import Kvq
from kvq_jax.data.tfds_kvq.kvq_synthetic import KvqSynthetic

BUILDERS = {"kvq": Kvq, "kvq_synthetic": KvqSynthetic}

__all__ = [
    "BUILDERS",
    "Kvq",
    "KvqBuilderBase",
    "KvqSynthetic",
    "load_metadata",
    "load_pairs",
    "load_skipped",
    "probe_video",
]
