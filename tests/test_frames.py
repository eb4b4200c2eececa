"""Pre-extracted frames in the records (``--frames jpeg``): built from real encoded videos, equal to the decode up to
JPEG loss, the views and the train pipeline read from them, reduced frames refused for fragments, bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from absl import flags
from videos import clip, encode_video

from kvq_jax.data import build, decode, frames, pipeline, synthetic, views

TINY = {"sources": 6, "size": (96, 160), "frames": 16, "seed": 0, "workers": 1}
SPEC = {
    "technical": views.ViewSpec("fragments", clip_len=8, frame_interval=2, fragments_h=2, fragments_w=2, aligned=8),
    "aesthetic": views.ViewSpec("resize", clip_len=8, frame_interval=2, t_frag=8, size_h=48, size_w=48),
}
# JPEG quality 90, 4:4:4, against the decoded frames: the smooth test patterns stay within a few levels; the
# synthetic set's textured, noisy clips within ~3 levels on average.
PATTERN_MAX, PATTERN_MEAN = 8, 1.2
TEXTURE_MEAN = 4.0


@pytest.fixture(scope="module")
def pattern_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KVQ-layout folder of real encoded pattern clips: H.264, HEVC, and an H.264 one stored rotated by 90°."""
    root = tmp_path_factory.mktemp("pattern_kvq")
    (root / "train").mkdir()
    encode_video(root / "train" / "0001.mp4", clip(12, 64, 96))
    encode_video(root / "train" / "0002.mp4", clip(10, 64, 96), "libx265")
    encode_video(root / "train" / "0003.mp4", clip(9, 48, 80), rotation=90)
    (root / "train_data.csv").write_text("filename,score\n" + "".join(f"train/000{i}.mp4,{i}.5\n" for i in (1, 2, 3)))
    return root


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    return synthetic.generate(tmp_path_factory.mktemp("kvq_tiny") / "set", progress=False, **TINY)


@pytest.fixture(scope="module")
def tiny_both(tiny_set: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny synthetic set built twice: video bytes only, and with native JPEG frames."""
    plain, jpeg = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("jpeg")
    build.build("kvq_synthetic", plain, manual_dir=tiny_set)
    build.build("kvq_synthetic", jpeg, manual_dir=tiny_set, frames=frames.FrameOptions())
    return plain, jpeg


def _records(data_dir: Path, name: str, split: str = "train") -> list[dict]:
    src = pipeline.load_split(data_dir, name, split)
    return [src[i] for i in range(len(src))]


def test_frames_equal_the_decoded_video_up_to_jpeg_loss(pattern_folder: Path, tmp_path: Path) -> None:
    report = build.build("kvq", tmp_path, manual_dir=pattern_folder, frames=frames.FrameOptions())
    assert report["frames"] == {"format": "jpeg", "quality": 90, "short_side": None}
    assert "pre-extracted frames" in build.format_report(report)
    records = _records(tmp_path, "kvq")
    assert [r["name"] for r in records] == [b"train/0001.mp4", b"train/0002.mp4", b"train/0003.mp4"]
    for r in records:
        assert len(r["frames"]) == r["num_frames"] and r["frames_short_side"] == 0 and r["fps"] == 30.0
        assert r["video"] == (pattern_folder / r["name"].decode()).read_bytes(), "the video bytes stay"
        source = frames.record_source(r, SPEC)
        assert isinstance(source, decode.JpegFrames) and source.short_side is None
        every = np.arange(r["num_frames"])
        got, want = decode.decode_frames(source, every), decode.decode_frames(r["video"], every)
        assert got.shape == want.shape  # the rotated clip comes out upright (80 × 48) from both
        err = np.abs(got.astype(np.int16) - want)
        assert err.max() <= PATTERN_MAX and err.mean() <= PATTERN_MEAN, (r["name"], err.max(), err.mean())
        shuffled = np.array([3, 0, 3, 1])  # any order, repeats: the decoders' numbering
        np.testing.assert_array_equal(decode.decode_frames(source, shuffled), got[shuffled])
    assert records[2]["frames"] and decode.open_video(frames.record_source(records[2], SPEC)).decoder == "jpeg"


def test_views_from_frames_match_the_video_views(tiny_both: tuple[Path, Path]) -> None:
    plain, jpeg = tiny_both
    for a, b in zip(_records(plain, "kvq_synthetic"), _records(jpeg, "kvq_synthetic"), strict=True):
        assert a["name"] == b["name"] and "frames" not in a
        assert frames.record_source(a, SPEC) is a["video"]
        for seed in (None, 3):
            rng_a, rng_b = (None, None) if seed is None else (np.random.default_rng(seed), np.random.default_rng(seed))
            va = views.sample_views(frames.record_source(a, SPEC), SPEC, rng_a)
            vb = views.sample_views(frames.record_source(b, SPEC), SPEC, rng_b)
            for branch in SPEC:
                assert va[branch].shape == vb[branch].shape == SPEC[branch].shape
                err = np.abs(va[branch].astype(np.int16) - vb[branch])
                assert err.mean() <= TEXTURE_MEAN, (b["name"], branch, err.mean())
                assert np.percentile(err, 99) <= 16, "same frames and patches: only JPEG noise differs"


def test_train_iterator_reads_the_frames(tiny_both: tuple[Path, Path]) -> None:
    plain, jpeg = tiny_both
    batches = {}
    for key, data_dir in (("plain", plain), ("jpeg", jpeg)):
        src = pipeline.load_split(data_dir, "kvq_synthetic", "train")
        it = pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=2, num_workers=1)
        batches[key] = [next(it) for _ in range(2)]
    for a, b in zip(batches["plain"], batches["jpeg"], strict=True):
        np.testing.assert_array_equal(a["name"], b["name"])
        np.testing.assert_array_equal(a["mos"], b["mos"])
        for branch in SPEC:
            assert b[branch].shape == (4, *SPEC[branch].shape) and b[branch].dtype == np.uint8
            assert np.abs(a[branch].astype(np.int16) - b[branch]).mean() <= TEXTURE_MEAN
    src = pipeline.load_split(jpeg, "kvq_synthetic", "val")
    (batch,) = list(pipeline.eval_iterator(src, SPEC, global_batch_size=14, shard_index=0, shard_count=1))
    assert batch["valid"].all() and not pipeline.failed_names(batch)


def test_reduced_frames_serve_resize_views_and_refuse_fragments(tiny_set: Path, tmp_path: Path) -> None:
    base = ["--dataset", "kvq_synthetic", "--manual_dir", str(tiny_set), "--data_dir", str(tmp_path)]
    assert build.main([*base, "--frames", "jpeg", "--frames_short_side", "48", "--frames_quality", "80"]) == 0
    record = _records(tmp_path, "kvq_synthetic", "val")[0]
    assert record["frames_short_side"] == 48
    resize_only = {"aesthetic": SPEC["aesthetic"]}
    source = frames.record_source(record, resize_only)
    assert decode.decode_frames(source, [0]).shape == (1, 80, 48, 3)  # 160 × 96 (portrait) reduced, aspect kept
    view = views.sample_views(source, resize_only, None)["aesthetic"]
    native = views.sample_views(record["video"], resize_only, None)["aesthetic"]
    assert view.shape == native.shape and np.abs(view.astype(np.int16) - native).mean() < 12
    with pytest.raises(ValueError, match=r"short side 48, but fragment view\(s\) \['technical'\] need native"):
        frames.record_source(record, SPEC)
    src = pipeline.load_split(tmp_path, "kvq_synthetic", "train")
    with pytest.raises(ValueError, match="need native resolution"):
        next(pipeline.train_iterator(src, SPEC, global_batch_size=2, seed=0))
    assert frames.reduced_size(96, 160, 48) == (48, 80) and frames.reduced_size(160, 96, 200) == (160, 96)


def test_options_are_checked(tiny_set: Path, tmp_path: Path, capsys) -> None:
    for bad, message in (
        ({"quality": 0}, "quality must be an int in"),
        ({"quality": 101}, "quality must be an int in"),
        ({"short_side": 16}, "short side must be an int >= 32"),
        ({"format": "png"}, "format must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            frames.FrameOptions(**bad)
    base = ["--dataset", "kvq_synthetic", "--manual_dir", str(tiny_set), "--data_dir", str(tmp_path)]
    assert build.main([*base, "--frames_quality", "80"]) == 2
    assert "need --frames jpeg" in capsys.readouterr().err
    assert build.main([*base, "--frames", "jpeg", "--frames_short_side", "8"]) == 2
    assert "short side must be an int >= 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main([*base, "--frames", "png"])
    assert build.main(base) == 0
    assert build.main([*base, "--frames", "jpeg"]) == 2  # records without frames are there already
    assert "pass --overwrite, or another --data_dir" in capsys.readouterr().err


def test_a_corrupt_frame_is_a_decode_error() -> None:
    good = frames.encode_jpeg(clip(1, 32, 48)[0], 90)
    source = decode.JpegFrames([good, good[: len(good) // 4], b""], fps=25.0)
    assert decode.decode_frames(source, [0, 0]).shape == (2, 32, 48, 3)
    for index in (1, 2):
        with pytest.raises(decode.VideoDecodeError, match=f"pre-extracted frame {index} is not a decodable JPEG"):
            decode.decode_frames(source, [index])
    with pytest.raises(decode.VideoDecodeError, match="no pre-extracted frames"):
        decode.open_video(decode.JpegFrames([], fps=25.0))
