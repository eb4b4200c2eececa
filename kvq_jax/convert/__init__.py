"""Official PyTorch checkpoints → kvq_jax params (see `torch_layout.py` for the mapping)."""

from kvq_jax.convert.checkpoint_io import CheckpointReadError, read_state_dict, read_state_dicts, unwrap_state_dict
from kvq_jax.convert.torch_layout import ConversionError, convert_state_dict, to_state_dict

__all__ = [
    "CheckpointReadError",
    "ConversionError",
    "convert_state_dict",
    "read_state_dict",
    "read_state_dicts",
    "to_state_dict",
    "unwrap_state_dict",
]
