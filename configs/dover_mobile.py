"""DOVER-Mobile on KVQ: end-to-end fine-tuning from the official DOVER-Mobile.pth (20 epochs, its yml).

    python -m kvq_jax.main --config configs/dover_mobile.py --workdir runs/dover_mobile \
        --config.init_weights=weights/dover_mobile --config.data.manual_dir=/path/to/KVQ

`:quick` trains on the synthetic set with short low-resolution views (a few minutes on 2 CPU cores).
"""

from kvq_jax.train.defaults import base_config, quick


def get_config(arg: str | None = None):
    c = base_config("dover_mobile")
    c.train.num_epochs = 20.0
    c.optim_warmup_fraction = 2.5 / 20.0
    if arg == "quick":
        quick(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}: use quick")
    return c
