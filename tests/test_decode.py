"""kvq_jax.data.decode: frame order and duplicates, bytes vs paths, and one error type for every bad input."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest

from kvq_jax.data.decode import VideoDecodeError, decode_frames, num_frames, open_video

FRAMES, HEIGHT, WIDTH = 24, 64, 96


def gray_level(k: int) -> int:
    """Frame k of the fixture clip is a flat gray of this level (10 apart, so order errors are obvious)."""
    return 10 * k + 5


def encode_clip(path: Path, frames: list[np.ndarray], options: dict[str, str] | None = None) -> None:
    """Write RGB frames as H.264 (x264, near-lossless QP 0, GOP 8) in an mp4."""
    with av.open(str(path), "w", format="mp4", options=options or {}) as out:
        stream = out.add_stream("libx264", rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "qp": "0", "g": "8"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def encode_audio_only(path: Path) -> None:
    """An AAC-only .m4a: a valid media file without any video stream."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        pts = 0
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, pts
            pts += 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode_media")
    clip = root / "gray_ramp.mp4"
    encode_clip(clip, [np.full((HEIGHT, WIDTH, 3), gray_level(k), np.uint8) for k in range(FRAMES)])
    noisy = root / "noisy_faststart.mp4"  # moov atom first, so a truncated copy still has its index
    rng = np.random.default_rng(0)
    encode_clip(
        noisy,
        [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(12)],
        {"movflags": "faststart"},
    )
    data, noisy_data = clip.read_bytes(), noisy.read_bytes()
    contents = {
        "zero": b"",
        "random": np.random.default_rng(1).bytes(4096),
        "truncated": data[: len(data) // 2],
        "truncated_faststart": noisy_data[: len(noisy_data) // 2],
    }
    paths = {"clip": clip}
    for kind, content in contents.items():
        paths[kind] = root / f"{kind}.mp4"
        paths[kind].write_bytes(content)
    paths["audio"] = root / "audio_only.m4a"
    encode_audio_only(paths["audio"])
    paths["text"] = root / "notes.txt"
    paths["text"].write_text("not a video\n" * 50)
    paths["directory"] = root / "a_directory.mp4"
    paths["directory"].mkdir()
    paths["missing"] = root / "missing.mp4"
    return paths


def test_num_frames_from_path_pathlike_and_bytes(media):
    clip = media["clip"]
    assert num_frames(clip) == FRAMES
    assert num_frames(str(clip)) == FRAMES
    assert num_frames(clip.read_bytes()) == FRAMES
    assert len(open_video(clip)) == FRAMES


def test_decode_frames_order_and_duplicates(media):
    indices = [5, 2, 2, 23, 0, 5]
    frames = decode_frames(media["clip"], indices)
    assert frames.shape == (len(indices), HEIGHT, WIDTH, 3)
    assert frames.dtype == np.uint8
    expected = np.array([gray_level(k) for k in indices], np.float64)
    np.testing.assert_allclose(frames.reshape(len(indices), -1).mean(axis=1), expected, atol=2.0)
    # Duplicated indices are the same decoded frame.
    np.testing.assert_array_equal(frames[1], frames[2])
    np.testing.assert_array_equal(frames[0], frames[5])


def test_bytes_and_path_decode_identically(media):
    indices = np.array([7, 1, 19])
    from_path = decode_frames(media["clip"], indices)
    from_bytes = decode_frames(media["clip"].read_bytes(), indices)
    np.testing.assert_array_equal(from_path, from_bytes)


def test_reusing_an_open_reader(media):
    reader = open_video(media["clip"])
    first = decode_frames(reader, [20, 3])
    second = decode_frames(reader, np.array([3, 20]))  # the reader was rewound after the first call
    np.testing.assert_array_equal(first, second[::-1])
    np.testing.assert_allclose(first.reshape(2, -1).mean(axis=1), [gray_level(20), gray_level(3)], atol=2.0)


@pytest.mark.parametrize("bad_index", [FRAMES, -1, 10**6])
def test_out_of_range_indices_name_the_file(media, bad_index):
    with pytest.raises(IndexError, match=rf"gray_ramp\.mp4.*\[{bad_index}\].*{FRAMES} frames"):
        decode_frames(media["clip"], [0, bad_index])


def test_bad_index_arrays(media):
    with pytest.raises(ValueError, match="non-empty 1-D"):
        decode_frames(media["clip"], [])
    with pytest.raises(TypeError, match="integers"):
        decode_frames(media["clip"], [0.5])


BAD_FILES = ["zero", "random", "truncated", "truncated_faststart", "audio", "text", "directory", "missing"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_paths_raise_video_decode_error_naming_the_file(media, kind):
    path = media[kind]
    for call in (lambda: decode_frames(path, [0]), lambda: num_frames(path)):
        with pytest.raises(VideoDecodeError, match=re.escape(str(path))):
            call()


@pytest.mark.parametrize("kind", ["zero", "random", "truncated", "truncated_faststart", "audio", "text"])
def test_bad_bytes_raise_video_decode_error_naming_the_input(media, kind):
    data = media[kind].read_bytes()
    with pytest.raises(VideoDecodeError, match=re.escape(f"<bytes:{len(data)}>")):
        decode_frames(data, [0])
    with pytest.raises(VideoDecodeError, match=r"^clip_0007\.mp4: "):
        decode_frames(data, [0], name="clip_0007.mp4")


def test_text_file_opens_but_fails_at_the_frame(media):
    """FFmpeg's tty demuxer accepts text: decord opens it, so the error must come from get_batch."""
    reader = open_video(media["text"])
    assert len(reader) > 0
    with pytest.raises(VideoDecodeError, match="decoding frames failed"):
        decode_frames(reader, [0], name="notes.txt")
    assert num_frames(media["text"], check_decode=False) == len(reader)


def test_unsupported_source_type():
    with pytest.raises(TypeError, match="path or bytes"):
        open_video(42)  # type: ignore[arg-type]
