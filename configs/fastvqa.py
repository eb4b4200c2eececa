"""The FAST-VQA family on KVQ with the official fine-tuning recipe (`split_train.py`, options/finetune):
AdamW lr 1e-3, backbone ×0.1, weight decay 0.05, batch 16, loss plcc + 0.3·rank, 20 end-to-end epochs.

    python -m kvq_jax.main --config configs/fastvqa.py:fastvqa_b --workdir runs/fastvqa_b \
        --config.init_weights=weights/fastvqa_b --config.data.manual_dir=/path/to/KVQ

Variants (the arg): fastvqa_b (default), fastervqa, fastervqa_mt, fastervqa_ms, fastvqa_m — each with its own
views (fragment grid, `aligned`, temporal sampling) from the registry. Append `,quick` (e.g.
`configs/fastvqa.py:fastvqa_m,quick`) for the short synthetic-set run.
"""

from kvq_jax.models import model_names
from kvq_jax.train.defaults import base_config, quick

VARIANTS = model_names("fastvqa")


def get_config(arg: str | None = None):
    name, *flags = (arg or "fastvqa_b").split(",")
    if name not in VARIANTS or set(flags) - {"quick"}:
        raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}, optionally ',quick'")
    c = base_config(name)
    c.train.batch_size = 16
    c.train.num_epochs = 20.0
    c.optim_warmup_fraction = 2.5 / 20.0
    if "quick" in flags:
        quick(c)
    return c
