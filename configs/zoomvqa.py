"""Zoom-VQA on KVQ with its official recipes, one branch per run, as the official code trains them:

    python -m kvq_jax.convert --model zoomvqa --src iqa_best_29epoch_checkpoint.pth.tar \
        --src vqa_best_29e_val-vqpve_s.pth --out weights/zoomvqa
    python -m kvq_jax.main --config configs/zoomvqa.py:iqa --workdir runs/zoomvqa_iqa \
        --config.init_weights=weights/zoomvqa --config.data.manual_dir=/path/to/KVQ
    python -m kvq_jax.main --config configs/zoomvqa.py:vqa --workdir runs/zoomvqa_vqa ...

* ``iqa`` (default; the README's ``train_DDP_single.py`` command): CPNet, smooth-L1 against the MOS, 30 epochs,
  batch 32, AdamW lr 4e-4, weight decay 1e-2, backbone ×0.2 (everything but the heads), drop-path 0.1, a cosine
  over the whole run without warm-up, no EMA. The official run trains on every 2-fps frame of every video (batch
  32 frames, each labelled with its video's MOS); here an example is a video, whose training view is one frame at
  a random place (the train views' single clip), so an epoch sees each video once.
* ``vqa`` (``split_train.py``): the fragments Swin, plcc + 0.3·rank, 30 epochs, batch 16, AdamW lr 1e-3,
  backbone ×0.1, weight decay 0.01, 2.5 warm-up epochs then the official cosine, EMA 0.999, drop-path 0.1 (the
  official run starts from the authors' unreleased LSVQ-trained p6 model; start from the converted release).

Each run freezes the other branch's parameters (no weight decay creeps into them), so a run's weights are the
trained branch beside the other one as it was loaded. The trainer's overall score of a one-branch run is that
branch's; the set-level sigmoid fusion is a scoring-time step (`kvq-jax score`). Append ``,quick`` (e.g.
``configs/zoomvqa.py:iqa,quick``) for the short synthetic-set run: head-only, small frames and fragments.
"""

from kvq_jax.train.defaults import base_config, quick

IQA_PARAMS = ("backbone/.*", "head_score/.*", "head_weight/.*")
VQA_PARAMS = ("fragments_backbone/.*", "vqa_head/.*")
QUICK_VIEWS = {
    "iqa": {"short_side": 112, "crop_h": 96, "crop_w": 96},
    "vqa": {"clip_len": 4, "aligned": 4, "fragments_h": 3, "fragments_w": 3, "short_side": 160},
}


def get_config(arg: str | None = None):
    branch, *flags = (arg or "iqa").split(",")
    if branch not in ("iqa", "vqa") or set(flags) - {"quick"}:
        raise ValueError(f"unknown variant {arg!r}: use iqa or vqa, optionally ',quick'")
    c = base_config("zoomvqa")
    c.branches = (branch,)
    c.drop_path_rate = 0.1
    c.train.num_epochs = 30.0
    if branch == "iqa":
        c.train.batch_size = 32
        c.optim.lr = 4e-4
        c.optim.weight_decay = 1e-2
        c.optim.backbone_lr_mult = 0.2
        c.optim.schedule = "cosine"
        c.optim_warmup_fraction = 0.0
        c.ema_decay = None
        c.loss.weights = {"plcc": 0.0, "rank": 0.0, "arank": 0.0, "smooth_l1": 1.0}
        frozen, backbone = VQA_PARAMS, "backbone/.*"
    else:
        c.train.batch_size = 16
        c.optim.lr = 1e-3
        c.optim.weight_decay = 0.01
        c.optim.backbone_lr_mult = 0.1
        c.optim_warmup_fraction = 2.5 / 30.0
        c.loss.weights = {"plcc": 1.0, "rank": 0.3, "arank": 0.0}
        frozen, backbone = IQA_PARAMS, "fragments_backbone/.*"
    if "quick" in flags:
        quick(c)
        c.data.view_overrides = {branch: QUICK_VIEWS[branch]}
        frozen = (*frozen, backbone)
    c.optim.freeze = frozen
    return c
