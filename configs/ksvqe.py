"""KSVQE on KVQ: the KVQ paper's recipe (`config/Kwai_KSVQE.yml`, `trainer_ddp.py` of the KVQ repository).

    python -m kvq_jax.convert --model ksvqe --src KSVQE_techniqual_pretrainonLSVQ.pth --src ViT-B-16.pt \
        --src CONTRIQUE_checkpoint25.tar --src swin_tiny_patch244_window877_kinetics400_1k.pth --out weights/ksvqe
    python -m kvq_jax.main --config configs/ksvqe.py --workdir runs/ksvqe \
        --config.init_weights=weights/ksvqe --config.data.manual_dir=/path/to/KVQ

Default: AdamW lr 3e-5 (backbone ×1), weight decay 0.05, 50 epochs, 2.5 warm-up epochs then the official cosine,
EMA 0.999; loss ``plcc + 0.3 · dis_contra`` (the supervised contrastive loss over the distortion tokens, positives
sharing ``dis_label``; the official trainer computes the rank loss but never adds it). Batch 16: the official DDP
script runs 4 videos on each of 4 GPUs. The CLIP tower and CONTRIQUE are frozen (``freeze()`` and
``requires_grad=False`` in the official code); everything else trains, the CLIP CLS adapters included (through the
semantic tokens and the perturbed top-1's gradient estimator). CONTRIQUE's BatchNorm stays in train mode, as in
the official code (batch statistics over the batch's 32×32 patches, running statistics updated);
``--config.train_batch_norm=()`` keeps it in eval mode instead. The KVQ records must carry ``dis_label``: build them
from the KVQ repository's ``filename,cls_label,dis_label,score`` lists (see README).

Variant ``quick``: the synthetic set (its processing step as ``dis_label``), 4 frames of 5×5 fragments (160², so
3×3-fragment regions) and 48² CLIP frames, the Swin, CLIP and CONTRIQUE towers frozen, a few minutes on 2 CPU cores.
"""

from kvq_jax.train.defaults import base_config

FROZEN_TOOLS = ("KSVQE_backbone/CLIP_tool/visual/.*", "KSVQE_backbone/distortion_tool/.*")
CONTRIQUE_BATCH_NORM = "KSVQE_backbone/distortion_tool/.*"


def get_config(arg: str | None = None):
    c = base_config("ksvqe")
    c.pretrained = True  # a fresh model takes the component files where installed (see README)
    c.train.batch_size = 16
    c.train.num_epochs = 50.0
    c.optim_warmup_fraction = 2.5 / 50.0
    c.optim.lr = 3e-5
    c.optim.weight_decay = 0.05
    c.optim.backbone_lr_mult = 1.0
    c.optim.freeze = FROZEN_TOOLS
    c.ema_decay = 0.999
    c.loss.weights = {"plcc": 1.0, "rank": 0.0, "arank": 0.0}
    c.loss.aux_weights = {"dis_contra": 0.3}
    c.train_batch_norm = (CONTRIQUE_BATCH_NORM,)
    c.eval.batch_size = 4
    if arg == "quick":
        quick(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}: use quick")
    return c


def quick(c):
    """The synthetic set with tiny views; adapters, modulation, mixing weights and head train."""
    c.data.name = "kvq_synthetic"
    c.data.num_workers = 2
    small = {"clip_len": 4, "num_clips": 1}
    c.data.view_overrides = {
        "fragment": {**small, "fragments_h": 5, "fragments_w": 5, "aligned": 4},
        "resize_video": {**small, "size_h": 48, "size_w": 48},
    }
    c.optim.freeze = (*FROZEN_TOOLS, "KSVQE_backbone/(patch_embed|layers|norm)/.*")
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 3
    c.ema_decay = 0.9
    c.train.batch_size = 4
    c.train.num_steps = 30
    c.train.log_every = 5
    c.train.eval_every = 30
    c.checkpoint.every = 30
    c.eval.splits = ("val",)
