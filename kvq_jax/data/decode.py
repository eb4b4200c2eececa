"""Video decoding with decord: only the frames asked for, from a path or from in-memory bytes.

Why a module of its own: decord has pitfalls that every caller would otherwise have to remember (see
``/work/shared/reference/data.md`` §3): ``get_batch`` is slow on unsorted indices, keeps decoding in the
background after it returns (RSS grows by GBs on 1080p), raises a bare ``IndexError`` out of range, and
reports broken inputs through three unrelated exception types (``RuntimeError``, ``DECORDError``,
``AssertionError``). Here every input that cannot be read — missing, a directory, zero bytes, random bytes, a
truncated or audio-only file, a text file — becomes one :class:`VideoDecodeError` whose message names the
file, so a data pipeline can decide to skip the sample or to stop.

``source`` is a path (``str`` / ``os.PathLike``) or the *content* of a video file (``bytes``, ``bytearray``,
``memoryview``); :func:`decode_frames` also accepts a reader returned by :func:`open_video`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Sequence
from typing import TypeAlias

import decord
import numpy as np

VideoSource: TypeAlias = str | os.PathLike | bytes | bytearray | memoryview

_BYTES_TYPES = (bytes, bytearray, memoryview)
# decord prefixes its messages with "[hh:mm:ss] /path/to/file.cc:123: " and may append a C++ stack trace.
_DECORD_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")


class VideoDecodeError(Exception):
    """A video could not be opened or decoded; the message starts with the file's name."""


def source_label(source: VideoSource | decord.VideoReader, name: str | None = None) -> str:
    """The name used in error messages: ``name`` if given, else the path, else ``<bytes:N>``."""
    if isinstance(source, _BYTES_TYPES):
        default = f"<bytes:{memoryview(source).nbytes}>"
    elif isinstance(source, decord.VideoReader):
        default = "<VideoReader>"
    elif isinstance(source, (str, os.PathLike)):
        default = os.fsdecode(os.fspath(source))
    else:
        raise TypeError(f"video source must be a path or bytes, got {type(source).__name__}")
    return default if name is None else name


def _short(err: BaseException) -> str:
    """First line of a decord error without its timestamp/source-file prefix."""
    lines = str(err).strip().splitlines()
    text = _DECORD_PREFIX.sub("", lines[0]) if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def open_video(source: VideoSource, name: str | None = None, *, num_threads: int = 1) -> decord.VideoReader:
    """Open ``source`` with decord on the CPU (RGB output) and check it has video frames.

    ``num_threads=1`` suits data-loader worker processes (one decoder thread each); 0 lets FFmpeg choose.
    Prefer :func:`decode_frames` to ``get_batch`` on the returned reader: it handles decord's pitfalls.
    """
    label = source_label(source, name)
    if isinstance(source, _BYTES_TYPES):
        data = bytes(source)
        if not data:
            raise VideoDecodeError(f"{label}: empty input (0 bytes)")
        handle: str | io.BytesIO = io.BytesIO(data)
    else:
        path = os.fsdecode(os.fspath(source))
        if not os.path.exists(path):
            raise VideoDecodeError(f"{label}: no such file")
        if os.path.isdir(path):
            raise VideoDecodeError(f"{label}: is a directory, not a video file")
        if os.path.getsize(path) == 0:
            raise VideoDecodeError(f"{label}: empty file (0 bytes)")
        handle = path
    try:
        reader = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=num_threads)
    except Exception as err:  # decord raises RuntimeError, DECORDError or AssertionError for bad files
        raise VideoDecodeError(f"{label}: cannot open as a video ({_short(err)})") from err
    if len(reader) <= 0:
        raise VideoDecodeError(f"{label}: no video frames")
    return reader


def num_frames(source: VideoSource, name: str | None = None, *, check_decode: bool = True) -> int:
    """Number of frames as the container reports it (what decord indexes).

    With ``check_decode`` the first frame is decoded as well: some non-videos (e.g. text files, which
    FFmpeg's ``tty`` demuxer accepts) open fine and only fail when a frame is converted. This costs one
    key-frame decode.
    """
    reader = open_video(source, name)
    count = len(reader)
    if check_decode:
        decode_frames(reader, [0], name=source_label(source, name))
    return count


def _to_numpy(batch: object) -> np.ndarray:
    """decord returns its own NDArray with the native bridge; accept anything array-like otherwise."""
    as_numpy = getattr(batch, "asnumpy", None)
    return np.asarray(as_numpy() if as_numpy is not None else batch)


def decode_frames(
    source: VideoSource | decord.VideoReader,
    indices: Sequence[int] | np.ndarray,
    name: str | None = None,
    *,
    num_threads: int = 1,
) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed): RGB uint8 ``[len(indices), H, W, 3]``.

    Only the distinct frames are decoded, in ascending order (decord seeks backwards otherwise: ~20x slower),
    and the result is permuted back to the order asked for. Afterwards the reader is rewound (``seek(0)``) so
    decord's background decoding stops. Indices outside ``[0, num_frames)`` raise ``IndexError`` naming the
    file; a frame that fails to decode (e.g. a truncated file) raises :class:`VideoDecodeError`.
    """
    label = source_label(source, name)
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"{label}: indices must be a non-empty 1-D sequence, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{label}: indices must be integers, got dtype {idx.dtype}")
    reader = source if isinstance(source, decord.VideoReader) else open_video(source, name, num_threads=num_threads)
    count = len(reader)
    bad = (idx < 0) | (idx >= count)
    if bad.any():
        raise IndexError(f"{label}: frame indices {idx[bad][:8].tolist()} out of range for a video of {count} frames")
    unique, inverse = np.unique(idx, return_inverse=True)
    try:
        batch = _to_numpy(reader.get_batch(unique.tolist()))
    except Exception as err:  # DECORDError / RuntimeError from a frame that cannot be read or converted
        raise VideoDecodeError(f"{label}: decoding frames failed ({_short(err)})") from err
    finally:
        with contextlib.suppress(Exception):  # a broken stream may refuse to seek; the error above matters more
            reader.seek(0)
    if batch.ndim != 4 or batch.shape[0] != unique.size or batch.dtype != np.uint8:
        raise VideoDecodeError(f"{label}: decoder returned {batch.dtype} {batch.shape} for {unique.size} frames")
    if unique.size == idx.size and np.array_equal(unique, idx):
        return batch
    return batch[inverse.reshape(-1)]
