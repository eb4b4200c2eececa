"""Pre-extracted frames in the records: every frame of a video, decoded once at build time and stored as JPEG.

Why: at pod scale the input pipeline, not the accelerators, bounds training (≈1.4 CPU-s of H.264 seeking and
decoding per 720p DOVER training video). Decoding the few JPEGs a sample needs costs a fraction of that
(``python -m kvq_jax.data.bench --preextract``); the price is record size (tens of times the video's bytes).

What is kept (``--frames jpeg`` of ``python -m kvq_jax.data.build``):

* *every* frame, numbered as the decoders number them: the samplers draw their offsets over every frame (any
  parity, whatever ``frame_interval``), so keeping every k-th frame would change the temporal sampling;
* RGB as the decoder gives it, JPEG-coded with 4:4:4 chroma (4:2:0 would re-subsample chroma that the video decode
  already upsampled, tens of levels off at colour edges) at ``quality`` (default 90); the video's bytes stay in
  the record beside them (the eval and scoring tools, and views that want the exact decode, read those);
* at native resolution by default: every view (fragments, resize, seconds) is then the view of the decoded video
  up to JPEG loss. With ``short_side`` the frames are reduced (OpenCV ``INTER_AREA``, aspect kept, videos already
  that small untouched): enough for resize and seconds views, whose pixels then differ from the native path (they
  resize a resized frame), but *not* for fragment views, which take native-resolution patches: a record with
  reduced frames refuses them (:func:`record_source`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from kvq_jax.data import decode
from kvq_jax.data.views import ViewSpec

FORMATS = ("jpeg",)
# Frames decoded per batch while extracting: bounded memory (64 720p RGB frames ≈ 180 MB), few decoder restarts.
CHUNK = 64


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    """How a builder pre-extracts frames: ``format`` (``jpeg``), JPEG ``quality`` (1-100) and ``short_side``
    (None: native resolution; else frames are reduced to that short side, for resize views only)."""

    format: str = "jpeg"
    quality: int = 90
    short_side: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"frames format must be one of {FORMATS}, got {self.format!r}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise ValueError(f"frames quality must be an int in [1, 100], got {self.quality!r}")
        if self.short_side is not None and (
            isinstance(self.short_side, bool) or not isinstance(self.short_side, int) or self.short_side < 32
        ):
            raise ValueError(f"frames short side must be an int >= 32 (or native), got {self.short_side!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reduced_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) of stored frames: the short side ``short_side`` (long side rounded), or unchanged when that would
    not shrink the frame."""
    if short_side is None or min(height, width) <= short_side:
        return height, width
    scale = short_side / min(height, width)
    return (short_side, round(width * scale)) if height <= width else (round(height * scale), short_side)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """One RGB uint8 frame as JPEG bytes, 4:4:4 chroma."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"JPEG encoding failed for a {frame.shape} frame")
    return data.tobytes()


def extract(source: decode.VideoSource, options: FrameOptions, name: str | None = None) -> dict[str, Any]:
    """The record fields of ``source``'s pre-extracted frames: ``frames`` (JPEG bytes per frame), ``fps`` and
    ``frames_short_side`` (0: native). Frames come from :func:`~kvq_jax.data.decode.decode_frames`, so they are
    exactly what the views would decode. Raises :class:`~kvq_jax.data.decode.VideoDecodeError`."""
    reader = decode.open_video(source, name)
    count, label = len(reader), decode.source_label(source, name)
    out: list[bytes] = []
    short = 0
    for start in range(0, count, CHUNK):
        batch = decode.decode_frames(reader, np.arange(start, min(count, start + CHUNK)), name=label)
        height, width = batch.shape[1:3]
        size = reduced_size(height, width, options.short_side)
        if size != (height, width):
            short = min(size)
        for frame in batch:
            if size != (height, width):
                frame = cv2.resize(frame, size[::-1], interpolation=cv2.INTER_AREA)
            out.append(encode_jpeg(frame, options.quality))
    return {"frames": out, "fps": np.float32(reader.fps), "frames_short_side": short}


def record_source(record: Mapping[str, Any], views: Mapping[str, ViewSpec]) -> decode.VideoSource:
    """What a record's ``views`` are made from: its pre-extracted frames when it has them, else its video bytes.

    Reduced frames with a fragments view raise ``ValueError``: fragments are native-resolution patches, which
    reduced frames no longer hold (build with native frames, or without ``--frames_short_side``)."""
    frames = record.get("frames")
    if frames is None or len(frames) == 0:
        return record["video"]
    short = int(record["frames_short_side"])
    fragments = sorted(b for b, v in views.items() if v.kind == "fragments")
    if short and fragments:
        name = record.get("name", b"?")
        raise ValueError(
            f"{name.decode(errors='replace') if isinstance(name, bytes) else name}: its frames were pre-extracted at "
            f"short side {short}, but fragment view(s) {fragments} need native resolution: rebuild the records "
            "with native frames (no --frames_short_side) or without --frames"
        )
    return decode.JpegFrames(list(frames), float(record["fps"]), short or None)
