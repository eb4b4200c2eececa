"""TF-free TFDS builders and the build CLI: round trip, skipped videos, bad label rows, real KVQ naming."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import tensorflow_datasets as tfds

from kvq_jax.data import build, kvq_layout, synthetic
from kvq_jax.data.tfds_kvq import KvqSynthetic, load_metadata, load_pairs, load_skipped

TINY = {"sources": 6, "size": (96, 160), "frames": 16, "seed": 0, "workers": 1}


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.getbasetemp() / "kvq_tiny", progress=False, **TINY)


@pytest.fixture(scope="session")
def tiny_tfds(tiny_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.getbasetemp() / "tfds_tiny"
    build.build("kvq_synthetic", data_dir, manual_dir=tiny_set)
    return data_dir


def _csv(root: Path, split: str) -> dict[str, float]:
    with (root / f"{split}_data.csv").open() as f:
        return {r["filename"]: float(r["score"]) for r in csv.DictReader(f)}


def _xlsx_pairs(path: Path) -> dict[str, list[tuple[str, str, int]]]:
    wb = openpyxl.load_workbook(path, read_only=True)
    out = {s: [tuple(r) for r in wb[s].iter_rows(min_row=2, values_only=True)] for s in wb.sheetnames}
    wb.close()
    return out


def test_round_trip(tiny_set: Path, tiny_tfds: Path) -> None:
    with (tiny_set / "metadata.csv").open() as f:
        meta = list(csv.DictReader(f))
    sources = {r["filename"]: int(r["source_id"]) for r in meta}
    process = {r["filename"]: r["process"] for r in meta}
    for split in ("train", "val", "test"):
        ds = tfds.data_source("kvq_synthetic", split=split, data_dir=str(tiny_tfds))
        labels = _csv(tiny_set, split)
        assert len(ds) == len(labels) == 14
        records = [ds[i] for i in range(len(ds))]
        names = [r["name"].decode() for r in records]
        assert names == list(labels), "every video once, in the label file's order"
        for r, name in zip(records, names, strict=True):
            assert isinstance(r["name"], bytes)
            assert np.float32(r["mos"]) == np.float32(labels[name])
            assert r["source_id"] == sources[name]
            assert r["num_frames"] == 16
            assert r["dis_label"] == synthetic.PROCESSES.index(process[name])  # the synthetic distortion class
            assert hashlib.sha256(r["video"]).digest() == hashlib.sha256((tiny_set / name).read_bytes()).digest()
        assert load_pairs(tiny_tfds, "kvq_synthetic", split) == _xlsx_pairs(tiny_set / f"rank-pair-{split}.xlsx")
    assert load_skipped(tiny_tfds, "kvq_synthetic") == []
    assert json.loads((tiny_tfds / "kvq_synthetic" / "1.1.0" / "skipped.json").read_text()) == []
    assert load_metadata(tiny_tfds, "kvq_synthetic")["dis_labelled"] == {"train": True, "val": True, "test": True}


def test_corrupt_videos_are_skipped_and_reported(tiny_set: Path, tmp_path: Path, capsys) -> None:
    manual = tmp_path / "manual"
    root = manual / "KVQ"  # the kvq builder accepts an unpacked archive's single sub-folder
    shutil.copytree(tiny_set, root)
    (root / "val" / "0016.mp4").write_bytes(b"not a video at all" * 10)
    truncated = (root / "test" / "0030.mp4").read_bytes()
    (root / "test" / "0030.mp4").write_bytes(truncated[: len(truncated) // 3])
    data_dir = tmp_path / "tfds"
    rc = build.main(["--dataset", "kvq", "--manual_dir", str(manual), "--data_dir", str(data_dir), "--num_shards", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "val/0016.mp4" in out and "test/0030.mp4" in out and "skipped 2 video(s)" in out
    skipped = {s["name"]: s for s in load_skipped(data_dir, "kvq")}
    assert set(skipped) == {"val/0016.mp4", "test/0030.mp4"}
    assert all(s["reason"] and s["path"].endswith(s["name"]) for s in skipped.values())
    assert json.loads((data_dir / "kvq" / "1.1.0" / "skipped.json").read_text()) == load_skipped(data_dir, "kvq")
    assert load_metadata(data_dir, "kvq")["dis_labelled"] == {"train": False, "val": False, "test": False}
    assert {int(r["dis_label"]) for r in tfds.data_source("kvq", split="train", data_dir=str(data_dir))} == {-1}
    counts = {s: len(tfds.data_source("kvq", split=s, data_dir=str(data_dir))) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 13, "test": 13}
    for split, bad in (("val", "val/0016.mp4"), ("test", "test/0030.mp4")):
        kept = load_pairs(data_dir, "kvq", split)
        listed = _xlsx_pairs(root / f"rank-pair-{split}.xlsx")
        for sheet in ("source", "nonsource"):
            assert kept[sheet] == [p for p in listed[sheet] if bad not in p[:2]]


def _layout_dir(tmp_path: Path, rows: list[str]) -> Path:
    """A KVQ folder with three dummy videos and a train label file made of ``rows`` (after the header)."""
    (tmp_path / "train").mkdir()
    for n in ("0001", "0002", "0003"):
        (tmp_path / "train" / f"{n}.mp4").write_bytes(b"x")
    (tmp_path / "train_data.csv").write_text("filename,score\n" + "".join(r + "\n" for r in rows))
    return tmp_path


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("train/0009.mp4,3.5", "video 'train/0009.mp4' not found"),
        ("train/0003.mp4,nan", "score is 'nan', not a finite number"),
        ("train/0001.mp4,2.0", "duplicate filename 'train/0001.mp4' (first on line 2)"),
        ("train/0003.mp4,good", "score 'good' is not a number"),
        ("train/0003.mp4,", "empty score"),
    ],
)
def test_bad_label_rows_name_file_and_line(tmp_path: Path, bad_row: str, message: str, capsys) -> None:
    root = _layout_dir(tmp_path, ["train/0001.mp4,4.5", "train/0002.mp4,3.0", bad_row])
    with pytest.raises(kvq_layout.LayoutError) as err:
        kvq_layout.read_layout(root)
    assert f"{root / 'train_data.csv'}:4: " in str(err.value) and message in str(err.value)
    assert build.main(["--dataset", "kvq", "--manual_dir", str(root), "--data_dir", str(tmp_path / "tfds")]) == 2
    assert message in capsys.readouterr().err


def test_real_kvq_naming_and_formats(tmp_path: Path) -> None:
    """KVQ numbering (7 consecutive per source), the repository's headerless 4-column list (its dis_label kept),
    truth.csv, pairs written with bare basenames, and a source_id column that overrides the name."""
    for split, numbers in (("train", range(239, 246)), ("val", (8, 15))):
        (tmp_path / split).mkdir()
        for n in numbers:
            (tmp_path / split / f"{n:04d}.mp4").write_bytes(b"x")
    rows = (f"train/{n:04d}.mp4,0,{n % 3}.0,{n % 5}.5\n" for n in range(239, 246))
    (tmp_path / "train_data.csv").write_text("".join(rows))
    (tmp_path / "truth.csv").write_text("filename,score,source_id\nval/0008.mp4,2.5,77\nval/0015.mp4,4.0,78\n")
    wb = openpyxl.Workbook()
    wb.active.title = "source"
    wb.create_sheet("nonsource").append(["video1", "video2", "rank"])
    wb["nonsource"].append(["0008.mp4", "0015.mp4", 2])
    wb.save(tmp_path / "rank-pair-val.xlsx")
    layout = kvq_layout.read_layout(tmp_path)
    assert set(layout) == {"train", "val"}
    train = layout["train"]
    assert {v.source_id for v in train.videos} == {34}  # (239 - 1) // 7 == (245 - 1) // 7
    assert [v.mos for v in train.videos] == [float(f"{n % 5}.5") for n in range(239, 246)]
    assert [v.dis_label for v in train.videos] == [n % 3 for n in range(239, 246)]
    val = layout["val"]
    assert val.csv_path.name == "truth.csv" and [v.source_id for v in val.videos] == [77, 78]
    assert [v.dis_label for v in val.videos] == [-1, -1]  # no dis_label column: unknown
    assert val.pairs == {"source": [], "nonsource": [("val/0008.mp4", "val/0015.mp4", 2)]}
    assert kvq_layout.source_id_from_name("0001_3.mp4") == 1 and kvq_layout.source_id_from_name("a.mp4") is None


def test_unlabelled_split_and_pair_errors(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "0001.mp4").write_bytes(b"x")
    (tmp_path / "test_data.csv").write_text("filename\ntest/0001.mp4\n")
    lay = kvq_layout.read_layout(tmp_path)["test"]
    assert not lay.labelled and np.isnan(lay.videos[0].mos)
    wb = openpyxl.Workbook()
    wb.active.title = "source"
    wb["source"].append(["video1", "video2", "rank"])
    wb["source"].append(["test/0001.mp4", "test/0001.mp4", 3])
    wb.create_sheet("nonsource")
    wb.save(tmp_path / "rank-pair-test.xlsx")
    with pytest.raises(kvq_layout.LayoutError, match=r"rank-pair-test.xlsx\[source\] row 2: rank label 3 is not 1"):
        kvq_layout.read_layout(tmp_path)


def test_synthetic_builder_generates_when_no_manual_dir(tmp_path: Path, monkeypatch) -> None:
    """Without a manual dir, kvq_synthetic makes its own set (a tiny one here) under the download dir."""
    monkeypatch.setattr(synthetic, "generate", partial(synthetic.generate, **TINY, progress=False))
    builder = KvqSynthetic(data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "none")))
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 14, "val": 14, "test": 14}
    assert (tmp_path / "downloads" / "kvq_synthetic" / synthetic.MARKER).is_file()


def test_dis_label_column_by_title_and_bad_values(tmp_path: Path) -> None:
    root = _layout_dir(tmp_path, [])
    (root / "train_data.csv").write_text("filename,score,dis_label\ntrain/0001.mp4,4.5,3\ntrain/0002.mp4,3.0,0.0\n")
    assert [v.dis_label for v in kvq_layout.read_layout(root)["train"].videos] == [3, 0]
    for bad, message in (("x", "dis_label 'x' is not a number"), ("-2", "dis_label -2 is negative")):
        (root / "train_data.csv").write_text(f"filename,score,dis_label\ntrain/0001.mp4,4.5,{bad}\n")
        with pytest.raises(kvq_layout.LayoutError, match=message):
            kvq_layout.read_layout(root)
