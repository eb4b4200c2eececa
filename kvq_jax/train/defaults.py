"""Defaults shared by the configs in `configs/`: the DOVER/FAST-VQA transfer-learning recipe on KVQ."""

from __future__ import annotations

import ml_collections

from kvq_jax.models import ModelSpec, get_spec


def base_config(model: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = model
    c.mode = "train"
    c.seed = 42
    c.dtype = "float32"  # compute dtype; params stay float32 ("bfloat16" for TPU/GPU speed)
    c.init_weights = ml_collections.FieldReference(None, field_type=str)  # converted dir or official .pth
    c.branches = ()  # branches to train and evaluate; () = all of the model's
    c.drop_path_rate = ml_collections.FieldReference(None, field_type=float)  # None: the model's (Swin 0.1)

    c.data = ml_collections.ConfigDict()
    c.data.name = "kvq"  # TFDS builder: kvq | kvq_synthetic
    c.data.data_dir = "data/tfds"
    c.data.manual_dir = ml_collections.FieldReference(None, field_type=str)  # raw folder, built on demand
    c.data.train_split = "train"
    c.data.view_overrides = ml_collections.ConfigDict()  # {branch: {field: value}}
    c.data.folder = ml_collections.ConfigDict()  # a labelled folder's options (kvq_jax.data.labels.spec_from_options)
    # re-split the records (the intra-dataset protocol sets it): pool splits merged, sources kept together
    c.data.resplit = ml_collections.ConfigDict({"seed": 0, "fractions": (), "pool": ("train", "test")})
    c.data.num_workers = 2  # grain decode/view worker processes per host
    c.data.synthetic = ml_collections.ConfigDict(
        {"sources": 16, "seed": 0, "size": (180, 320), "frames": 64}
    )  # used when data.name == "kvq_synthetic"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 8  # global; a multiple of the device count
    c.train.num_epochs = 15.0
    c.train.num_steps = ml_collections.FieldReference(None, field_type=int)  # overrides num_epochs
    c.train.log_every = 10
    c.train.eval_every = 500

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.schedule = "official"  # linear warm-up, cosine over the whole run (LR ends near 0.5·peak·...)
    c.optim.backbone_lr_mult = 0.1
    c.optim.freeze = ()  # regexes over param paths, e.g. (".*backbone.*",) for head-only; a tuple, so overridable
    c.optim.grad_clip_norm = 0.0
    c.optim_warmup_fraction = 2.5 / 15.0  # DOVER: 2.5 warm-up epochs (used when optim.warmup_steps unset)
    c.ema_decay = 0.999

    c.loss = ml_collections.ConfigDict()
    c.loss.weights = ml_collections.ConfigDict({"plcc": 1.0, "rank": 0.3, "arank": 0.0})
    c.loss.arank_options = ml_collections.ConfigDict()
    c.loss.aux_weights = ml_collections.ConfigDict()  # the model's own training terms: {name: weight} (0 = off)
    # BatchNorm modules (regexes over their paths) that stay in train mode although their params are frozen
    c.train_batch_norm = ()

    c.eval = ml_collections.ConfigDict()
    c.eval.splits = ("val",)
    c.eval.batch_size = 8
    c.eval.num_clips = ml_collections.FieldReference(None, field_type=int)  # None: the views' own
    c.eval.tta = 1  # test-time augmentation: average this many random samplings of every view
    c.eval.checkpoints = 1  # --mode eval: the latest N kept checkpoints (checkpoint.keep_latest >= N) ...
    c.eval.average = "predictions"  # ... with their predictions averaged, or "params" (a uniform model soup)
    c.eval.sets = ml_collections.ConfigDict()  # more eval targets: {label: {name, split, data_dir, manual_dir, ...}}
    c.eval.best = ml_collections.FieldReference(None, field_type=str)  # the target picking the best checkpoint

    # The intra-dataset protocol of the papers: `splits` seeded re-splits of one dataset, each trained and tested
    # (workdir/splitNN, resumable split by split), then the median and spread of the test correlations.
    c.protocol = ml_collections.ConfigDict({"splits": 0, "fractions": (0.8, 0.2), "pool": ("train", "test"), "seed": 0})

    c.sharding = ml_collections.ConfigDict()
    c.sharding.fsdp = 1  # devices per FSDP group: params/EMA/optimiser state split this many ways; 1 = pure DP
    c.sharding.rules = (".*",)  # regexes over state paths that may be split (others are replicated)
    c.sharding.min_size = 1 << 16  # leaves with fewer elements stay replicated

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500
    c.checkpoint.keep_latest = 1
    c.checkpoint["async"] = True
    return c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few minutes on 2 CPU cores: the synthetic set, short low-resolution views, head-only training.

    Head-only (DOVER's linear-probe protocol: backbones frozen) keeps a CPU step to a forward pass. With
    `--config.init_weights` (the converted official checkpoint) it is real head-only transfer; without it the
    heads train on randomly initialised backbones, which exercises the whole pipeline but learns little
    (pooled random features carry almost none of the synthetic set's quality signal: see the README).
    """
    c.data.name = "kvq_synthetic"
    c.optim.freeze = (".*_backbone/.*",)
    c.optim.lr = 1e-2
    c.data.num_workers = 2
    c.data.synthetic.sources = 16
    c.train.batch_size = 8
    c.train.num_steps = 60
    c.train.log_every = 5
    c.train.eval_every = 60
    c.checkpoint.every = 30
    c.optim.warmup_steps = 6
    c.ema_decay = 0.9  # 0.999 would leave a 60-step EMA at 94 % of its initial value
    c.eval.batch_size = 8
    c.data.view_overrides = quick_views(get_spec(c.model))
    return c


QUICK_FRAMES = 4  # frames of the longest quick clip
# The quick form of each kind of view: 3×3 fragments (96 px) instead of 7×7, one clip; 96-px resized frames.
QUICK_SIZES = {
    "fragments": {"fragments_h": 3, "fragments_w": 3, "num_clips": 1},
    "resize": {"size_h": 96, "size_w": 96},
}


def quick_views(spec: ModelSpec) -> dict[str, dict[str, int]]:
    """Overrides that make every view of ``spec`` short and small, keeping the views' temporal proportions.

    The longest clip becomes `QUICK_FRAMES` frames and every other view keeps its share of that (COVER's 20
    semantic frames beside 40 technical ones become 2 and 4, as its gates need equal time steps); a ``t_frag``
    view keeps its frames per segment, and a fragment view gets one offset set for its short clip.
    """
    longest = max(b.view.frames_per_clip for b in spec.branches)
    out = {}
    for b in spec.branches:
        view = b.view
        frames = max(1, QUICK_FRAMES * view.frames_per_clip // longest)
        changes = {**QUICK_SIZES[view.kind], "clip_len": frames}
        if view.t_frag is not None:
            changes["t_frag"] = max(1, frames // (view.clip_len // view.t_frag))
        if view.kind == "fragments":
            changes["aligned"] = frames
        out[b.name] = changes
    return out
