"""COVER on KVQ with its own recipe (cover.yml, train_one_dataset.py): AdamW 1e-3, backbones ×0.1, weight decay
0.05, batch 8, 2.5 warm-up epochs, EMA, loss Σ over the three branches of plcc + 0.3·rank.

    python -m kvq_jax.convert --model cover --src COVER.pth --src ViT-L-14.pt --out weights/cover
    python -m kvq_jax.main --config configs/cover.py --workdir runs/cover \
        --config.init_weights=weights/cover --config.data.manual_dir=/path/to/KVQ

Default: end-to-end, 15 epochs (the README's ``num_epochs: 15``). Variants: `configs/cover.py:head` (head-only
transfer, ``l_num_epochs`` 10: video backbones frozen, gates and heads trained), `configs/cover.py:quick` (the
synthetic set with short 96 px views: 2 semantic frames beside 4-frame video clips, as the gates need).

The CLIP ViT-L/14 tower (``clip/...``, 304 M of the 365 M params) is frozen in every variant: the official model
keeps it outside its module tree, so COVER never trains it. Frozen, it costs a forward pass only (no backward, no
optimiser state). Its top-level name holds no "backbone", so were it unfrozen it would train at the full learning
rate: keep it frozen. FSDP (``--config.sharding.fsdp=N``) splits the CLIP tower and the two video backbones; the
heads and gates stay replicated. ``--config.dtype=bfloat16`` computes in bf16 (params stay float32).
"""

from kvq_jax.train.defaults import base_config, quick

CLIP_FROZEN = "clip/.*"


def get_config(arg: str | None = None):
    c = base_config("cover")
    c.sharding.rules = (".*clip/visual/.*", ".*_backbone/.*")
    if arg == "head":
        c.optim.freeze = (".*_backbone/.*",)
        c.train.num_epochs = 10.0
        c.optim_warmup_fraction = 2.5 / 10.0
    elif arg == "quick":
        quick(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}: use head or quick")
    c.optim.freeze = (*c.optim.freeze, CLIP_FROZEN)
    return c
