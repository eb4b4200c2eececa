"""Any labelled folder, and the standard datasets' layouts, built into the same records as KVQ: good and bad
cases from tiny folders made here."""

from __future__ import annotations

import numpy as np
import pytest
from videos import clip, encode_video

from kvq_jax.data import build, labels
from kvq_jax.data.kvq_layout import LayoutError
from kvq_jax.data.pipeline import load_split
from kvq_jax.data.tfds_kvq import load_metadata


def _videos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    frames = clip(2, 32, 48)
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        encode_video(folder / n, frames)


def test_csv_with_titles_and_a_source_aware_split(tmp_path):
    names = [f"s{s}_{k}.mp4" for s in range(10) for k in range(3)]  # 10 sources, 3 versions each
    _videos(tmp_path / "clips", names)
    rows = [f"{n},{1 + i / 10:.2f},{i // 3},{i % 2}" for i, n in enumerate(names)]
    (tmp_path / "labels.csv").write_text("File,MOS,group,distortion\n" + "\n".join(rows) + "\n")
    spec = labels.spec_from_options(
        {"labels": "labels.csv", "name": "file", "score": "mos", "source_id": "group", "extra": ["distortion"],
         "videos": "clips", "fractions": [0.6, 0.2, 0.2], "seed": 3}
    )  # fmt: skip
    layout = labels.read_folder(tmp_path, spec)
    assert {s: len(lay.videos) for s, lay in layout.items()} == {"train": 18, "val": 6, "test": 6}
    split_of = {v.source_id: s for s, lay in layout.items() for v in lay.videos}
    for s, lay in layout.items():  # the 3 versions of a source are in one split
        assert all(split_of[v.source_id] == s for v in lay.videos)
    first = next(v for lay in layout.values() for v in lay.videos if v.name == "s0_1.mp4")
    assert first.mos == pytest.approx(1.1) and first.extra == (1.0,) and first.path == tmp_path / "clips/s0_1.mp4"
    # Another seed, another split; the same seed, the same split.
    again = labels.read_folder(tmp_path, spec)
    assert {s: [v.name for v in lay.videos] for s, lay in again.items()} == {
        s: [v.name for v in lay.videos] for s, lay in layout.items()
    }


def test_standard_dataset_layouts(tmp_path):
    # DOVER's lists: "name, duration, fps, mos", headerless, comma-and-space separated; LSVQ has three.
    lsvq = tmp_path / "lsvq"
    _videos(lsvq, ["yfcc-batch1/1.mp4", "yfcc-batch1/2.mp4", "ia-batch1/3.mp4", "ia-batch1/4.mp4"])
    (lsvq / "labels.txt").write_text("yfcc-batch1/1.mp4, -1, -1, 67.75\nyfcc-batch1/2.mp4, -1, -1, 50.9\n")
    (lsvq / "labels_test.txt").write_text("ia-batch1/3.mp4, -1, -1, 40.0\n")
    (lsvq / "labels_1080p.txt").write_text("ia-batch1/4.mp4, 10.0, 30.0, 71.5\n")
    layout = labels.read_folder(lsvq, labels.PRESETS["lsvq"])
    assert {s: [v.mos for v in lay.videos] for s, lay in layout.items()} == {
        "train": [67.75, 50.9], "test": [40.0], "test_1080p": [71.5]
    }  # fmt: skip
    # KoNViD-1k as released: the attributes CSV names flickr ids; videos are <id>.mp4 in KoNViD_1k_videos/.
    konvid = tmp_path / "konvid"
    ids = [4542323058 + i for i in range(10)]
    _videos(konvid / "KoNViD_1k_videos", [f"{i}.mp4" for i in ids])
    text = "flickr_id,MOS,SD\n" + "".join(f"{i},{3 + k / 10},0.5\n" for k, i in enumerate(ids))
    (konvid / "KoNViD_1k_attributes.csv").write_text(text)
    layout = labels.read_folder(konvid, labels.PRESETS["konvid"])
    assert sorted(layout) == ["test", "train"] and sum(len(x.videos) for x in layout.values()) == 10
    assert {v.source_id for lay in layout.values() for v in lay.videos} == {-1}  # no KVQ naming rule here
    # Tab-separated with a split column.
    tsv = tmp_path / "tsv"
    _videos(tsv, ["a.mp4", "b.mp4"])
    (tsv / "l.tsv").write_text("name\tsplit\tscore\na.mp4\ttrain\t2\nb.mp4\ttest\t4\n")
    spec = labels.spec_from_options({"labels": "l.tsv", "name": "name", "score": "score", "split": "split"})
    assert {s: lay.videos[0].name for s, lay in labels.read_folder(tsv, spec).items()} == {
        "train": "a.mp4", "test": "b.mp4"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("missing.mp4,3.0", r"labels.csv:3: video 'missing.mp4' not found"),
        ("b.mp4,nan", r"labels.csv:3: score for 'b.mp4' is 'nan'"),
        ("b.mp4,good", r"labels.csv:3: score 'good' for 'b.mp4' is not a number"),
        ("a.mp4,2.0", r"labels.csv:3: duplicate video 'a.mp4' \(first on line 2\)"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, row, message):
    _videos(tmp_path, ["a.mp4", "b.mp4"])
    (tmp_path / "labels.csv").write_text(f"filename,score\na.mp4,1.0\n{row}\n")
    spec = labels.spec_from_options({"labels": {"train": "labels.csv"}})
    with pytest.raises(LayoutError, match=message):
        labels.read_folder(tmp_path, spec)


def test_spec_errors_are_clear():
    with pytest.raises(ValueError, match="split column or fractions"):
        labels.spec_from_options({"labels": "x.csv"})
    with pytest.raises(ValueError, match="titles or all positions"):
        labels.spec_from_options({"labels": {"train": "x"}, "name": 0, "score": "mos"})
    with pytest.raises(ValueError, match="summing to 1"):
        labels.spec_from_options({"labels": "x.csv", "fractions": [0.8, 0.3]})


def test_a_folder_of_your_own_builds_records_and_reports_undecodable_videos(tmp_path):
    root = tmp_path / "mine"
    names = [f"v{i}.mp4" for i in range(8)]
    _videos(root, names)
    (root / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    rows = [f"{n}, {i + 1}, {i % 3}" for i, n in enumerate([*names, "broken.mp4"])]
    (root / "list.txt").write_text("\n".join(rows) + "\n")
    opts = {"labels": "list.txt", "name": 0, "score": 1, "extra": [2], "fractions": [0.75, 0.25], "seed": 1}
    report = build.build("vqa_folder/mine", tmp_path / "tfds", root, folder=opts)
    assert sum(report["examples"].values()) == 8
    assert [s["name"] for s in report["skipped"]] == ["broken.mp4"] and "broken.mp4" in build.format_report(report)
    records = {}
    for split in report["examples"]:
        source = load_split(tmp_path / "tfds", "vqa_folder/mine", split)
        for i in range(len(source)):
            rec = source[i]
            records[rec["name"].decode()] = (float(rec["mos"]), rec["extra"].tolist(), split)
    assert records["v5.mp4"][:2] == (6.0, [2.0])
    assert load_metadata(tmp_path / "tfds", "vqa_folder/mine")["skipped"][0]["name"] == "broken.mp4"
    # The build CLI takes the same options.
    code = build.main(
        ["--dataset", "vqa_folder/cli", "--data_dir", str(tmp_path / "tfds"), "--manual_dir", str(root),
         "--labels", "list.txt", "--name-column", "0", "--score-column", "1", "--split", "0.75"]
    )  # fmt: skip
    assert code == 0
    same = labels.spec_from_options({"labels": "list.txt", "name": 0, "score": 1, "fractions": [0.75, 0.25]})
    for split, lay in labels.read_folder(root, same).items():
        source = load_split(tmp_path / "tfds", "vqa_folder/cli", split)
        assert [source[i]["name"].decode() for i in range(len(source))] == [
            v.name for v in lay.videos if v.name != "broken.mp4"
        ]
