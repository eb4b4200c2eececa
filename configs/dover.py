"""DOVER on KVQ: end-to-end fine-tuning from the official DOVER.pth with the DOVER transfer recipe.

    python -m kvq_jax.main --config configs/dover.py --workdir runs/dover \
        --config.init_weights=weights/dover --config.data.manual_dir=/path/to/KVQ

Variants: `configs/dover.py:head` (head-only transfer: backbones frozen, 10 epochs as DOVER's
`l_num_epochs`), `configs/dover.py:quick` (the synthetic KVQ-like set, short 4-frame 96 px views,
about 5 minutes on 2 CPU cores: the README's first command).
"""

from kvq_jax.train.defaults import base_config, quick


def get_config(arg: str | None = None):
    c = base_config("dover")
    if arg == "head":
        c.optim.freeze = (".*_backbone/.*",)
        c.train.num_epochs = 10.0
    elif arg == "quick":
        quick(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}: use head or quick")
    return c
