"""`kvq-jax score` (kvq_jax.predict), its CSVs and heat-maps, and the `kvq-jax` dispatcher.

The model runs as FAST-VQA-M with 8-frame single-clip views (``--view clip_len=8 --clips 1``) and seeded
weights saved with `save_weights`, so one compilation serves the CLI runs. Scores are checked against the
model's forward (`kvq_jax.scoring.map_scores`) on views sampled and normalised here with the ImageNet statistics
written out in this file, and `fused` against FAST-VQA-M's published sigmoid-rescale constants (the ``mean_stds``
table of vqa.py in VQAssessment/FAST-VQA-and-FasterVQA), not against the CLI's own code path.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kvq_jax import cli, predict
from kvq_jax.data.views import ViewSpec, sample_views
from kvq_jax.eval.challenge import read_scores_csv
from kvq_jax.heatmap import cell_decimals, cell_text, frame_picks, heatmap_path, render_heatmap
from kvq_jax.models import get_model, get_spec
from kvq_jax.predict import (
    VideoScore,
    challenge_value,
    find_videos,
    format_single,
    normalised_score,
    resolve_views,
    write_challenge_csv,
    write_scores_csv,
)
from kvq_jax.scoring import map_scores
from kvq_jax.weights import save_weights

REPO = Path(__file__).resolve().parents[1]
MODEL, SEED, WEIGHT_SEED = "fastvqa_m", 5, 7
FASTVQA_M_MEAN, FASTVQA_M_STD = 0.023889644, 0.030781006  # "FAST-VQA-M" in vqa.py's mean_stds table
# ImageNet statistics on the 0-255 scale, as the official inference scripts normalise every view
IMAGENET_MEAN = np.float32([123.675, 116.28, 103.53])
IMAGENET_STD = np.float32([58.395, 57.12, 57.375])
SMALL = ["--view", "clip_len=8", "--clips", "1"]
HEIGHT, WIDTH, FRAMES = 144, 176, 24


def small_views() -> dict[str, ViewSpec]:
    return {"fragments": dataclasses.replace(get_spec(MODEL).views["fragments"], clip_len=8, num_clips=1)}


def encode(path: Path, frames: np.ndarray) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "18", "g": "8"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def synthetic_clip(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Three visibly different contents, so the model gives three different scores."""
    t = np.arange(FRAMES)[:, None, None, None]
    y = np.arange(HEIGHT)[None, :, None, None]
    x = np.arange(WIDTH)[None, None, :, None]
    if kind == "gradient":
        clip = (x * 1.4 + y * 0.5 + 3 * t + np.array([0, 40, 90])) % 256
    elif kind == "noise":
        clip = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3))
    else:  # blocks that move
        clip = (((x + 2 * t) // 16 + y // 16) % 2) * np.array([220, 200, 60]) + 20
    return np.broadcast_to(clip, (FRAMES, HEIGHT, WIDTH, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One persistent XLA cache for this session's CLI runs (JAX keeps the first directory it is given)."""
    return str(tmp_path_factory.getbasetemp() / "kvq_jax_xla")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    encode(root / "gradient.mp4", synthetic_clip("gradient", rng))
    encode(root / "sub" / "noise.mov", synthetic_clip("noise", rng))
    encode(root / "blocks.mkv", synthetic_clip("blocks", rng))
    (root / "broken.mp4").write_bytes(rng.bytes(5000))  # not a video: reported, run goes on
    (root / "notes.txt").write_text("not a video extension: ignored\n")
    (root / ".hidden.mp4").write_bytes(b"hidden files are skipped")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory):
    model = get_model(MODEL, seed=WEIGHT_SEED)
    out = save_weights(model, tmp_path_factory.mktemp("weights") / MODEL)
    return model, out


def run_cli(args: list[str], compile_cache: str) -> int:
    return predict.main([*args, *SMALL, "--compile-cache", compile_cache, "--no-progress"])


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def direct_scores(model, paths: list[Path], seed: int | None) -> np.ndarray:
    """The model's forward on views sampled here (a fresh default_rng(seed) per video, as documented) and
    normalised here: `map_scores` averages each video's score map over clips, T', H' and W'."""
    views = small_views()
    clips = [sample_views(p, views, None if seed is None else np.random.default_rng(seed))["fragments"] for p in paths]
    model.eval()
    batch = {"fragments": jnp.asarray((np.stack(clips).astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD)}
    return np.asarray(jax.jit(lambda v: map_scores(model, v)[0])(batch)["fragments"])


def sigmoid_rescale(raw: float) -> float:
    return 1.0 / (1.0 + math.exp(-(raw - FASTVQA_M_MEAN) / FASTVQA_M_STD))


# ------------------------------------------------------------------------------------------ end to end


def test_folder_scores_match_direct_computation(media, weights, compile_cache, tmp_path, capsys):
    model, weights_dir = weights
    out, pred, maps = tmp_path / "scores.csv", tmp_path / "prediction.csv", tmp_path / "maps"
    args = [str(media), "--model", MODEL, "--weights", str(weights_dir), "--seed", str(SEED)]
    args += ["--batch-size", "2", "--out", str(out), "--challenge-csv", str(pred), "--heatmap", str(maps)]
    assert run_cli(args, compile_cache) == 0
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "error" in err

    columns, rows = read_rows(out)
    assert columns == ["filename", "fragments", "fused", "error"]
    names = [r["filename"] for r in rows]
    good = [media / "blocks.mkv", media / "gradient.mp4", media / "sub" / "noise.mov"]
    assert names == sorted([p.as_posix() for p in good] + [(media / "broken.mp4").as_posix()])
    by_name = {r["filename"]: r for r in rows}
    broken = by_name[(media / "broken.mp4").as_posix()]
    assert broken["fragments"] == broken["fused"] == "" and "broken.mp4" in broken["error"]

    # 3 videos in batches of 2 (the second padded) against one direct batch of 3
    expected = direct_scores(model, good, SEED)
    got = np.array([float(by_name[p.as_posix()]["fragments"]) for p in good])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert len(set(np.round(got, 6))) == 3  # three different contents, three different scores
    for p in good:
        row = by_name[p.as_posix()]
        assert row["error"] == ""
        assert float(row["fused"]) == pytest.approx(sigmoid_rescale(float(row["fragments"])), rel=1e-9)

    challenge = read_scores_csv(pred)
    assert challenge == pytest.approx({p.as_posix(): float(by_name[p.as_posix()]["fused"]) for p in good})

    for p in good:
        png = heatmap_path(maps, p.as_posix())
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width >= 600 and 250 <= im.height <= 600
            pixels = np.asarray(im.convert("RGB")).astype(float)
        assert pixels.std() > 20  # a picture, not a blank canvas
    assert len(list(maps.glob("*.png"))) == 3


def test_av1_and_16px_videos_are_scored(weights, compile_cache, tmp_path):
    """Videos decord cannot read (AV1; a 16-px-wide H.264 clip) are decoded by PyAV and scored like any other."""
    from videos import clip as pattern_clip
    from videos import encode_video

    model, weights_dir = weights
    rng = np.random.default_rng(1)
    av1 = encode_video(tmp_path / "short_av1.mp4", synthetic_clip("gradient", rng)[:12], "libsvtav1")
    tiny = encode_video(tmp_path / "tiny_16px.mp4", pattern_clip(12, 16, 16))
    out = tmp_path / "scores.csv"
    args = [str(av1), str(tiny), "--model", MODEL, "--weights", str(weights_dir), "--out", str(out)]
    assert run_cli(args, compile_cache) == 0
    _, rows = read_rows(out)
    assert [r["error"] for r in rows] == ["", ""]
    got = np.array([float(r["fragments"]) for r in rows])
    np.testing.assert_allclose(got, direct_scores(model, [av1, tiny], None), rtol=1e-5, atol=1e-7)


def test_tta_averages_k_samplings(media, weights, compile_cache, tmp_path):
    """--tta 3: three random samplings of the views (stacked as clips, so the score map's mean averages them)."""
    model, weights_dir = weights
    video, out = media / "gradient.mp4", tmp_path / "tta.csv"
    args = [str(video), "--model", MODEL, "--weights", str(weights_dir), "--tta", "3", "--seed", str(SEED)]
    assert run_cli([*args, "--out", str(out)], compile_cache) == 0
    _, (row,) = read_rows(out)
    views = sample_views(video, small_views(), np.random.default_rng(SEED), samples=3)["fragments"]
    assert views.shape[0] == 3
    model.eval()
    batch = {"fragments": jnp.asarray((views[None].astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD)}
    expected = float(jax.jit(lambda v: map_scores(model, v)[0])(batch)["fragments"][0])
    assert float(row["fragments"]) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    single = float(direct_scores(model, [video], SEED)[0])
    assert abs(float(row["fragments"]) - single) > 1e-6  # really more than one sampling


def test_without_decord_every_video_goes_through_pyav(media, weights, compile_cache, tmp_path):
    """Where decord has no wheel (aarch64, macOS arm64) it is not installed: simulated by blocking its import. The
    scores of an H.264 video match the decord run's, and an AV1 video still scores."""
    from videos import encode_video

    _, weights_dir = weights
    av1 = encode_video(tmp_path / "clip_av1.mp4", synthetic_clip("blocks", np.random.default_rng(2))[:12], "libsvtav1")
    h264 = media / "gradient.mp4"
    inputs = [str(h264), str(av1), "--model", MODEL, "--weights", str(weights_dir)]
    with_decord, without = tmp_path / "with.csv", tmp_path / "without.csv"
    assert run_cli([*inputs, "--out", str(with_decord)], compile_cache) == 0
    code = (
        "import sys; sys.modules['decord'] = None\n"
        "from kvq_jax.data import decode; assert decode.decord is None\n"
        "from kvq_jax import predict; sys.exit(predict.main(sys.argv[1:]))"
    )
    args = [*inputs, *SMALL, "--no-progress", "--out", str(without), "--compile-cache", compile_cache]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    _, a = read_rows(with_decord)
    _, b = read_rows(without)
    assert [x["error"] for x in b] == ["", ""]
    assert float(b[0]["fragments"]) == pytest.approx(float(a[0]["fragments"]), abs=1e-4)
    assert float(b[1]["fragments"]) == pytest.approx(float(a[1]["fragments"]), abs=1e-4)


def test_single_file_centred_views_are_deterministic(media, weights, compile_cache, tmp_path, capsys):
    _, weights_dir = weights
    video = media / "gradient.mp4"
    out = tmp_path / "one.csv"
    # no --model: taken from the converted weights' kvq_jax.json
    assert run_cli([str(video), "--weights", str(weights_dir), "--out", str(out)], compile_cache) == 0
    first = capsys.readouterr().out
    assert run_cli([str(video), "--weights", str(weights_dir)], compile_cache) == 0
    assert capsys.readouterr().out == first
    _, rows = read_rows(out)
    assert len(rows) == 1
    lines = first.splitlines()
    assert lines[0] == video.as_posix()
    printed = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert printed["fragments"] == pytest.approx(float(rows[0]["fragments"]), abs=5e-7)
    assert printed["fused"] == pytest.approx(float(rows[0]["fused"]), abs=5e-7)
    assert 0.0 < printed["fused"] < 1.0


def test_no_video_scored_exits_non_zero(media, compile_cache, tmp_path, capsys):
    out = tmp_path / "bad.csv"
    code = run_cli([str(media / "broken.mp4"), "--model", MODEL, "--random-weights", "--out", str(out)], compile_cache)
    assert code == 1
    err = capsys.readouterr().err
    assert "RANDOM" in err and "broken.mp4" in err
    _, rows = read_rows(out)
    assert len(rows) == 1 and rows[0]["error"]


def test_without_weights_the_cli_explains_where_to_get_them(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "kvq_jax.cli", "score", str(video)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "needs trained weights" in proc.stderr
    assert "github.com/QualityAssessment/DOVER/releases/download/v0.1.0/DOVER.pth" in proc.stderr
    assert "python -m kvq_jax.convert --model dover" in proc.stderr
    assert proc.stdout == ""


def test_without_weights_fastvqa_points_to_fastvqa_release(capsys):
    assert cli.main(["score", "x.mp4", "--model", "fastvqa_b"]) == 2
    err = capsys.readouterr().err
    assert "TimothyHTimothy/FAST-VQA/releases/download/v2.0.0/FAST_VQA_B_1_4.pth" in err


def test_bad_arguments_exit_2(media, tmp_path, capsys):
    base = ["--random-weights", "--model", MODEL, "--compile-cache", "none"]
    assert predict.main([str(tmp_path), *base]) == 2  # an empty folder
    assert "no video files" in capsys.readouterr().err
    video = str(media / "gradient.mp4")
    assert predict.main([video, *base, "--view", "clip_len=x"]) == 2
    assert "clip_len='x'" in capsys.readouterr().err
    assert predict.main([video, *base, "--challenge-score", "aesthetic"]) == 2
    assert "--challenge-score 'aesthetic'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ pieces


def test_find_videos_names_recursion_and_duplicates(media):
    items = find_videos([media])
    assert [i.name for i in items] == [
        (media / n).as_posix() for n in ("blocks.mkv", "broken.mp4", "gradient.mp4", "sub/noise.mov")
    ]
    rel = find_videos([media / "sub", media / "gradient.mp4", media], relative_to=media)
    assert [i.name for i in rel] == ["sub/noise.mov", "gradient.mp4", "blocks.mkv", "broken.mp4"]
    with pytest.raises(ValueError, match="not inside --relative-to"):
        find_videos([media / "gradient.mp4"], relative_to=media / "sub")
    missing = find_videos([media / "missing.mp4"])  # kept: it fails, reported, when decoded
    assert [i.path for i in missing] == [media / "missing.mp4"]


def test_find_videos_keeps_a_file_once(media):
    items = find_videos([media / "gradient.mp4", media, media / "sub" / ".." / "gradient.mp4"])
    assert [i.name for i in items].count((media / "gradient.mp4").as_posix()) == 1
    assert len(items) == 4


def test_resolve_views_clips_and_overrides():
    dover = get_spec("dover").views
    views = resolve_views(dover, clips=2, overrides=["clip_len=8", "aesthetic.t_frag=8", "technical.aligned=8"])
    assert views["technical"].num_clips == 2 and views["aesthetic"].num_clips == 1  # --clips: fragments only
    assert views["technical"].clip_len == views["aesthetic"].clip_len == 8
    assert views["aesthetic"].t_frag == 8 and views["technical"].aligned == 8
    assert dover["technical"].clip_len == 32  # the model's views are untouched
    assert get_spec("dover").views == dover
    with pytest.raises(ValueError, match="unknown view field 'clip'"):
        resolve_views(dover, overrides=["clip=8"])
    with pytest.raises(ValueError, match="no branch 'fragments'"):
        resolve_views(dover, overrides=["fragments.clip_len=8"])
    with pytest.raises(ValueError, match="branch 'aesthetic'"):  # t_frag 32 > clip_len 8
        resolve_views(dover, overrides=["clip_len=8", "technical.aligned=8"])
    original = get_spec("simplevqa_original").views  # bool fields parse from true/false (and 1/0)
    assert original["spatial"].partial_seconds
    assert not resolve_views(original, overrides=["spatial.partial_seconds=false"])["spatial"].partial_seconds
    assert resolve_views(original, overrides=["spatial.partial_seconds=1"])["spatial"].partial_seconds
    with pytest.raises(ValueError, match="expected true or false"):
        resolve_views(original, overrides=["spatial.partial_seconds=yes"])


def two_branch_results() -> list[VideoScore]:
    return [
        VideoScore("b.mp4", Path("b.mp4"), {"technical": 0.25, "aesthetic": -0.05}, 0.7),
        VideoScore("a.mp4", Path("a.mp4"), error="a.mp4: cannot open as a video"),
        VideoScore("c.mp4", Path("c.mp4"), {"technical": 0.1, "aesthetic": 0.3}, 0.9),
    ]


def test_csv_scheme_for_dover_like_models(tmp_path):
    path = tmp_path / "scores.csv"
    with open(path, "w", newline="") as f:
        write_scores_csv(two_branch_results(), ("technical", "aesthetic"), f)
    columns, rows = read_rows(path)
    assert columns == ["filename", "technical", "aesthetic", "fused", "error"]
    assert [r["filename"] for r in rows] == ["b.mp4", "a.mp4", "c.mp4"]  # input order, failures included
    assert rows[0] == {"filename": "b.mp4", "technical": "0.25", "aesthetic": "-0.05", "fused": "0.7", "error": ""}
    assert rows[1]["technical"] == rows[1]["fused"] == "" and "cannot open" in rows[1]["error"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("fused", {"b.mp4": 0.7, "c.mp4": 0.9}),
        ("mean", {"b.mp4": 0.1, "c.mp4": 0.2}),
        ("aesthetic", {"b.mp4": -0.05, "c.mp4": 0.3}),
    ],
)
def test_challenge_csv_is_readable_by_the_scorer(tmp_path, choice, expected):
    path = tmp_path / "prediction.csv"
    with open(path, "w", newline="") as f:
        assert write_challenge_csv(two_branch_results(), choice, f) == 2  # the failed video is left out
    assert read_scores_csv(path) == pytest.approx(expected)
    assert challenge_value(two_branch_results()[0], "technical") == 0.25


def test_normalised_score_is_the_published_rescale():
    """``fused`` from the branch means: FAST-VQA-M's ``sigmoid((s - mean) / std)``, DOVER's weighted fusion
    (``fuse_results`` of evaluate_a_set_of_videos.py in VQAssessment/DOVER), None for a model without one."""
    for raw in (-0.2, -0.01, 0.0, FASTVQA_M_MEAN, 0.05, 0.1):
        assert normalised_score(get_spec(MODEL), {"fragments": raw}) == pytest.approx(sigmoid_rescale(raw), rel=1e-9)
    assert normalised_score(get_spec(MODEL), {"fragments": -100.0}) == 0.0  # the sigmoid's limits, no overflow
    assert normalised_score(get_spec(MODEL), {"fragments": 100.0}) == 1.0
    for t, a in ((0.1107, -0.08285), (0.25, -0.05), (-0.1, 0.3)):
        x = 0.6104 * (t - 0.1107) / 0.07355 + 0.3896 * (a + 0.08285) / 0.03774
        dover = normalised_score(get_spec("dover"), {"technical": t, "aesthetic": a})
        assert dover == pytest.approx(1.0 / (1.0 + math.exp(-x)), rel=1e-9)
    no_fusion = dataclasses.replace(get_spec(MODEL), fusion=None)
    assert normalised_score(no_fusion, {"fragments": 0.1}) is None
    shown = format_single(VideoScore("v.mp4", Path("v.mp4"), {"fragments": 0.1}, None), no_fusion)
    assert shown.splitlines() == ["v.mp4", "  fragments  +0.100000  (raw branch score)"]


def test_frame_picks_and_cell_decimals():
    assert frame_picks(3, 32, 4) == [(0, 12), (1, 4), (1, 28), (2, 20)]  # centres of 4 parts of 96 frames
    assert frame_picks(1, 2, 4) == [(0, 0), (0, 1)]
    assert cell_decimals(np.array([0.1, 0.5])) == 2
    assert cell_decimals(np.array([0.01, 0.013])) == 4
    assert cell_decimals(np.zeros(3)) == 2
    assert cell_text(-0.0004, 3) == "0.000" and cell_text(-0.0126, 3) == "-0.013"


def red_and_green_centroids(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) centroids of reddish and greenish pixels in the first panel (left 40 % of the picture)."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    panel = rgb[:, : int(rgb.shape[1] * 0.4)]
    red = panel[..., 0] > panel[..., 1] + 30
    green = panel[..., 1] > panel[..., 0] + 30
    assert red.sum() > 500 and green.sum() > 3 * 500
    return np.argwhere(red).mean(axis=0), np.argwhere(green).mean(axis=0)


def test_heatmap_colours_follow_the_map(tmp_path):
    """One bad cell in a good 2x2 map: it is drawn red, where it is; the others green."""
    view = np.full((1, 4, 64, 64, 3), 128, np.uint8)
    score_map = np.ones((1, 2, 2, 2), np.float32)
    score_map[:, :, 0, 1] = -1.0  # top-right cell is the worst
    out = render_heatmap(view, score_map, tmp_path / "tr.png", title="t", num_frames=1, dpi=100)
    red, green = red_and_green_centroids(out)
    assert red[0] < green[0] and red[1] > green[1]  # red above and right of the green cells
    score_map = np.ones((1, 2, 2, 2), np.float32)
    score_map[:, :, 1, 0] = -1.0  # bottom-left cell
    red, green = red_and_green_centroids(render_heatmap(view, score_map, tmp_path / "bl.png", title="t", num_frames=1))
    assert red[0] > green[0] and red[1] < green[1]
    with pytest.raises(ValueError, match="does not match"):
        render_heatmap(view, score_map[:0], tmp_path / "x.png", title="t")
    assert heatmap_path(tmp_path, "test/0001.mp4") == tmp_path / "test__0001.mp4.png"


def test_cli_dispatch(capsys):
    assert cli.main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert all(c in shown for c in ("score", "export", "convert", "parity", "bench", "eval-score"))
    assert cli.main(["nope"]) == 2
    assert cli.main(["eval-score", "--help"]) == 0
    assert "--pred" in capsys.readouterr().out
    assert cli.main(["score", "--help"]) == 0
    assert "kvq-jax score" in capsys.readouterr().out
    assert cli.main([]) == 2
