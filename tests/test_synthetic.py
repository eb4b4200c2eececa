"""The synthetic KVQ-like set: layout, determinism, label design, and that the MOS carries real signal."""

from __future__ import annotations

import csv
import filecmp
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pytest
import scipy.stats

from kvq_jax.data import decode, synthetic

TINY = {"sources": 6, "size": (96, 160), "frames": 16, "seed": 0, "workers": 1}


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 sources x 7 videos at 96x160, 16 frames (shared by the data tests; generate() is idempotent)."""
    return synthetic.generate(tmp_path_factory.getbasetemp() / "kvq_tiny", progress=False, **TINY)


def _metadata(root: Path) -> list[dict[str, str]]:
    with (root / "metadata.csv").open() as f:
        return list(csv.DictReader(f))


def _split_csv(root: Path, split: str) -> list[list[str]]:
    with (root / f"{split}_data.csv").open() as f:
        return list(csv.reader(f))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_layout_matches_kvq(tiny_set: Path) -> None:
    meta = _metadata(tiny_set)
    assert len(meta) == 6 * 7
    for split in ("train", "val", "test"):
        rows = _split_csv(tiny_set, split)
        assert rows[0] == ["filename", "score"]
        names = [r[0] for r in rows[1:]]
        assert names and all(n.startswith(f"{split}/") and (tiny_set / n).is_file() for n in names)
        assert {m["filename"] for m in meta if m["split"] == split} == set(names)
    by_source: dict[int, list[dict[str, str]]] = {}
    for m in meta:
        by_source.setdefault(int(m["source_id"]), []).append(m)
    for sid, group in by_source.items():
        numbers = sorted(int(Path(m["filename"]).stem) for m in group)
        # KVQ's convention: the 7 versions of a source are consecutive 1-based numbers
        assert numbers == list(range(7 * sid + 1, 7 * sid + 8))
        assert sorted(int(m["variant"]) for m in group) == list(range(7))
    # the decoded video has the requested geometry (portrait: H=160, W=96) and length
    frames = decode.decode_frames(tiny_set / meta[0]["filename"], np.arange(16))
    assert frames.shape == (16, 160, 96, 3)


def test_no_source_shared_across_splits(tiny_set: Path) -> None:
    meta = _metadata(tiny_set)
    splits_of: dict[str, set[str]] = {}
    for m in meta:
        splits_of.setdefault(m["source_id"], set()).add(m["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    per_split = Counter(next(iter(s)) for s in splits_of.values())
    assert per_split == {"train": 2, "val": 2, "test": 2}


def test_labels_on_kvq_scale_and_qp_ladder(tiny_set: Path) -> None:
    groups = [(16, 21), (22, 27), (28, 32), (33, 37), (38, 42), (43, 47)]
    meta = _metadata(tiny_set)
    for m in meta:
        score, mos = float(m["score"]), float(m["mos_cont"])
        assert 1.0 <= score <= 5.0 and score * 2 == int(score * 2)
        assert abs(score - min(5.0, max(1.0, mos))) <= 0.25 + 1e-9
    for sid in {m["source_id"] for m in meta}:
        group = sorted((m for m in meta if m["source_id"] == sid), key=lambda m: int(m["variant"]))
        assert 16 <= int(group[0]["qp"]) <= 21 and group[0]["process"] == "none"
        hits = sorted(next(i for i, (lo, hi) in enumerate(groups) if lo <= int(m["qp"]) <= hi) for m in group[1:])
        assert hits == list(range(6)), "one processed version per QP group"
    for split in ("train", "val", "test"):
        csv_scores = {r[0]: float(r[1]) for r in _split_csv(tiny_set, split)[1:]}
        assert all(csv_scores[m["filename"]] == float(m["score"]) for m in meta if m["split"] == split)


def test_mos_is_monotone_in_every_knob() -> None:
    base = synthetic.Knobs("none", qp=30, blur=0.5, noise=3.0, scale=1.0, sharpen=0.0)
    worse = [
        synthetic.Knobs("none", 40, 0.5, 3.0, 1.0, 0.0),
        synthetic.Knobs("blur", 30, 1.5, 3.0, 1.0, 0.0),
        synthetic.Knobs("noise", 30, 0.5, 12.0, 1.0, 0.0),
        synthetic.Knobs("scale", 30, 0.5, 3.0, 0.5, 0.0),
        synthetic.Knobs("enhance", 30, 0.5, 3.0, 1.0, 2.0),
    ]
    for k in worse:
        assert synthetic.synthetic_mos(k, 0.0) < synthetic.synthetic_mos(base, 0.0), k
    assert synthetic.synthetic_mos(base, 0.3) > synthetic.synthetic_mos(base, 0.0)


def test_label_distribution_is_not_bimodal() -> None:
    """Over many simulated sources (knobs only, no video) the 0.5-step scores spread over the scale."""
    rng = np.random.default_rng(7)
    scores = []
    for _ in range(3000):
        bias = rng.normal(0.0, synthetic.SOURCE_BIAS_STD)
        scores += [synthetic.round_score(synthetic.synthetic_mos(k, bias)) for k in synthetic.sample_knobs(rng)]
    counts = Counter(scores)
    share = {s: c / len(scores) for s, c in counts.items()}
    assert len(counts) >= 8
    assert max(share.values()) < 0.2, share
    assert sum(v for s, v in share.items() if 2.0 <= s <= 4.0) > 0.45, share


def test_rank_pairs_follow_the_continuous_mos(tiny_set: Path) -> None:
    meta = {m["filename"]: m for m in _metadata(tiny_set)}
    for split in ("train", "val", "test"):
        wb = openpyxl.load_workbook(tiny_set / f"rank-pair-{split}.xlsx", read_only=True)
        assert wb.sheetnames == ["source", "nonsource"]
        for sheet in wb.sheetnames:
            rows = list(wb[sheet].iter_rows(values_only=True))
            assert rows[0] == ("video1", "video2", "rank")
            assert len(rows) > 1, f"{split}/{sheet} has no pairs"
            for v1, v2, rank in rows[1:]:
                a, b = meta[v1], meta[v2]
                assert a["split"] == b["split"] == split
                assert (a["source_id"] == b["source_id"]) == (sheet == "source")
                d = float(a["mos_cont"]) - float(b["mos_cont"])
                assert abs(d) > 0.05 and rank == (1 if d > 0 else 2)
        wb.close()


def _blockiness(frames: np.ndarray) -> float:
    """Mean |luma jump| across 8-px block columns over the mean jump elsewhere (1 = no blocking)."""
    y = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    jumps = np.abs(np.diff(y, axis=2))
    at_edge = (np.arange(jumps.shape[2]) % 8) == 7
    return float(jumps[:, :, at_edge].mean() / jumps[:, :, ~at_edge].mean())


def test_mos_carries_signal(tiny_set: Path) -> None:
    """A no-reference blockiness statistic of the decoded frames tracks the synthetic MOS."""
    meta = _metadata(tiny_set)
    block = np.array([_blockiness(decode.decode_frames(tiny_set / m["filename"], np.arange(0, 16, 4))) for m in meta])
    mos = np.array([float(m["mos_cont"]) for m in meta])
    score = np.array([float(m["score"]) for m in meta])
    sid = np.array([int(m["source_id"]) for m in meta])
    overall = scipy.stats.spearmanr(block, score)[0]
    within = [scipy.stats.spearmanr(block[sid == s], mos[sid == s])[0] for s in np.unique(sid)]
    print(f"SROCC(blockiness, score) = {overall:.3f}; within-source mean {np.mean(within):.3f}, {np.round(within, 2)}")
    assert overall < -0.3
    assert np.mean(within) < -0.4
    # a Laplacian-variance sharpness, computed independently with OpenCV, points the other way
    lap = [
        np.mean([cv2.Laplacian(f, cv2.CV_64F).var() for f in decode.decode_frames(tiny_set / m["filename"], [0, 8])])
        for m in meta
    ]
    assert scipy.stats.spearmanr(lap, score)[0] > 0.2


def test_generation_is_deterministic(tmp_path: Path) -> None:
    small = {"sources": 3, "frames": 8, "workers": 1, "progress": False}
    a = synthetic.generate(tmp_path / "a", size=(64, 112), seed=3, **small)
    synthetic.main(["--out", str(tmp_path / "b"), "--sources", "3", "--size", "64x112", "--frames", "8", "--seed", "3"])
    c = synthetic.generate(tmp_path / "c", size=(64, 112), seed=4, **small)
    b = tmp_path / "b"
    files = _files(a)
    assert files == _files(b) and len(files) == 3 * 7 + 3 + 3 + 2
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == []  # byte-identical, the CLI with two worker processes included
    _, mismatch_c, _ = filecmp.cmpfiles(a, c, files, shallow=False)
    assert "train/0001.mp4" in mismatch_c and "metadata.csv" in mismatch_c


def test_generate_is_idempotent_and_guards_other_params(tmp_path: Path) -> None:
    small = {"sources": 3, "size": (64, 112), "frames": 8, "workers": 1, "progress": False}
    out = synthetic.generate(tmp_path / "s", **small)
    stamp = (out / "train" / "0001.mp4").stat().st_mtime_ns
    assert synthetic.generate(tmp_path / "s", **small) == out
    assert (out / "train" / "0001.mp4").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="seed"):
        synthetic.generate(tmp_path / "s", **{**small, "seed": 1})
    with pytest.raises(ValueError, match="even"):
        synthetic.generate(tmp_path / "odd", sources=3, size=(65, 112), frames=8)
    assert math.isclose(synthetic.round_score(0.2), 1.0) and synthetic.round_score(4.76) == 5.0
