"""grain pipeline: determinism, per-process shards, checkpointable state, eval coverage, decode failures."""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from jax.sharding import PartitionSpec as P

from kvq_jax.data import build, pipeline, synthetic, views
from kvq_jax.models import get_spec

TINY = {"sources": 6, "size": (96, 160), "frames": 16, "seed": 0, "workers": 1}
# Small views keep the tests fast; the pipeline does not care about the sizes.
SPEC = {
    "technical": views.ViewSpec("fragments", clip_len=8, frame_interval=2, fragments_h=2, fragments_w=2, aligned=8),
    "aesthetic": views.ViewSpec("resize", clip_len=8, frame_interval=2, t_frag=8, size_h=48, size_w=48),
}


@pytest.fixture(scope="session")
def tiny_tfds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    tiny = synthetic.generate(tmp_path_factory.getbasetemp() / "kvq_tiny", progress=False, **TINY)
    data_dir = tmp_path_factory.getbasetemp() / "tfds_tiny"
    build.build("kvq_synthetic", data_dir, manual_dir=tiny)
    return data_dir


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def _diff(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> list[tuple[int, str]]:
    """(batch, field) pairs that differ; empty when the two batch lists are identical."""
    assert len(a) == len(b) and all(x.keys() == y.keys() for x, y in zip(a, b, strict=True))
    return [(i, k) for i, (x, y) in enumerate(zip(a, b, strict=True)) for k in x if not np.array_equal(x[k], y[k])]


def test_batches_have_the_documented_layout(tiny_tfds: Path) -> None:
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "train")
    (batch,) = _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=0), 1)
    assert batch["technical"].shape == (4, 1, 8, 64, 64, 3) and batch["technical"].dtype == np.uint8
    assert batch["aesthetic"].shape == (4, 1, 8, 48, 48, 3) and batch["aesthetic"].dtype == np.uint8
    assert batch["mos"].dtype == np.float32 and batch["source_id"].dtype == np.int32 and batch["valid"].all()
    assert batch["name"].dtype == object and all(isinstance(n, bytes) for n in batch["name"])
    records = {src[i]["name"]: src[i] for i in range(len(src))}
    for i, name in enumerate(batch["name"]):
        assert batch["mos"][i] == np.float32(records[name]["mos"])
        assert batch["source_id"][i] == records[name]["source_id"]


def test_train_is_deterministic_for_a_seed(tiny_tfds: Path) -> None:
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "train")
    a = _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=5), 5)  # 20 > 14: crosses an epoch
    b = _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=5), 5)
    c = _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=6), 5)
    assert not _diff(a, b)
    assert not any(np.array_equal(x["technical"], y["technical"]) for x, y in zip(a, c, strict=True))
    first_epoch = np.concatenate([x["name"] for x in a])[:14]
    assert sorted(first_epoch) == sorted(src[i]["name"] for i in range(len(src)))


def test_process_shards_are_disjoint_and_cover_the_split(tiny_tfds: Path) -> None:
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "train")
    shards = []
    for index in range(2):
        it = pipeline.train_iterator(
            src, SPEC, global_batch_size=14, seed=1, num_epochs=1, shard_index=index, shard_count=2
        )
        batches = list(it)
        assert len(batches) == 1 and batches[0]["name"].shape == (7,)
        shards.append(set(batches[0]["name"]))
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == {src[i]["name"] for i in range(len(src))}


def test_global_batches_do_not_depend_on_the_process_count(tiny_tfds: Path) -> None:
    """Global batch k is the same rows, in the same order, with the same random views, whether 1 process
    reads it or 2 (each its half, process 0 first); `start_batch` skips exactly that many global batches."""
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "train")
    one = _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=3, shard_index=0, shard_count=1), 5)
    halves = [
        _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=3, shard_index=i, shard_count=2), 5)
        for i in range(2)
    ]
    two = [{k: np.concatenate([h0[k], h1[k]]) for k in h0} for h0, h1 in zip(*halves, strict=True)]
    assert not _diff(one, two)
    later = _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=3, start_batch=3), 2)
    assert not _diff(one[3:], later)


def test_iterator_state_restores_through_orbax(tiny_tfds: Path, tmp_path: Path) -> None:
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "train")
    it = pipeline.train_iterator(src, SPEC, global_batch_size=2, seed=3)
    _take(it, 2)
    state = it.get_state()
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data_iter",))
    mngr.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 2)
    fresh = pipeline.train_iterator(src, SPEC, global_batch_size=2, seed=3)
    mngr.restore(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    assert not _diff(_take(fresh, 2), expected)
    again = pipeline.train_iterator(src, SPEC, global_batch_size=2, seed=3)
    again.set_state(state)
    assert not _diff(_take(again, 2), expected)
    mngr.close()


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_restore(tiny_tfds: Path) -> None:
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "train")
    inline = _take(pipeline.train_iterator(src, SPEC, global_batch_size=2, seed=9), 4)
    workers = pipeline.train_iterator(src, SPEC, global_batch_size=2, seed=9, num_workers=2)
    head = _take(workers, 2)
    state = workers.get_state()
    tail = _take(workers, 2)
    workers.close()
    assert not _diff(head + tail, inline)
    resumed = pipeline.train_iterator(src, SPEC, global_batch_size=2, seed=9, num_workers=2)
    resumed.set_state(state)
    assert not _diff(_take(resumed, 2), tail)
    resumed.close()


def test_eval_yields_every_video_once_with_padding(tiny_tfds: Path) -> None:
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "val")
    names = [src[i]["name"] for i in range(len(src))]
    per_process = []
    for index in range(3):  # 14 videos over 3 processes, 2 rows each per batch
        it = pipeline.eval_iterator(src, SPEC, global_batch_size=6, num_clips=2, shard_index=index, shard_count=3)
        per_process.append(list(it))
    assert [len(b) for b in per_process] == [3, 3, 3], "every process runs the same number of steps"
    assert [pipeline.eval_num_batches(len(src), 6, i, 3) for i in range(3)] == [3, 3, 3]
    rows = [(n, v) for batches in per_process for b in batches for n, v in zip(b["name"], b["valid"], strict=True)]
    assert [n for n, v in rows if v] == names  # each once, contiguous per process, in order
    assert all(n == b"" for n, v in rows if not v) and len(rows) == 18
    first = per_process[0][0]
    assert first["technical"].shape == (2, 2, 8, 64, 64, 3) and first["aesthetic"].shape == (2, 2, 8, 48, 48, 3)
    direct = views.sample_views(src[0]["video"], pipeline.resolve_views(SPEC, 2), None)
    assert np.array_equal(first["technical"][0], direct["technical"])
    assert np.array_equal(first["aesthetic"][0], direct["aesthetic"])
    padded = per_process[2][-1]
    assert not padded["valid"].any() and not padded["technical"].any() and np.isnan(padded["mos"]).all()


def test_decode_failures_train_skips_eval_reports(tiny_tfds: Path) -> None:
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "test")
    records = [src[i] for i in range(4)]
    records[2] = {**records[2], "video": b"\x00garbage" * 64}
    bad = records[2]["name"]
    train = list(pipeline.train_iterator(records, SPEC, global_batch_size=1, seed=0, num_epochs=1))
    assert sorted(b["name"][0] for b in train) == sorted(r["name"] for r in records if r["name"] != bad)
    batches = list(pipeline.eval_iterator(records, SPEC, global_batch_size=4))
    assert len(batches) == 1
    (batch,) = batches
    assert list(batch["name"]) == [r["name"] for r in records] and list(batch["valid"]) == [True, True, False, True]
    failed = pipeline.failed_names(batch)
    assert [n for n, _ in failed] == [bad.decode()] and bad.decode() in failed[0][1]


def test_to_global_shards_over_the_data_axis(tiny_tfds: Path) -> None:
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "val")
    n_dev = len(jax.devices())
    mesh = jax.make_mesh((n_dev,), ("data",))
    it = pipeline.eval_iterator(src, SPEC, global_batch_size=2 * n_dev, mesh=mesh)
    local = next(it)
    glob = pipeline.to_global(local, mesh)
    for key in ("technical", "aesthetic", "mos", "source_id", "valid"):
        assert isinstance(glob[key], jax.Array) and glob[key].sharding.spec == P("data")
        np.testing.assert_array_equal(np.asarray(glob[key]), local[key])
    assert glob["name"] is local["name"] and glob["error"] is local["error"]
    with pytest.raises(ValueError, match="multiple of 2 processes"):
        pipeline.train_iterator(src, SPEC, global_batch_size=3, seed=0, shard_index=0, shard_count=2)
    if n_dev > 1:  # with several (e.g. fake CPU) devices the batch must also split over them
        with pytest.raises(ValueError, match="multiple of the mesh"):
            pipeline.train_iterator(
                src, SPEC, global_batch_size=n_dev + 1, seed=0, shard_index=0, shard_count=1, mesh=mesh
            )


def test_resolve_views_copies_a_models_views_and_forces_clips() -> None:
    spec = get_spec("dover")
    test_time = pipeline.resolve_views(spec.views)
    train = pipeline.resolve_views(spec.train_views)
    assert test_time == spec.views and list(test_time) == ["technical", "aesthetic"]
    assert test_time["technical"].num_clips == 3 and train["technical"].num_clips == 1
    assert {k: v.num_clips for k, v in pipeline.resolve_views(spec.views, 4).items()} == {
        "technical": 4,
        "aesthetic": 4,
    }
    assert {k: v.shape for k, v in train.items()} == {
        "technical": (1, 32, 224, 224, 3),
        "aesthetic": (1, 32, 224, 224, 3),
    }
    forced = pipeline.resolve_views(SPEC, 2)  # any mapping; the input is copied, never changed
    assert forced is not SPEC and {k: v.num_clips for k, v in SPEC.items()} == {"technical": 1, "aesthetic": 1}
    assert {k: v.shape for k, v in forced.items()} == {"technical": (2, 8, 64, 64, 3), "aesthetic": (2, 8, 48, 48, 3)}
    copied = pipeline.resolve_views(SPEC)
    assert copied == SPEC and copied is not SPEC
    with pytest.raises(ValueError, match="no view branches"):
        pipeline.resolve_views({})


def test_train_batches_carry_the_labels_a_model_asks_for(tiny_tfds: Path) -> None:
    """KSVQE's contrastive loss needs dis_label: carried (int32) only when asked for, an error where it is absent."""
    src = pipeline.load_split(tiny_tfds, "kvq_synthetic", "train")
    (batch,) = _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=0, labels=("dis_label",)), 1)
    records = {src[i]["name"]: src[i] for i in range(len(src))}
    assert batch["dis_label"].dtype == np.int32
    assert batch["dis_label"].tolist() == [int(records[n]["dis_label"]) for n in batch["name"]]
    assert len({int(r["dis_label"]) for r in records.values()}) > 1  # the synthetic set has several classes
    (plain,) = _take(pipeline.train_iterator(src, SPEC, global_batch_size=4, seed=0), 1)
    assert "dis_label" not in plain
    with pytest.raises(ValueError, match="carry no 'cls_label'"):
        pipeline.record_labels(src[0], ("cls_label",))
    with pytest.raises(ValueError, match="no dis_label in its label file"):
        pipeline.record_labels({**src[0], "dis_label": -1}, ("dis_label",))
