"""Video decoding: only the frames asked for, from a path or from in-memory bytes; decord first, PyAV when it fails.

Why a module of its own: decord is fast but has pitfalls that every caller would otherwise have to remember.
``get_batch`` is slow on unsorted indices (it seeks backwards: ~20x slower), keeps decoding in the background
after it returns (RSS grows by GBs on 1080p) until the reader is rewound with ``seek(0)``, raises a bare
``IndexError`` out of range, and reports broken inputs through three unrelated exception types
(``RuntimeError``, ``DECORDError``, ``AssertionError``). And it cannot read everything: decord 0.6.0 bundles
FFmpeg 4.1 without an AV1 decoder ("cannot find video stream with wanted index: -1"), and it misreads RGB
frames whose width is not a multiple of 32 yet divides the padded row FFmpeg allocates (3 bytes times the width
rounded up to a multiple of 32): for frames 16, 24, 48 or 72 pixels wide ``get_batch`` fails with "from_size ==
to_size". PyAV (FFmpeg 8, with libdav1d) decodes those: :class:`VideoReader` switches to it when decord fails
to open a file or to decode the frames asked for, logs the switch once with decord's reason, and says which
library it uses (``decoder``).

Both decoders give the same frames, as RGB uint8:

* Frame ``i`` is the video stream's ``i``-th packet in presentation (pts) order and ``len()`` is the number of
  packets: decord indexes so, and PyAV's decoded frames are matched to those packets by pts.
* YUV to RGB is FFmpeg's swscale in both, with chroma samples repeated rather than interpolated: 8-bit video
  decodes identically; 10-bit becomes 8-bit RGB within a few levels of decord's on smooth content. At sharp
  colour edges of 10-bit 4:2:0 they differ more: there PyAV stays as close to the source as for 8-bit video,
  decord (and PyAV with swscale's default bilinear chroma) is tens of levels further off.
* A display-matrix rotation (phone videos) of 90, 180 or 270 degrees is applied, so frames come out upright
  (height and width swapped for 90 and 270); other angles and flips are ignored, except that a horizontal flip
  alone reads as a 180 degree rotation. That is decord's behaviour, reproduced for PyAV.

Every input that neither can read -- missing, a directory, zero bytes, random bytes, a truncated or audio-only
file, a text file (FFmpeg's ``tty`` demuxer renders ``.txt`` files as frames) -- becomes one
:class:`VideoDecodeError` whose message names the file, so a data pipeline can decide to skip the sample or to
stop.

``source`` is a path (``str`` / ``os.PathLike``), the *content* of a video file (``bytes``, ``bytearray``,
``memoryview``) or a video's frames pre-extracted at build time (:class:`JpegFrames`, see ``kvq_jax.data.frames``:
one JPEG per frame, numbered as above, read with OpenCV instead of seeking in the video); :func:`decode_frames` also
accepts a reader returned by :func:`open_video`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
from collections.abc import Sequence
from typing import Literal, TypeAlias

import av
import cv2
import numpy as np
from absl import logging

Decoder: TypeAlias = Literal["decord", "pyav", "jpeg"]

try:  # decord has wheels for x86-64 only: elsewhere (Linux aarch64, macOS arm64) every video goes through PyAV
    import decord
except ImportError:
    decord = None
DecoderChoice: TypeAlias = Literal["auto", "pyav"]

# Video file suffixes searched for in folders (lower case).
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".3gp")

_BYTES_TYPES = (bytes, bytearray, memoryview)
# decord prefixes its messages with "[hh:mm:ss] /path/to/file.cc:123: " and may append a C++ stack trace.
_DECORD_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")
# FFmpeg decoders that render text files (tty, bintext, xbin, idf demuxers) as frames: not videos.
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
# VideoFrame.rotation (counter-clockwise degrees) -> np.rot90 quarter turns; decord rotates only by these.
_QUARTER_TURNS = {90: 1, 180: 2, -180: 2, -90: 3}


class VideoDecodeError(Exception):
    """A video could not be opened or decoded; the message starts with the file's name."""


@dataclasses.dataclass(frozen=True)
class JpegFrames:
    """Every frame of a video as JPEG bytes (frame ``i`` is the decoders' frame ``i``), stored in the records at
    build time so that views skip the video decode (``kvq_jax.data.frames``).

    ``short_side`` is None when the frames keep the video's resolution, else the short side they were reduced to
    (serves resize views, not fragment views: see ``kvq_jax.data.frames.record_source``); ``fps`` is the video's.
    """

    frames: Sequence[bytes]
    fps: float
    short_side: int | None = None


VideoSource: TypeAlias = str | os.PathLike | bytes | bytearray | memoryview | JpegFrames


def source_label(source: VideoSource | Reader, name: str | None = None) -> str:
    """The name used in error messages: ``name`` if given, else the path (a reader's label), else ``<bytes:N>``
    (``<jpeg frames:N>``)."""
    if isinstance(source, _BYTES_TYPES):
        default = f"<bytes:{memoryview(source).nbytes}>"
    elif isinstance(source, JpegFrames):
        default = f"<jpeg frames:{len(source.frames)}>"
    elif isinstance(source, (VideoReader, FramesReader)):
        default = source.label
    elif isinstance(source, (str, os.PathLike)):
        default = os.fsdecode(os.fspath(source))
    else:
        raise TypeError(f"video source must be a path or bytes, got {type(source).__name__}")
    return default if name is None else name


def _short(err: BaseException) -> str:
    """One line for an error: decord's first line without its timestamp/source-file prefix, FFmpeg's strerror."""
    text = (err.strerror if isinstance(err, av.FFmpegError) else None) or str(err)
    lines = text.strip().splitlines()
    text = _DECORD_PREFIX.sub("", lines[0]) if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _to_numpy(batch: object) -> np.ndarray:
    """decord returns its own NDArray with the native bridge; accept anything array-like otherwise."""
    as_numpy = getattr(batch, "asnumpy", None)
    return np.asarray(as_numpy() if as_numpy is not None else batch)


class _PyAVVideo:
    """PyAV decoding that numbers, converts and rotates frames as decord does (see the module docstring).

    Nothing stays open between calls: each :meth:`decode` opens the input anew and decodes from its start.
    PyAV's own errors are ``av.FFmpegError``; what it reads but is not a usable video raises ``ValueError``.
    """

    def __init__(self, file: str | bytes, num_threads: int) -> None:
        self._file, self._num_threads = file, num_threads
        pts: list[int | None] = []
        with self._open() as container:
            stream = self._stream(container)
            rate = stream.average_rate
            for packet in container.demux(stream):
                if packet.is_corrupt:  # e.g. the last packet of a truncated file (decord fails on it too)
                    raise ValueError(f"packet {len(pts)} is corrupt or truncated")
                if packet.size:  # the demuxer ends with an empty flush packet
                    pts.append(packet.pts)
        self.count = len(pts)
        self.fps = float(rate) if rate else 0.0
        # pts -> frame index, as decord numbers frames; without pts, frames are numbered in decoding order.
        self._index = {} if None in pts else {p: i for i, p in enumerate(sorted(pts))}

    def _open(self) -> av.container.InputContainer:
        file = io.BytesIO(self._file) if isinstance(self._file, bytes) else self._file
        return av.open(file)

    @staticmethod
    def _stream(container: av.container.InputContainer) -> av.VideoStream:
        stream = container.streams.best("video")  # av_find_best_stream, as decord picks it
        if stream is None:
            raise ValueError("no video stream")
        if stream.codec_context.name in _TEXT_CODECS:
            raise ValueError(f"text rendered by FFmpeg's {stream.codec_context.name} decoder, not a video")
        return stream

    def decode(self, wanted: np.ndarray) -> np.ndarray:
        """RGB uint8 frames at ``wanted`` (sorted, distinct), decoding from the start up to the last of them."""
        targets, last = set(wanted.tolist()), int(wanted[-1])
        frames: dict[int, np.ndarray] = {}
        index = -1
        with self._open() as container:
            stream = self._stream(container)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self._num_threads
            for frame in container.decode(stream):
                index = self._index.get(frame.pts, index + 1)
                if index in targets:
                    frames[index] = self._rgb(frame)
                if index >= last:
                    break
        missing = sorted(targets - frames.keys())
        if missing:
            raise ValueError(f"frames {missing[:8]} did not decode")
        return np.stack([frames[i] for i in wanted.tolist()])

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # POINT: chroma repeated, not interpolated, as decord's swscale does (identical output for 8-bit).
        rgb = frame.to_ndarray(format="rgb24", interpolation="POINT", threads=self._num_threads)
        turns = _QUARTER_TURNS.get(frame.rotation, 0)
        return np.rot90(rgb, turns) if turns else rgb


class VideoReader:
    """An open video (from :func:`open_video`): ``len()`` frames, read with :func:`decode_frames`.

    ``decoder`` is ``"decord"`` while decord reads the file and ``"pyav"`` once decord has failed on it (to
    open it, or on frames asked for later; the frame count stays decord's then). The switch is logged once.
    """

    def __init__(self, file: str | bytes, label: str, *, num_threads: int = 1, decoder: DecoderChoice = "auto") -> None:
        self.label = label
        self._file, self._num_threads = file, num_threads
        self._decord = None  # a decord.VideoReader while decord reads the file
        self._pyav: _PyAVVideo | None = None
        if decoder == "pyav" or decord is None:
            try:
                self._pyav = _PyAVVideo(file, num_threads)
            except (av.FFmpegError, ValueError) as err:
                raise VideoDecodeError(f"{label}: cannot open as a video (PyAV: {_short(err)})") from err
        else:
            handle = io.BytesIO(file) if isinstance(file, bytes) else file
            try:
                self._decord = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=num_threads)
            except Exception as err:  # decord raises RuntimeError, DECORDError or AssertionError for bad files
                self._fall_back(label, err, "cannot open as a video")
        self._count = len(self._decord) if self._decord is not None else self._pyav.count

    @property
    def decoder(self) -> Decoder:
        return "decord" if self._decord is not None else "pyav"

    def __len__(self) -> int:
        return self._count

    @property
    def fps(self) -> float:
        """The stream's average frame rate (0 if unknown): what OpenCV's ``CAP_PROP_FPS`` reports, which the
        official SlowFast feature extractor rounds to cut a video into one-second clips."""
        if self._decord is not None:
            return float(self._decord.get_avg_fps())
        return self._pyav.fps

    def _fall_back(self, label: str, err: Exception, failure: str) -> None:
        """decord failed with ``err``: go on with PyAV, or raise ``failure`` with both reasons if PyAV fails too."""
        try:
            self._pyav = _PyAVVideo(self._file, self._num_threads)
        except (av.FFmpegError, ValueError) as pyav_err:
            raise VideoDecodeError(f"{label}: {failure} ({_short(err)}; PyAV: {_short(pyav_err)})") from err
        self._decord = None
        logging.info("%s: decord failed (%s); decoding with PyAV", label, _short(err))

    def _decord_batch(self, wanted: np.ndarray) -> np.ndarray:
        """decord's frames at sorted ``wanted``; the reader is rewound afterwards (see the module docstring)."""
        try:
            batch = _to_numpy(self._decord.get_batch(wanted.tolist()))
        finally:
            with contextlib.suppress(Exception):  # a broken stream may refuse to seek; the error above matters more
                self._decord.seek(0)  # stops decord's background decoding
        if batch.ndim != 4 or batch.shape[0] != wanted.size or batch.dtype != np.uint8:
            raise ValueError(f"decord returned {batch.dtype} {batch.shape} for {wanted.size} frames")
        return batch

    def _decode(self, wanted: np.ndarray, label: str) -> np.ndarray:
        """RGB uint8 ``[len(wanted), H, W, 3]`` for sorted, distinct, in-range ``wanted``: :func:`decode_frames`."""
        decord_reason = ""
        if self._decord is not None:
            try:
                return self._decord_batch(wanted)
            except Exception as err:  # DECORDError / RuntimeError from a frame that cannot be read or converted
                decord_reason = f"{_short(err)}; "
                self._fall_back(label, err, "decoding frames failed")
        try:
            return self._pyav.decode(wanted)
        except (av.FFmpegError, ValueError) as err:
            raise VideoDecodeError(f"{label}: decoding frames failed ({decord_reason}PyAV: {_short(err)})") from err


class FramesReader:
    """Pre-extracted frames (:class:`JpegFrames`) read like a :class:`VideoReader`: ``len()``, ``fps``,
    :func:`decode_frames`; only the JPEGs asked for are decoded (OpenCV, straight to RGB)."""

    decoder: Decoder = "jpeg"

    def __init__(self, source: JpegFrames, label: str) -> None:
        self.label, self.fps, self.short_side = label, float(source.fps), source.short_side
        self._frames = source.frames

    def __len__(self) -> int:
        return len(self._frames)

    def _decode(self, wanted: np.ndarray, label: str) -> np.ndarray:
        """RGB uint8 ``[len(wanted), H, W, 3]`` for in-range ``wanted``: :func:`decode_frames`."""
        out: np.ndarray | None = None
        for k, i in enumerate(wanted.tolist()):
            data = np.frombuffer(self._frames[i], np.uint8)
            frame = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None
            if frame is None:
                raise VideoDecodeError(f"{label}: pre-extracted frame {i} is not a decodable JPEG")
            if out is None:
                out = np.empty((wanted.size, *frame.shape), np.uint8)
            elif frame.shape != out.shape[1:]:
                raise VideoDecodeError(f"{label}: pre-extracted frame {i} is {frame.shape}, frame 0 {out.shape[1:]}")
            out[k] = frame
        return out


Reader: TypeAlias = VideoReader | FramesReader


def open_video(
    source: VideoSource, name: str | None = None, *, num_threads: int = 1, decoder: DecoderChoice = "auto"
) -> Reader:
    """Open ``source`` on the CPU and check it has video frames.

    ``decoder="auto"`` tries decord, then PyAV; ``"pyav"`` uses PyAV alone (to compare the two, or to skip
    decord's attempt on files known to need PyAV). ``num_threads=1`` suits data-loader worker processes (one
    decoder thread each); 0 lets FFmpeg choose. Pre-extracted frames (:class:`JpegFrames`) ignore both.
    """
    label = source_label(source, name)
    if isinstance(source, JpegFrames):
        if not len(source.frames):
            raise VideoDecodeError(f"{label}: no pre-extracted frames")
        return FramesReader(source, label)
    if isinstance(source, _BYTES_TYPES):
        file: str | bytes = bytes(source)
        if not file:
            raise VideoDecodeError(f"{label}: empty input (0 bytes)")
    else:
        file = os.fsdecode(os.fspath(source))
        if not os.path.exists(file):
            raise VideoDecodeError(f"{label}: no such file")
        if os.path.isdir(file):
            raise VideoDecodeError(f"{label}: is a directory, not a video file")
        if os.path.getsize(file) == 0:
            raise VideoDecodeError(f"{label}: empty file (0 bytes)")
    reader = VideoReader(file, label, num_threads=num_threads, decoder=decoder)
    if len(reader) <= 0:
        raise VideoDecodeError(f"{label}: no video frames")
    return reader


def num_frames(source: VideoSource, name: str | None = None, *, check_decode: bool = True) -> int:
    """Number of frames (video packets, as decord indexes them).

    With ``check_decode`` the first frame is decoded as well: some non-videos (e.g. text files, which
    FFmpeg's ``tty`` demuxer accepts) open fine and only fail when a frame is converted. This costs one
    key-frame decode.
    """
    reader = open_video(source, name)
    count = len(reader)
    if check_decode:
        decode_frames(reader, [0], name=source_label(source, name))
    return count


def decode_frames(
    source: VideoSource | Reader,
    indices: Sequence[int] | np.ndarray,
    name: str | None = None,
    *,
    num_threads: int = 1,
) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed): RGB uint8 ``[len(indices), H, W, 3]``.

    Only the distinct frames are decoded, in ascending order (decord seeks backwards otherwise: ~20x slower;
    PyAV decodes from the start and stops after the last), and the result is permuted back to the order asked
    for. Indices outside ``[0, num_frames)`` raise ``IndexError`` naming the file; a frame that fails to decode
    with both decord and PyAV (e.g. a truncated file) raises :class:`VideoDecodeError`.
    """
    label = source_label(source, name)
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"{label}: indices must be a non-empty 1-D sequence, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{label}: indices must be integers, got dtype {idx.dtype}")
    is_reader = isinstance(source, (VideoReader, FramesReader))
    reader = source if is_reader else open_video(source, name, num_threads=num_threads)
    count = len(reader)
    bad = (idx < 0) | (idx >= count)
    if bad.any():
        raise IndexError(f"{label}: frame indices {idx[bad][:8].tolist()} out of range for a video of {count} frames")
    unique, inverse = np.unique(idx, return_inverse=True)
    batch = reader._decode(unique, label)
    if unique.size == idx.size and np.array_equal(unique, idx):
        return batch
    return batch[inverse.reshape(-1)]
