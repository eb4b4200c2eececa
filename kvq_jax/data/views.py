"""The DOVER / FAST-VQA input views: temporal sampling, spatial fragments and the square resize.

These reproduce what the official PyTorch data code computes (``UnifiedFrameSampler`` /
``get_spatial_fragments`` / ``torchvision.transforms.Resize`` in VQAssessment/DOVER and FAST-VQA), quirks
included:

* temporal sampling cuts the video into equal segments with one offset per segment; indices wrap modulo the
  number of frames for short videos; a view without ``t_frag`` uses ``num_clips`` as the number of segments;
* fragments are a ``fragments_h × fragments_w`` grid of ``fsize`` patches whose offsets are shared by each
  chunk of ``aligned`` frames; a video smaller than the fragment canvas is first upscaled (bilinear on
  x/255, ×255, *truncated* to uint8) but — the official bug — the grid is still laid out from the
  pre-upscale size, so only the top-left part of the upscaled video is sampled;
* the resize view squashes to ``size_h × size_w`` ignoring the aspect ratio, bilinear without antialiasing,
  rounded to uint8 (the torch 1.13 / torchvision 0.14 tensor path); with ``crop_h × crop_w`` it then crops, at
  random in training and at ``size // 2 − crop // 2`` at test (the KVQ SimpleVQA baseline's ``resize 520, crop 448``);
* ``short_side`` first resizes every frame so that its short side has that many pixels, the aspect ratio kept
  (Zoom-VQA): before fragments as its ``vqa_mine.py`` does it (long side ``int(long / (short / s))``, bilinear on
  x/255, ×255, truncated to uint8), before the centre crop of a resize view as torchvision's ``Resize(s)`` sizes it
  (long side ``int(s · long / short)``) — the official IQA frames stay float there, ours are rounded to uint8
  (at most half a grey level apart);
* the seconds view is the SlowFast feature extractor's input (the KVQ repo's ``SlowFast_features.py``): clip ``i``
  is ``clip_len`` consecutive frames from frame ``i · round(fps)`` (second ``i``), padded with the video's last
  frame; ``t_frag`` such clips (a video shorter than ``t_frag`` seconds repeats its last whole second), each frame
  squashed to ``size_h × size_w``. The official extractor resizes with PIL (``Resize([224, 224])`` on a PIL image),
  which antialiases when it shrinks; this view resizes like the resize view (no antialiasing), so on
  downscaled videos its pixels are sharper than the official features saw;
* a seconds view of one-frame clips with ``short_side`` and a crop is the original SimpleVQA's frames
  (sunwei925/SimpleVQA ``extract_frame_*.py``): frame ``k · round(fps)`` of every second the video reaches, a last
  partial second included (``partial_seconds``), its short side resized (long side ``int(s / short · long)``) with
  the resize view's bilinear (cv2's ``INTER_LINEAR`` there: no antialiasing either, but fixed-point arithmetic that
  puts about one pixel in eight a grey level apart from ours), then cropped like a resize view.

Two deliberate differences: randomness comes from an explicit ``np.random.Generator`` (the official code
draws from unseeded global RNGs, even at test time), and ``rng=None`` selects a deterministic *centred* mode
(temporal offsets and fragment offsets in the middle of their ranges) so that test-time scores are
reproducible.

Bilinear interpolation is computed in float32 exactly as torch's CPU ``upsample_bilinear2d`` generic
(channels-first) kernel does on x86-64/AVX2 builds, including the fused multiply-adds the compiler emits
there: the truncation to uint8 after upscaling turns last-bit differences into ±1 pixel differences, so the
arithmetic is matched, not merely approximated. All arrays are channels-last uint8 until a model's
:class:`PixelNorm` turns them into its input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kvq_jax.data.decode import VideoSource

_KINDS = ("fragments", "resize", "seconds")
_NON_INT_FIELDS = ("kind", "frames_of")  # and the bool fields (BOOL_FIELDS, derived below the class)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """One view of a video, with the official yml's field names.

    ``kind`` is ``"fragments"`` (grid of ``fsize`` patches), ``"resize"`` (square resize to
    ``size_h×size_w``, then optionally a ``crop_h×crop_w`` crop) or ``"seconds"`` (``t_frag`` one-second clips of
    ``clip_len`` frames, resized; one model clip holds them all). Temporal fields of the other kinds: without
    ``t_frag`` the sampler takes ``num_clips`` segments of ``clip_len`` frames (stride ``frame_interval``); with
    ``t_frag`` each of the ``num_clips`` clips is ``t_frag`` segments of ``clip_len // t_frag`` frames.
    ``short_side`` (fragments, or resize / seconds with a crop) resizes the frames to that short side first, keeping
    the aspect ratio; the view then crops without squashing (``size_h``, ``size_w`` unused). ``partial_seconds``
    (seconds views) counts a last partial second of the video as one of its seconds.

    Two fields join views or clips. ``stack_clips`` hands the model the ``num_clips`` clips as one clip of all their
    frames (KSVQE's val/test views: the official dataset samples 3 clips of 32 frames and nothing splits them, so
    96 frames go through at once). ``frames_of`` names another branch whose sampled frames this view takes instead
    of drawing its own (KSVQE's CLIP view resizes the very frames of its fragment view); the two must give the
    same number of frames.
    """

    kind: str
    clip_len: int = 32
    frame_interval: int = 2
    num_clips: int = 1
    t_frag: int | None = None
    fragments_h: int = 7
    fragments_w: int = 7
    fsize_h: int = 32
    fsize_w: int = 32
    aligned: int = 32
    size_h: int = 224
    size_w: int = 224
    crop_h: int | None = None
    crop_w: int | None = None
    short_side: int | None = None
    partial_seconds: bool = False
    stack_clips: bool = False
    frames_of: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"ViewSpec.kind must be one of {_KINDS}, got {self.kind!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _NON_INT_FIELDS or field.name in BOOL_FIELDS:
                continue
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"ViewSpec.{field.name} must be a positive int, got {value!r}")
        for flag in BOOL_FIELDS:
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"ViewSpec.{flag} must be a bool, got {getattr(self, flag)!r}")
        if self.partial_seconds and self.kind != "seconds":
            raise ValueError("ViewSpec.partial_seconds is a seconds view's")
        if self.frames_of is not None and (not isinstance(self.frames_of, str) or self.kind == "seconds"):
            raise ValueError(f"ViewSpec.frames_of names a branch (not on a seconds view), got {self.frames_of!r}")
        cropped = self.crop_h is not None
        if (self.crop_h is None) != (self.crop_w is None) or (cropped and self.kind == "fragments"):
            raise ValueError(f"ViewSpec: crop_h and crop_w go together, on a resize or seconds view; got {self}")
        if self.short_side is not None:
            if self.kind != "fragments" and not cropped:
                raise ValueError("ViewSpec.short_side needs a fragments view or a resize / seconds view with a crop")
            if self.crop_h is not None and max(self.crop_h, self.crop_w) > self.short_side:
                raise ValueError(f"ViewSpec: crop {self.crop_h}×{self.crop_w} > short side {self.short_side}")
        elif self.crop_h is not None and (self.crop_h > self.size_h or self.crop_w > self.size_w):
            raise ValueError(f"ViewSpec: crop {self.crop_h}×{self.crop_w} > resize {self.size_h}×{self.size_w}")
        if self.kind == "seconds" and self.t_frag is None:
            raise ValueError("a seconds view needs t_frag (the number of one-second clips)")
        if self.kind != "seconds" and self.t_frag is not None and self.t_frag > self.clip_len:
            raise ValueError(f"ViewSpec.t_frag ({self.t_frag}) must not exceed clip_len ({self.clip_len})")
        total = self.frames_per_clip * self.num_clips
        if self.kind == "fragments" and total > 1 and total % self.aligned:
            raise ValueError(
                f"fragments view: {total} frames ({self.num_clips} clips of {self.frames_per_clip}) "
                f"are not a multiple of aligned={self.aligned}"
            )

    @property
    def frames_per_clip(self) -> int:
        """Frames in one clip (``clip_len``, or ``(clip_len // t_frag) * t_frag`` in the ``t_frag`` form; a
        seconds view: ``clip_len * t_frag``)."""
        if self.kind == "seconds":
            return self.clip_len * self.t_frag
        if self.t_frag is None:
            return self.clip_len
        return (self.clip_len // self.t_frag) * self.t_frag

    @property
    def total_frames(self) -> int:
        """Frames sampled for the whole view: ``frames_per_clip * num_clips``."""
        return self.frames_per_clip * self.num_clips

    @property
    def out_hw(self) -> tuple[int, int]:
        """Spatial size of the view."""
        if self.kind == "fragments":
            return self.fragments_h * self.fsize_h, self.fragments_w * self.fsize_w
        if self.crop_h is not None:
            return self.crop_h, self.crop_w
        return self.size_h, self.size_w

    @property
    def clips(self) -> int:
        """Clips the model sees per video: ``num_clips``, or 1 when they are stacked."""
        return 1 if self.stack_clips else self.num_clips

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """The uint8 array of one video's view: ``(clips, T, H, W, 3)`` (T: all frames when clips are stacked)."""
        return (self.clips, self.total_frames // self.clips, *self.out_hw, 3)


# ViewSpec's on/off fields (its bool defaults): checked as bools, parsed from true/false by `kvq-jax score --view`.
BOOL_FIELDS = tuple(f.name for f in dataclasses.fields(ViewSpec) if isinstance(f.default, bool))


@dataclasses.dataclass(frozen=True)
class PixelNorm:
    """How a model wants its uint8 pixels: ``(x · scale − mean) / std`` per RGB channel, float32.

    Data, not code, so export files and the PyTorch reference can state and reproduce it. The official models
    differ: DOVER / FAST-VQA use ImageNet statistics on the 0–255 scale, CLIP branches CLIP statistics (COVER on
    0–255, KSVQE on 0–1), and the KVQ SimpleVQA baseline subtracts the 0–1 ImageNet statistics from 0–255 values.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0

    def __call__(self, x: Any) -> Any:
        """uint8 pixels (numpy or jax, channels-last) → float32; arithmetic only, so it runs on host or device."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        x = x.astype(np.float32)
        return ((x * np.float32(self.scale) if self.scale != 1.0 else x) - mean) / std


# ImageNet statistics on the 0-255 scale: what both official repositories apply to every Swin/ConvNeXt view.
IMAGENET_255 = PixelNorm((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def second_clip_indices(num_frames: int, fps: float, clip_len: int, clips: int, *, partial: bool = False) -> np.ndarray:
    """Frames of the official SlowFast clips (``SlowFast_features.py``), int64 ``[clips * clip_len]``.

    ``rate = round(fps)``; the video has ``num_frames // rate`` whole seconds (10 when the rate is 0, all
    starting at frame 0); clip ``i`` starts at ``i · rate`` and reads ``clip_len`` frames, the last frame
    standing in for frames past the end; clips past the last whole second repeat it. A video shorter than a
    second, where the official code fails, gives clip 0 throughout. ``partial`` counts ``ceil(num_frames / rate)``
    seconds instead, as the original SimpleVQA's frame extractor keeps every frame ``k · rate`` there is.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rate = round(fps)
    seconds = (-(-num_frames // rate) if partial else num_frames // rate) if rate else 10
    starts = np.minimum(np.arange(clips), max(seconds - 1, 0)) * rate
    return np.minimum(starts[:, None] + np.arange(clip_len), num_frames - 1).reshape(-1).astype(np.int64)


def sample_frame_indices(
    num_frames: int, spec: ViewSpec, rng: np.random.Generator | None, fps: float = 0.0
) -> np.ndarray:
    """Frame indices of one view, int64 of length ``spec.total_frames`` (clip after clip).

    A seconds view takes :func:`second_clip_indices` (``fps``: the video's frame rate), the same for each of its
    ``num_clips``. For the other kinds the video is cut into ``segments`` equal parts of
    ``L = num_frames // segments`` frames; each part gives ``fsize_t`` frames ``start + offset + frame_interval * k``.
    ``offset`` is drawn from ``[0, L - fsize_t * frame_interval)`` (``rng``, one per segment and clip) or is the
    centre ``(L - fsize_t * frame_interval) // 2`` (``rng=None``); it is 0 when the segment is too short. Indices
    wrap modulo ``num_frames``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if spec.kind == "seconds":
        seconds = second_clip_indices(num_frames, fps, spec.clip_len, spec.t_frag, partial=spec.partial_seconds)
        return np.tile(seconds, spec.num_clips)
    if spec.t_frag is None:  # Sampler(clip_len, num_clips, interval): num_clips segments, one clip each
        fsize_t, segments, repeats = spec.clip_len, spec.num_clips, 1
    else:  # Sampler(clip_len // t_frag, t_frag, interval, num_clips): fresh offsets per clip
        fsize_t, segments, repeats = spec.clip_len // spec.t_frag, spec.t_frag, spec.num_clips
    seg_len = num_frames // segments
    span = fsize_t * spec.frame_interval
    if seg_len <= span:
        offsets = np.zeros((repeats, segments), dtype=np.int64)
    elif rng is None:
        offsets = np.full((repeats, segments), (seg_len - span) // 2, dtype=np.int64)
    else:
        offsets = rng.integers(0, seg_len - span, size=(repeats, segments), dtype=np.int64)
    starts = seg_len * np.arange(segments, dtype=np.int64)
    steps = spec.frame_interval * np.arange(fsize_t, dtype=np.int64)
    indices = starts[None, :, None] + offsets[:, :, None] + steps[None, None, :]
    return np.mod(indices.reshape(-1), num_frames)


# ------------------------------------------------------------------------------------------------ bilinear


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a*b + c`` with one rounding, as a fused multiply-add.

    The float32 product is exact in float64, so only the final sum is rounded twice (f64 then f32); that
    differs from a true FMA only when the float64 sum lands exactly on a float32 rounding tie (probability
    ~2^-29).
    """
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def _axis_weights(
    in_size: int, out_size: int, scale: np.float32, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of the first ``count`` outputs along one axis (align_corners=False).

    Mirrors torch's ``compute_source_index_and_lambda``: ``src = max(scale * (dst + 0.5) - 0.5, 0)`` (fused),
    ``i0 = min(floor(src), in - 1)``, ``i1 = i0 + (i0 < in - 1)``, ``l1 = src - i0``, ``l0 = 1 - l1``, all
    float32; an axis whose size does not change is copied.
    """
    dst = np.arange(count)
    if in_size == out_size:
        return dst, dst, np.ones(count, np.float32), np.zeros(count, np.float32)
    half = np.float32(0.5)
    src = _fma(np.full(count, scale, np.float32), dst.astype(np.float32) + half, np.full(count, -half))
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    lam0 = (np.float32(1) - lam1).astype(np.float32)
    return i0, i0 + (i0 < in_size - 1), lam0, lam1


def _bilinear(
    video: np.ndarray,
    out_hw: tuple[int, int],
    scales: tuple[np.float32, np.float32],
    count_hw: tuple[int, int],
    unit_scale: bool,
    order: np.ndarray,
) -> np.ndarray:
    """First ``count_hw`` rows/cols of the bilinear resize of uint8 ``video[order]`` to ``out_hw`` (uint8).

    The arithmetic follows torch's generic kernel in float32: per row ``t = x[w0]*b0 + x[w1]*b1``, then
    ``t[h0]*a0 + t[h1]*a1``, the first product of each sum fused with the addition (float64 accumulator, see
    :func:`_fma`). Back to uint8 either by rounding (``unit_scale=False``: torchvision's resize) or, with
    ``unit_scale=True``, as the official upscale does: interpolate ``x / 255``, multiply by 255, truncate.
    Frames are processed one at a time so the temporaries stay in cache (~3x faster than whole clips).
    """
    _, in_h, in_w, _ = video.shape
    h0, h1, a0, a1 = _axis_weights(in_h, out_hw[0], scales[0], count_hw[0])
    w0, w1, b0, b1 = _axis_weights(in_w, out_hw[1], scales[1], count_hw[1])
    rows, row_pos = np.unique(np.concatenate([h0, h1]), return_inverse=True)
    r0, r1 = row_pos[: h0.size], row_pos[h0.size :]
    cols = np.concatenate([w0, w1])
    a0, a1 = a0.astype(np.float64)[:, None, None], a1[:, None, None]
    b0, b1 = b0.astype(np.float64)[:, None], b1[:, None]
    out = np.empty((order.size, count_hw[0], count_hw[1], video.shape[3]), np.uint8)
    for t, frame in enumerate(order):
        x = np.take(video[frame, rows], cols, axis=1)  # [rows, 2 * count_w, C]: x[w0] then x[w1]
        if unit_scale:
            x = x.astype(np.float32)
            x /= np.float32(255.0)
        acc = x[:, : w0.size].astype(np.float64)
        acc *= b0
        acc += x[:, w0.size :] * b1  # float32 product, rounded, then added with the fused product
        row = acc.astype(np.float32)
        acc = row[r0].astype(np.float64)
        acc *= a0
        acc += row[r1] * a1
        result = acc.astype(np.float32)
        if unit_scale:
            result *= np.float32(255.0)
            out[t] = np.minimum(result, np.float32(255.0))  # float -> uint8 assignment truncates
        else:
            out[t] = np.clip(np.rint(result), 0, 255)
    return out


def resize_view(video: np.ndarray, spec: ViewSpec, *, order: np.ndarray | None = None) -> np.ndarray:
    """Square resize of uint8 ``video`` [T,H,W,C] to ``[T, size_h, size_w, C]`` uint8.

    torch ``F.interpolate(x.float(), (size_h, size_w), mode="bilinear", align_corners=False,
    antialias=False)`` then ``round`` (half to even), as torchvision 0.14's ``Resize`` does on uint8 tensors.
    ``order`` resizes the frames ``video[order]`` instead, without copying them first.
    """
    order = _frame_order(video, order)
    out_h, out_w = spec.size_h, spec.size_w
    _, in_h, in_w, _ = video.shape
    scales = (np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w))
    return _bilinear(video, (out_h, out_w), scales, (out_h, out_w), unit_scale=False, order=order)


def short_side_size(height: int, width: int, spec: ViewSpec) -> tuple[int, int]:
    """(h, w) with the short side ``spec.short_side``; the long side is rounded down as the official code does
    it for the view's kind (``vqa_mine.py`` before fragments, the original SimpleVQA's ``extract_frame`` before a
    seconds view's crop, torchvision's ``Resize(int)`` before a resize view's)."""
    s = spec.short_side
    if spec.kind == "fragments":
        return (int(height / (width / s)), s) if height > width else (s, int(width / (height / s)))
    if spec.kind == "seconds":
        return (int(s / width * height), s) if height > width else (s, int(s / height * width))
    return (int(s * height / width), s) if width <= height else (s, int(s * width / height))


def short_side_resize(video: np.ndarray, spec: ViewSpec, order: np.ndarray) -> np.ndarray:
    """``video[order]`` [T, H, W, C] resized to :func:`short_side_size`, uint8: a fragments view as
    ``vqa_mine.py`` (bilinear on x/255, ×255, truncated), a resize or seconds view as torchvision's tensor
    ``Resize`` (bilinear, no antialiasing, rounded)."""
    _, in_h, in_w, _ = video.shape
    out_hw = short_side_size(in_h, in_w, spec)
    scales = (np.float32(in_h) / np.float32(out_hw[0]), np.float32(in_w) / np.float32(out_hw[1]))
    return _bilinear(video, out_hw, scales, out_hw, unit_scale=spec.kind == "fragments", order=order)


def crop_view(view: np.ndarray, spec: ViewSpec, rng: np.random.Generator | None) -> np.ndarray:
    """The ``crop_h × crop_w`` crop of a resized view [T, h, w, C], the same for every frame.

    As the KVQ baseline's ``get_resizecrop_video``: the offsets are ``randrange(size − crop)`` per axis (``rng``;
    0 when the crop fills the axis) or ``size // 2 − crop // 2`` (``rng=None``), which is Zoom-VQA's centre crop
    ``(size − crop) // 2`` for its even crop.
    """
    offsets = []
    for size, crop in zip(view.shape[1:3], (spec.crop_h, spec.crop_w), strict=True):
        if rng is None:
            offsets.append(size // 2 - crop // 2)
        else:
            offsets.append(int(rng.integers(0, size - crop)) if size > crop else 0)
    (y, x) = offsets
    return view[:, y : y + spec.crop_h, x : x + spec.crop_w]


# ------------------------------------------------------------------------------------------------ fragments


def _upscaled_top_left(video: np.ndarray, ratio: float, order: np.ndarray, *, whole: bool = False) -> np.ndarray:
    """The top-left ``H×W`` corner (or, with ``whole``, all) of the official small-video upscale of
    ``video[order]``, uint8.

    Official: ``interpolate(video / 255., scale_factor=1/ratio, mode="bilinear")``, ``* 255.``, cast to uint8
    (truncation). The output size is ``int(size * (1/ratio))``; the kernel uses ``float32(1 / (1/ratio))`` as
    its source step. Only the corner is needed when the (pre-upscale) grid is used, as it never leaves it.
    """
    _, in_h, in_w, _ = video.shape
    factor = 1.0 / ratio
    out_hw = (int(in_h * factor), int(in_w * factor))
    step = np.float32(1.0 / factor)
    return _bilinear(video, out_hw, (step, step), out_hw if whole else (in_h, in_w), unit_scale=True, order=order)


def _cell_offsets(cell: int, fsize: int, shape: tuple[int, ...], rng: np.random.Generator | None) -> np.ndarray:
    """Patch offsets in a grid cell: uniform in ``[0, cell - fsize)``, centred, or 0 if the cell is small."""
    if cell <= fsize:
        return np.zeros(shape, np.int64)
    if rng is None:
        return np.full(shape, (cell - fsize) // 2, np.int64)
    return rng.integers(0, cell - fsize, size=shape, dtype=np.int64)


def fragment_grid(height: int, width: int, spec: ViewSpec) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cell origins along H and W and the cell sizes, from the (pre-upscale) frame size.

    Origins are ``min((size // n) * i, size - fsize)``; cells are ``size // n`` pixels.
    """
    cell_h, cell_w = height // spec.fragments_h, width // spec.fragments_w
    grid_h = np.minimum(cell_h * np.arange(spec.fragments_h), height - spec.fsize_h)
    grid_w = np.minimum(cell_w * np.arange(spec.fragments_w), width - spec.fsize_w)
    return grid_h, grid_w, cell_h, cell_w


def spatial_fragments(
    video: np.ndarray, spec: ViewSpec, rng: np.random.Generator | None, *, order: np.ndarray | None = None
) -> np.ndarray:
    """Grid-of-patches view of uint8 ``video`` [T,H,W,C]: uint8 ``[T, fh * fsize_h, fw * fsize_w, C]``.

    Patch (i, j) of frame t comes from ``(grid_h[i] + off_h[i, j, t // aligned], grid_w[j] + off_w[...])``;
    ``off_h`` then ``off_w`` are drawn from ``rng`` with shape ``(fragments_h, fragments_w, T // aligned)``
    (centred when ``rng`` is None). A single frame uses ``aligned = 1``. ``order`` takes the frames
    ``video[order]`` instead, copying only the patches.

    A video smaller than one fragment (e.g. 16×16) is the one deliberate exception to the official grid: laid out
    from the pre-upscale size it would start at negative offsets (the official code fails there), so the grid is
    laid out on the upscaled frames instead.
    """
    order = _frame_order(video, order)
    frames, (_, height, width, channels) = order.size, video.shape
    fh, fw, ph, pw = spec.fragments_h, spec.fragments_w, spec.fsize_h, spec.fsize_w
    aligned = 1 if frames == 1 else spec.aligned
    if frames % aligned:
        raise ValueError(f"{frames} frames are not a multiple of aligned={aligned}")
    ratio = min(height / (fh * ph), width / (fw * pw))
    if ratio < 1:
        tiny = height < ph or width < pw
        video, order = _upscaled_top_left(video, ratio, order, whole=tiny), np.arange(frames)
        if tiny:
            height, width = video.shape[1:3]
    grid_h, grid_w, cell_h, cell_w = fragment_grid(height, width, spec)
    chunks = frames // aligned
    off_h = _cell_offsets(cell_h, ph, (fh, fw, chunks), rng)
    off_w = _cell_offsets(cell_w, pw, (fh, fw, chunks), rng)
    out = np.empty((frames, fh * ph, fw * pw, channels), np.uint8)
    for c in range(chunks):
        t = slice(c * aligned, (c + 1) * aligned)
        src = order[t]
        for i in range(fh):
            for j in range(fw):
                y, x = grid_h[i] + off_h[i, j, c], grid_w[j] + off_w[i, j, c]
                out[t, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw] = video[src, y : y + ph, x : x + pw]
    return out


# ------------------------------------------------------------------------------------------------ views


def _frame_order(video: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """Check ``video`` is uint8 [T, H, W, C]; the frames to use, ``arange(T)`` by default."""
    if video.ndim != 4 or video.dtype != np.uint8:
        raise ValueError(f"expected a uint8 video [T, H, W, C], got {video.dtype} {video.shape}")
    if order is None:
        return np.arange(video.shape[0])
    order = np.asarray(order)
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer) or order.size == 0:
        raise ValueError(f"order must be a non-empty 1-D integer array, got {order.dtype} {order.shape}")
    if order.min() < 0 or order.max() >= video.shape[0]:
        raise ValueError(f"order indexes frames outside [0, {video.shape[0]})")
    return order


def make_view(
    video: np.ndarray, spec: ViewSpec, rng: np.random.Generator | None, *, order: np.ndarray | None = None
) -> np.ndarray:
    """Build one view from its sampled frames [spec.total_frames, H, W, C]: ``spec.shape`` (``[clips, T, h, w, C]``)
    uint8.

    The spatial transform runs over all ``num_clips * T`` frames at once (as the official code does, so
    ``aligned`` chunks are counted over the whole view), then frames are split into consecutive clips (unless
    ``stack_clips``).
    With ``order`` the sampled frames are ``video[order]`` (decoded frames shared by several views).
    """
    count = video.shape[0] if order is None else len(order)
    if count != spec.total_frames:
        raise ValueError(f"view needs {spec.total_frames} frames, got {count}")
    if spec.short_side is not None:
        video, order = short_side_resize(video, spec, _frame_order(video, order)), None
    if spec.kind == "fragments":
        view = spatial_fragments(video, spec, rng, order=order)
    else:
        view = video if spec.short_side is not None else resize_view(video, spec, order=order)
        if spec.crop_h is not None:
            view = crop_view(view, spec, rng)
    return view.reshape(spec.clips, -1, *view.shape[1:])


def sample_view_indices(
    num_frames: int, views: Mapping[str, ViewSpec], rng: np.random.Generator | None, fps: float = 0.0
) -> dict[str, np.ndarray]:
    """Frame indices of every view (branch -> int64 array), drawn in the mapping's order (``fps``: seconds views);
    a view with ``frames_of`` takes the indices of the branch it names and draws nothing."""
    drawn = {b: sample_frame_indices(num_frames, s, rng, fps) for b, s in views.items() if s.frames_of is None}
    out = {}
    for branch, spec in views.items():
        if spec.frames_of is None:
            out[branch] = drawn[branch]
            continue
        if spec.frames_of not in drawn:
            raise ValueError(
                f"view {branch!r} takes the frames of {spec.frames_of!r}, which is not among the views drawing "
                f"their own frames ({sorted(drawn)})"
            )
        source = drawn[spec.frames_of]
        if source.size != spec.total_frames:
            raise ValueError(
                f"view {branch!r} takes the {source.size} frames of {spec.frames_of!r} but expects "
                f"{spec.total_frames}: give the two views the same clip_len and num_clips"
            )
        out[branch] = source
    return out


def sample_views(
    source: VideoSource,
    views: Mapping[str, ViewSpec],
    rng: np.random.Generator | None,
    name: str | None = None,
    *,
    samples: int = 1,
    num_threads: int = 1,
) -> dict[str, np.ndarray]:
    """Decode ``source`` once and build every view: branch -> uint8 ``[clips, T, H, W, 3]`` (``ViewSpec.shape``).

    All temporal draws come first (in the order of ``views``), then the spatial draws; the union of the frame
    indices of all views is decoded in one sorted pass. ``samples`` > 1 draws that many independent samplings
    (test-time augmentation; needs ``rng``, as centred views would all be alike), stacked on the clip axis:
    ``[samples · clips, T, H, W, 3]``, so a scorer that averages over clips averages over samplings too.
    Raises :class:`~kvq_jax.data.decode.VideoDecodeError` for unreadable videos.
    """
    if not views:
        raise ValueError("no views requested")
    if samples < 1 or (samples > 1 and rng is None):
        raise ValueError(f"samples={samples}: need samples >= 1, and an rng for more than one sampling")
    from kvq_jax.data.decode import decode_frames, open_video, source_label  # decoding only: models need no codecs

    label = source_label(source, name)
    reader = open_video(source, name, num_threads=num_threads)
    draws = [sample_view_indices(len(reader), views, rng, reader.fps) for _ in range(samples)]
    wanted = np.unique(np.concatenate([i for d in draws for i in d.values()]))
    frames = decode_frames(reader, wanted, name=label)
    del reader
    out = {}
    for branch, spec in views.items():
        parts = [make_view(frames, spec, rng, order=np.searchsorted(wanted, d[branch])) for d in draws]
        out[branch] = parts[0] if samples == 1 else np.concatenate(parts)
    return out
