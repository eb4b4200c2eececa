"""Real encoded test videos, made with the encoders of PyAV's bundled FFmpeg: tiny, with a known picture.

Each frame is :func:`pattern`: red rises left to right, green top to bottom (so orientation is visible) and
blue is the frame's own :func:`level` (so frame order is visible). Smooth ramps keep lossy codecs close to the
source, which lets tests compare decoded frames with what was encoded.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# Encoder options: fast, near-lossless, quiet. x264/x265 always use B-frames, so decoding reorders frames
# (x264 uses none when lossless, nor with its adaptive B-frame decision on these clips).
ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast", "qp": "4", "g": "6", "x264-params": "bframes=2:b-adapt=0"},
    "libx265": {"preset": "ultrafast", "crf": "8", "x265-params": "bframes=2:b-adapt=0:log-level=error"},
    "libsvtav1": {"preset": "10", "crf": "10"},  # at preset 12 some frames of these clips are 20+ levels off
}


def level(k: int) -> int:
    """Blue level of frame k: 20 apart, so a frame out of order is obvious."""
    return 30 + 20 * k


def pattern(k: int, height: int, width: int) -> np.ndarray:
    """Frame k as RGB uint8 ``[height, width, 3]``: horizontal red ramp, vertical green ramp, flat blue."""
    y, x = np.mgrid[0:height, 0:width]
    red = 40 + 160 * x / max(width - 1, 1)
    green = 40 + 160 * y / max(height - 1, 1)
    return np.stack([red, green, np.full_like(red, level(k))], axis=-1).round().astype(np.uint8)


def quadrants(height: int, width: int) -> np.ndarray:
    """Flat red, green, blue and white quarters: sharp colour edges, where chroma handling shows."""
    out = np.empty((height, width, 3), np.uint8)
    top, left = slice(0, height // 2), slice(0, width // 2)
    bottom, right = slice(height // 2, height), slice(width // 2, width)
    out[top, left], out[top, right], out[bottom, left], out[bottom, right] = (255, 0, 0), (0, 255, 0), (0, 0, 255), 255
    return out


def clip(frames: int, height: int, width: int) -> np.ndarray:
    """The first ``frames`` frames of :func:`pattern`: uint8 ``[frames, height, width, 3]``."""
    return np.stack([pattern(k, height, width) for k in range(frames)])


def encode_video(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    *,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    rate: int = 30,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB ``frames`` ``[T, H, W, 3]`` into ``path`` (container from its suffix); returns ``path``.

    ``rotation`` (counter-clockwise degrees, as FFmpeg reports it) goes into the display matrix: a player (and
    decord) turns the picture by it, so a landscape clip stored with rotation 90 plays as portrait.
    """
    assert codec in av.codecs_available, f"PyAV's FFmpeg lacks the {codec} encoder"
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = ENCODER_OPTIONS[codec]
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path
