"""Zoom-VQA (CVPRW 2023, NTIRE 2023 VDPVE runner-up): an image-quality branch on frames beside FAST-VQA on
fragments, fused over the scored set.

Official code: k-zha14/Zoom-VQA, two separately built models:

* ``iqa``, CPNet (``IQA/models/CPNetMulti.py``): timm's ConvNeXt-T in its ``features_only`` form — here
  `ConvNeXt3D` on one-frame clips (stem (1,4,4), depth-1 kernels, no final LayerNorm). Its four stage maps are
  each average-pooled (``AdaptiveAvgPool2d(csize // 32)``) and concatenated: (csize/32)² tokens of 96+192+384+768 =
  1440 channels. A score head (Linear 1440→384, ReLU, Dropout, Linear 384→1, **ReLU**) and a weight head (the same
  ending in a **Sigmoid**) give the frame score ``Σ s·w / Σ w``; the video score is the mean over frames. The
  frames are 320² centre crops of the short side resized to 512 (``infer.py``: csize 320, rsize 512), ImageNet
  statistics on 0–1, so the pool size is the frame size / 32: derived from the input here (10 at test, 7 in the
  224² parity case), which is the official value whenever the frames are csize² crops, as they always are there.
* ``vqa``, ``DiViDeAddEvaluator`` as ``VQA/vqa_mine.py`` runs it: FAST-VQA's Swin3D-T GRPB with 6×6 patches
  (``--patch_size 6``: base size 32×336×336) and adaptive windows, one ``vqa_head``; short side resized to 480,
  7×7 fragments of 48 px (centred at test), 4 clips of 32 frames with stride 2.

The official IQA test extracts every frame at 2 fps (ffmpeg), 16 to 36 per video; the view here takes a fixed
`IQA_FRAMES` frames, one from the middle of each of as many equal segments of the video, so that videos batch.

The overall score is set-level (`SetSigmoidRescale`): each branch's scores are z-scored over the whole scored set
(population std), passed through a sigmoid and ×100, and averaged, ``0.5·IQA + 0.5·VQA`` (``ensemble.py``).

Checkpoints: ``iqa_best_29epoch_checkpoint.pth.tar`` (``{'state_dict'}`` of CPNet, ``module.`` stripped by the
reader: ``backbone.*``, ``head_score.*``, ``head_weight.*``) and ``vqa_best_29e_val-vqpve_s.pth`` (``{'state_dict'}``:
``fragments_backbone.*``, ``vqa_head.*``), merged: the model holds those five top-level names, and
:func:`checkpoint_filter` maps timm's backbone names (and the parity manifest's ``iqa.`` / ``vqa.`` prefixes).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvq_jax.convert.torch_layout import ConversionError
from kvq_jax.data.views import PixelNorm, ViewSpec
from kvq_jax.models.common import Dtype, dense
from kvq_jax.models.convnext3d import ConvNeXt3D, ConvNeXtConfig
from kvq_jax.models.fusion import SetSigmoidRescale
from kvq_jax.models.head import VQAHead
from kvq_jax.models.registry import Branch, ModelSpec, OfficialCode, OfficialWeights, StateDict, register
from kvq_jax.models.swin3d import SwinConfig, SwinTransformer3D
from kvq_jax.scoring import map_scores

IQA_FRAMES = 16  # the 2-fps extraction gives 16-36 frames per VDPVE video (22 for most)
POOL_STRIDE = 32  # the pool size is csize // 32

# infer.py: ToTensor, Resize(512) (short side), centre crop 320, ImageNet mean/std on 0–1.
IQA_VIEW = ViewSpec(
    "resize", clip_len=1, num_clips=IQA_FRAMES, frame_interval=1, short_side=512, crop_h=320, crop_w=320
)
IQA_PIXELS = PixelNorm((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), scale=1 / 255)
# vqa_mine.py with finetune_vdpve.yml's val-vqpve views and --rsize 480 --patch_size 6 (fragments of 8 × 6 px).
VQA_VIEW = ViewSpec("fragments", clip_len=32, num_clips=4, fsize_h=48, fsize_w=48, aligned=32, short_side=480)


# timm's convnext_tiny(features_only=True) on frames (drop_path 0.1 in the official training command).
CPNET_BACKBONE = ConvNeXtConfig(inflate="1", stem_t=1, final_norm=False, drop_path_rate=0.1)
ZOOM_SWIN = SwinConfig(patch_size=(2, 6, 6), adaptive_window=True, base_x_size=(32, 336, 336))


@dataclasses.dataclass(frozen=True)
class ZoomConfig:
    """CPNet's backbone and heads; the VQA branch's Swin and head."""

    iqa_backbone: ConvNeXtConfig = CPNET_BACKBONE
    iqa_hidden: int = 384
    iqa_dropout: float = 0.1  # CPNet's heads hard-code nn.Dropout(0.1) (its --dropout option is unused)
    vqa_backbone: SwinConfig = ZOOM_SWIN
    vqa_hidden: int = 64
    vqa_dropout: float = 0.5


def adaptive_avg_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """``nn.AdaptiveAvgPool2d``: (N, H, W, C) → (N, *out_hw, C); bin i spans [⌊i·H/o⌋, ⌈(i+1)·H/o⌉)."""
    n, h, w, c = x.shape
    (oh, ow) = out_hw
    if h % oh == 0 and w % ow == 0:
        return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
    rows, cols = (_pool_matrix(size, out) for size, out in ((h, oh), (w, ow)))
    return jnp.einsum("oh,nhwc,pw->nopc", rows, x, cols)


def _pool_matrix(size: int, out: int) -> np.ndarray:
    """(out, size): the mean over PyTorch's adaptive bins as weights."""
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class PatchHead(nnx.Module):
    """Linear → ReLU → Dropout → Linear → ``final`` (ReLU: the score head; Sigmoid: the weight head), per token."""

    def __init__(self, width: int, hidden: int, dropout: float, final: str, dtype: Dtype, rngs: nnx.Rngs):
        self.fc1 = dense(width, hidden, dtype, rngs)
        self.dropout = nnx.Dropout(dropout)
        self.fc2 = dense(hidden, 1, dtype, rngs)
        self.final = final

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = self.fc2(self.dropout(jax.nn.relu(self.fc1(x)), rngs=rngs)).astype(jnp.float32)
        return jax.nn.relu(y) if self.final == "relu" else jax.nn.sigmoid(y)


class ZoomVQA(nnx.Module):
    """Views ``iqa`` (N, T, H, W, 3) frames and ``vqa`` (N, T, H, W, 3) fragment clips → {iqa: frame scores (N, T),
    vqa: score map (N, T/2, H', W')}; each branch runs alone when only its view is given.

    The attributes are the two official state_dicts' top-level names side by side (they do not collide): CPNet's
    ``backbone``, ``head_score``, ``head_weight`` and the evaluator's ``fragments_backbone``, ``vqa_head``. So the
    two backbones get the backbone learning rate, as in both official trainings.
    """

    def __init__(
        self, spec: ModelSpec, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs, drop_path_rate: float | None = None
    ):
        self.spec = spec
        cfg: ZoomConfig = spec.arch
        iqa, vqa = cfg.iqa_backbone, cfg.vqa_backbone
        if drop_path_rate is not None:
            iqa = dataclasses.replace(iqa, drop_path_rate=drop_path_rate)
            vqa = dataclasses.replace(vqa, drop_path_rate=drop_path_rate)
        self.backbone = ConvNeXt3D(iqa, dtype=dtype, rngs=rngs)
        width = sum(iqa.dims)
        self.head_score = PatchHead(width, cfg.iqa_hidden, cfg.iqa_dropout, "relu", dtype, rngs)
        self.head_weight = PatchHead(width, cfg.iqa_hidden, cfg.iqa_dropout, "sigmoid", dtype, rngs)
        self.fragments_backbone = SwinTransformer3D(vqa, dtype=dtype, rngs=rngs)
        self.vqa_head = VQAHead(vqa.num_features, cfg.vqa_hidden, cfg.vqa_dropout, dtype, rngs)

    def iqa(self, frames: jax.Array, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        """CPNet on frames (M, H, W, 3) → ``frame_score`` (M,), ``head_score`` / ``head_weight`` (M, P, 1),
        ``tokens`` (M, P, 1440) and the stage maps ``stage0..3``; P = (H/32)·(W/32) tokens."""
        m, h, w, _ = frames.shape
        pool = (h // POOL_STRIDE, w // POOL_STRIDE)
        if min(pool) < 1:
            raise ValueError(f"CPNet pools to (frame size // {POOL_STRIDE})²: {h}×{w} frames are too small")
        maps = [s[:, 0] for s in self.backbone.stage_outputs(frames[:, None], rngs)]
        tokens = jnp.concatenate([adaptive_avg_pool(s, pool) for s in maps], axis=-1).reshape(m, pool[0] * pool[1], -1)
        score, weight = self.head_score(tokens, rngs), self.head_weight(tokens, rngs)
        out = {"frame_score": (score * weight).sum(axis=(1, 2)) / weight.sum(axis=(1, 2)), "tokens": tokens}
        return out | {"head_score": score, "head_weight": weight} | {f"stage{i}": s for i, s in enumerate(maps)}

    def vqa(self, clips: jax.Array, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        """The evaluator on clips (N, T, H, W, 3) → ``score_map`` (N, T/2, H/48, W/48), ``feat`` (the backbone's
        output) and the stage outputs ``stage0..3``."""
        stages = self.fragments_backbone.stage_outputs(clips, rngs)
        feat = self.fragments_backbone.norm(stages[-1])
        out = {"score_map": self.vqa_head(feat, rngs).astype(jnp.float32), "feat": feat}
        return out | {f"stage{i}": s for i, s in enumerate(stages)}

    def __call__(
        self, views: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None, return_features: bool = False
    ) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Score maps, float32; with ``return_features`` also every intermediate, ``iqa_*`` and ``vqa_*``."""
        unknown = set(views) - set(self.spec.branch_names)
        if unknown or not views:
            raise ValueError(f"{self.spec.name} takes views {self.spec.branch_names}, got {sorted(views)}")
        maps, feats = {}, {}
        if "iqa" in views:
            frames = views["iqa"]
            n, t = frames.shape[:2]
            out = self.iqa(frames.reshape(n * t, *frames.shape[2:]), rngs)
            maps["iqa"] = out["frame_score"].reshape(n, t)
            feats |= {f"iqa_{k}": v for k, v in out.items()}
        if "vqa" in views:
            out = self.vqa(views["vqa"], rngs)
            maps["vqa"] = out["score_map"]
            feats |= {f"vqa_{k}": v for k, v in out.items()}
        return (maps, feats) if return_features else maps


# ----------------------------------------------------------------------------------------------- checkpoint

# timm's ConvNeXt (features_only) → ConvNeXt3D: (pattern, replacement, 2-D conv weight given a depth axis).
_TIMM_RULES = (
    (r"backbone\.stem_0\.", "backbone.downsample_layers.0.0.", True),
    (r"backbone\.stem_1\.", "backbone.downsample_layers.0.1.", False),
    (r"backbone\.stages_(\d+)\.downsample\.0\.", r"backbone.downsample_layers.\1.0.", False),
    (r"backbone\.stages_(\d+)\.downsample\.1\.", r"backbone.downsample_layers.\1.1.", True),
    (r"backbone\.stages_(\d+)\.blocks\.(\d+)\.conv_dw\.", r"backbone.stages.\1.\2.dwconv.", True),
    (r"backbone\.stages_(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.", r"backbone.stages.\1.\2.pwconv\3.", False),
    (r"backbone\.stages_(\d+)\.blocks\.(\d+)\.", r"backbone.stages.\1.\2.", False),
    (r"head_(score|weight)\.0\.", r"head_\1.fc1.", False),
    (r"head_(score|weight)\.3\.", r"head_\1.fc2.", False),
)


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """The two official files merged (or the parity manifest, whose keys add ``iqa.`` / ``vqa.``) → this model's
    keys: CPNet's timm names become `ConvNeXt3D`'s (its 2-D conv weights get a depth axis of 1). Other keys are
    left as they are, so the strict conversion names them.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        key = re.sub(r"^(iqa|vqa)\.", "", key)
        for pattern, replacement, depth in _TIMM_RULES:
            renamed, hits = re.subn(f"^{pattern}", replacement, key)
            if hits:
                key = renamed
                if depth and key.endswith(".weight") and np.ndim(value) == 4:
                    value = np.asarray(value)[:, :, None]
                break
        if key in out:
            raise ConversionError(f"{key} is given twice (as the official files name it and with an iqa./vqa. prefix)")
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------- parity


def parity_arrays(model: ZoomVQA, inputs: Mapping[str, jax.Array], case: Mapping) -> dict[str, jax.Array]:
    """The arrays of the official Zoom-VQA fixtures from their inputs: ``iqa_frames`` [B·F, 3, S, S] (each video's
    frames in turn), ``vqa_clips`` [B·K, 3, T, S, S] and the two score sets of the fusion."""
    videos = case["videos"]
    size = inputs["iqa_frames"].shape[-1]
    csize = case["iqa_args"]["csize"]
    if size // POOL_STRIDE != csize // POOL_STRIDE:
        raise ValueError(f"the case pools to csize {csize} // 32 but its frames are {size}²: not the official use")
    frames = jnp.moveaxis(inputs["iqa_frames"], 1, -1).reshape(videos, -1, 1, size, size, 3)
    clips = jnp.moveaxis(inputs["vqa_clips"], 1, -1)
    clips = clips.reshape(videos, -1, *clips.shape[1:])
    scores, maps, feats = map_scores(model, {"iqa": frames, "vqa": clips}, features=True)
    out = {
        "iqa_frame_score": feats["iqa_frame_score"][:, None],
        "iqa_token_channel_mean": feats["iqa_tokens"].mean(axis=1),
        "iqa_tokens": feats["iqa_tokens"],
        "iqa_head_score": feats["iqa_head_score"],
        "iqa_head_weight": feats["iqa_head_weight"],
        "iqa_video_score": scores["iqa"],
        "vqa_score_map": maps["vqa"].reshape(-1, 1, *maps["vqa"].shape[2:]),
        "vqa_feat_channel_mean": feats["vqa_feat"].mean(axis=(1, 2, 3)),
        "vqa_feat": jnp.moveaxis(feats["vqa_feat"], -1, 1),
        "vqa_video_score": scores["vqa"],
    }
    for i in range(4):
        out[f"iqa_stage{i}_channel_mean"] = feats[f"iqa_stage{i}"].mean(axis=(1, 2))
        out[f"vqa_stage{i}_channel_mean"] = feats[f"vqa_stage{i}"].mean(axis=(1, 2, 3))
    rescaled = model.spec.fusion.rescaled({"iqa": inputs["fusion_iqa_scores"], "vqa": inputs["fusion_vqa_scores"]})
    out["fusion_iqa_rescaled"], out["fusion_vqa_rescaled"] = rescaled["iqa"], rescaled["vqa"]
    out["fusion_fused"] = model.spec.fusion({"iqa": inputs["fusion_iqa_scores"], "vqa": inputs["fusion_vqa_scores"]})
    return out


_REPO = "https://github.com/k-zha14/Zoom-VQA"
_RELEASE = f"{_REPO}/releases/download/v0.1"

register(
    ModelSpec(
        name="zoomvqa",
        family="zoomvqa",
        branches=(Branch("iqa", IQA_VIEW, IQA_PIXELS), Branch("vqa", VQA_VIEW)),
        build=ZoomVQA,
        arch=ZoomConfig(),
        fusion=SetSigmoidRescale((("iqa", 0.5), ("vqa", 0.5))),
        weights=OfficialWeights(
            f"{_RELEASE}/iqa_best_29epoch_checkpoint.pth.tar",
            also=(OfficialWeights(f"{_RELEASE}/vqa_best_29e_val-vqpve_s.pth"),),
        ),
        official=OfficialCode(
            _REPO,
            "VQA/fastvqa",
            "zoom-vqa",  # the parity cases' name for the pair; no single yml builds both models
            requires=("timm",),
            build_note="two official models (IQA/models/CPNetMulti.py on timm; VQA/fastvqa with "
            "VQA/options/cvpr2023/finetune_vdpve.yml and patch_size 6), which the PyTorch reference does not build",
        ),
        checkpoint_filter=checkpoint_filter,
        parity=parity_arrays,
    )
)
