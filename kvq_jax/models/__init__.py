"""Models: the registry (`registry.py`), layers (`swin3d`, `convnext3d`, `head`, `common`) and one module per
family, each registering its models on import. Importing this package loads every built-in family, then any
listed in ``$KVQ_JAX_FAMILIES``; other code asks the registry and never names a model.
"""

from kvq_jax.models import cover, dover, fastvqa, ksvqe, simplevqa, zoomvqa  # noqa: F401  (the built-in families register themselves)
from kvq_jax.models.registry import (
    Branch,
    ModelSpec,
    abstract_model,
    default_model,
    get_model,
    get_spec,
    load_plugins,
    model_names,
    spec_for_official_config,
    split_model,
    with_state,
)

load_plugins()

__all__ = [
    "Branch",
    "ModelSpec",
    "abstract_model",
    "default_model",
    "get_model",
    "get_spec",
    "model_names",
    "spec_for_official_config",
    "split_model",
    "with_state",
]
