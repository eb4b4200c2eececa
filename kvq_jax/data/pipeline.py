"""grain input pipeline: KVQ records -> decoded views -> batches -> global ``jax.Array`` s.

Train (:func:`train_iterator`)::

    source -> seed/shuffle -> repeat -> random_map(decode + views) -> this process's blocks of the stream
           -> [start:] -> to_iter_dataset -> mp_prefetch(num_workers) -> batch(local, drop_remainder)

The global stream is cut into blocks of ``local = global_batch_size // shard_count`` elements and process
``p`` takes blocks ``p, p + count, …``: global batch ``k`` is elements ``[k·G, (k+1)·G)`` in order, and each
element's random views are drawn with its *global* index, so 1 process or many see the same batches (a run
can resume on another number of hosts; see ``start_batch``).

Eval (:func:`eval_iterator`): every record exactly once, in order, per process a *contiguous* slice padded
so that every process yields the same number of batches (a collective step must not hang); padding rows
have ``valid=False``. Views are deterministic (``rng=None``), ``num_clips`` clips per video.

Why batching comes after ``mp_prefetch``: grain slices elements over workers round-robin and interleaves
them back in order, so the batches do not depend on ``num_workers`` (0 works, in-process). Each record's
views use grain's per-record generator (seed, index, epoch), so a seed fixes every batch; the iterator's
``get_state``/``set_state`` (and ``grain.checkpoint.CheckpointSave/Restore`` for orbax) resume exactly.

Batches are dicts of numpy arrays (local to this process):

* one uint8 ``[B, clips, T, H, W, 3]`` per view branch (e.g. ``technical``, ``aesthetic``);
* ``mos`` float32 ``[B]``, ``source_id`` int32 ``[B]``, ``valid`` bool ``[B]``;
* in train, the record labels a model's auxiliary loss asks for (``labels``, e.g. KSVQE's ``dis_label``), int32
  ``[B]``: a dataset whose records lack one, or a video whose label is unknown (−1), is an error naming it;
* host-only (never sent to devices, see :data:`HOST_FIELDS`): ``name`` object array of ``bytes``,
  and in eval ``error`` (object array of ``str``, empty unless decoding failed).

Videos that fail to decode (:class:`~kvq_jax.data.decode.VideoDecodeError`; the TFDS build already left
out videos it could not probe, see ``skipped.json``): in *train* the record is skipped with a logged warning;
in *eval* it is never dropped: its row keeps its ``name``, gets zero views, ``valid=False`` and the reason in
``error``, and a warning is logged — the evaluator must report it (:func:`failed_names`).

:func:`to_global` turns a local batch into global arrays whose rows are split over every axis of the mesh, with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from kvq_jax.data import decode
from kvq_jax.data import views as views_lib
from kvq_jax.data.frames import record_source

HOST_FIELDS = ("name", "error")
Batch = dict[str, np.ndarray]


def load_split(data_dir: str | os.PathLike, name: str = "kvq_synthetic", split: str = "train") -> Any:
    """The ArrayRecord data source of a built split (slicing: ``train[:50%]``), read from its folder: any built
    dataset, a labelled folder's own config included."""
    import tensorflow_datasets as tfds

    from kvq_jax.data.tfds_kvq import dataset_dir

    return tfds.builder_from_directory(os.fspath(dataset_dir(data_dir, name))).as_data_source(split=split)


def resolve_views(
    views: Mapping[str, views_lib.ViewSpec], num_clips: int | None = None
) -> dict[str, views_lib.ViewSpec]:
    """Branch -> ViewSpec (a copy), optionally forcing ``num_clips``."""
    out = dict(views)
    if not out:
        raise ValueError("no view branches given")
    if num_clips is not None:
        out = {k: dataclasses.replace(v, num_clips=num_clips) for k, v in out.items()}
    return out


def _name(record: Mapping[str, Any]) -> bytes:
    n = record["name"]
    return n if isinstance(n, bytes) else str(n).encode()


def _example(record: Mapping[str, Any], arrays: Mapping[str, np.ndarray], valid: bool) -> dict[str, Any]:
    out: dict[str, Any] = dict(arrays)
    out["mos"] = np.float32(record["mos"])
    out["source_id"] = np.int32(record["source_id"])
    out["valid"] = np.bool_(valid)
    out["name"] = np.array(_name(record), dtype=object)
    return out


def record_labels(record: Mapping[str, Any], labels: Sequence[str]) -> dict[str, np.ndarray]:
    """The integer labels ``labels`` of one record (int32 scalars), checked: present and known (≥ 0)."""
    out = {}
    for label in labels:
        if label not in record:
            raise ValueError(
                f"the training records carry no {label!r}, which the model's auxiliary loss needs: build the dataset "
                f"from label files that have it (KVQ: the repository's filename,cls_label,dis_label,score lists), "
                f"or set its loss.aux_weights to 0"
            )
        value = int(record[label])
        if value < 0:
            raise ValueError(f"{_name(record).decode(errors='replace')}: no {label} in its label file (-1)")
        out[label] = np.int32(value)
    return out


@dataclasses.dataclass(frozen=True)
class _TrainViews(grain.transforms.RandomMap):
    """Decode one record's random views with grain's per-record generator; None (skipped) if it fails."""

    views: Mapping[str, views_lib.ViewSpec]
    labels: tuple[str, ...] = ()

    def random_map(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
        name = _name(record).decode(errors="replace")
        labels = record_labels(record, self.labels)
        try:
            arrays = views_lib.sample_views(record_source(record, self.views), self.views, rng, name=name)
        except decode.VideoDecodeError as e:
            logging.warning("train: skipping a video that does not decode: %s", e)
            return None
        return _example(record, arrays, True) | labels


class _Blocks:
    """Process ``index`` of ``count`` of a global example stream: blocks of ``local`` consecutive elements,
    every ``count``-th block starting at block ``index`` (random access, lazy)."""

    def __init__(self, stream: grain.MapDataset, index: int, count: int, local: int):
        self.stream, self.index, self.count, self.local = stream, index, count, local

    def __len__(self) -> int:
        return len(self.stream) // (self.count * self.local) * self.local

    def __getitem__(self, i: int) -> Any:
        block, j = divmod(i, self.local)
        return self.stream[(block * self.count + self.index) * self.local + j]


class _PaddedShard:
    """Records ``[start, stop)`` of ``source``, then padding up to ``length`` (random access).

    Items are ``(index, record)`` and ``(-1, None)`` for padding: a bare ``None`` would count as filtered out
    for grain and be dropped, while padding rows must reach the batch."""

    def __init__(self, source: Any, start: int, stop: int, length: int):
        self.source, self.start, self.stop, self.length = source, start, stop, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, Any]:
        j = self.start + i
        return (j, self.source[j]) if j < self.stop else (-1, None)


@dataclasses.dataclass(frozen=True)
class _EvalViews(grain.transforms.Map):
    """Deterministic views (centred, or ``tta`` samplings seeded by (seed, record index)); padding and decode
    failures become zero rows with ``valid=False``."""

    views: Mapping[str, views_lib.ViewSpec]
    shapes: Mapping[str, tuple[int, ...]]
    tta: int = 1
    seed: int = 0

    def _zeros(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(s, np.uint8) for k, s in self.shapes.items()}

    def map(self, item: tuple[int, Any]) -> dict[str, Any]:
        index, record = item
        if record is None:
            out = _example({"name": b"", "mos": math.nan, "source_id": -1}, self._zeros(), False)
            out["error"] = np.array("", dtype=object)
            return out
        name = _name(record).decode(errors="replace")
        try:
            rng = np.random.default_rng([self.seed, index]) if self.tta > 1 else None
            source = record_source(record, self.views)
            arrays = views_lib.sample_views(source, self.views, rng, name=name, samples=self.tta)
            error = ""
        except decode.VideoDecodeError as e:
            logging.warning("eval: a video does not decode; it is marked invalid and reported: %s", e)
            arrays, error = self._zeros(), str(e)
        out = _example(record, arrays, not error)
        out["error"] = np.array(error, dtype=object)
        return out


def _stack(items: Sequence[dict[str, Any]]) -> Batch:
    """Stack examples into a batch; object fields (names, errors) stay 1-D object arrays."""
    out: Batch = {}
    for key in items[0]:
        if items[0][key].dtype == object:
            col = np.empty(len(items), dtype=object)
            col[:] = [it[key].item() for it in items]
            out[key] = col
        else:
            out[key] = np.stack([it[key] for it in items])
    return out


def _process(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if (shard_index is None) != (shard_count is None):
        raise ValueError("give both shard_index and shard_count, or neither (then: this JAX process)")
    if shard_index is None:
        import jax

        return jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    return shard_index, shard_count


def _local_batch(global_batch_size: int, shard_count: int, mesh: Any) -> int:
    if global_batch_size <= 0 or global_batch_size % shard_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of {shard_count} processes"
        )
    if mesh is not None and global_batch_size % mesh.size:
        raise ValueError(f"global_batch_size {global_batch_size} must be a multiple of the mesh's {mesh.size} devices")
    return global_batch_size // shard_count


def _finish(ds: grain.MapDataset, num_workers: int, read_threads: int, batch: int, drop_remainder: bool):
    if num_workers > 0 and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (outside absl.app.run too)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads))
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds.batch(batch, drop_remainder=drop_remainder, batch_fn=_stack))


def train_iterator(
    data_source: Any,
    views: Mapping[str, views_lib.ViewSpec],
    *,
    global_batch_size: int,
    seed: int,
    num_workers: int = 0,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    mesh: Any = None,
    read_threads: int = 2,
    start_batch: int = 0,
    labels: Sequence[str] = (),
) -> grain.DatasetIterator:
    """Endless (or ``num_epochs``) shuffled training batches of this process's shard, as local numpy dicts.

    The shard is this process's blocks of the repeated, shuffled stream (default: this JAX process; see the
    module docstring); the local batch is ``global_batch_size // shard_count``. ``views`` is branch -> ViewSpec
    (a model's training form: one clip per branch, see ``ModelSpec.train_views``). ``start_batch`` skips that many
    global batches (resuming where the iterator's own checkpoint does not fit, e.g. on another host count).
    ``labels``: record labels to carry into the batches (a model's auxiliary loss needs them). Records with
    pre-extracted frames (``--frames jpeg``) are read from those instead of the video (`kvq_jax.data.frames`).
    ``mesh`` only checks divisibility; pass each batch to :func:`to_global`.
    """
    index, count = _process(shard_index, shard_count)
    local = _local_batch(global_batch_size, count, mesh)
    if len(data_source) == 0:
        raise ValueError("empty data source")
    stream = grain.MapDataset.source(data_source).seed(seed).shuffle().repeat(num_epochs)
    stream = stream.random_map(_TrainViews(resolve_views(views), tuple(labels)))
    ds = grain.MapDataset.source(_Blocks(stream, index, count, local))[start_batch * local :]
    return _finish(ds, num_workers, read_threads, local, drop_remainder=True)


def eval_plan(n: int, global_batch_size: int, shard_index: int, shard_count: int) -> tuple[int, int, int]:
    """(start, stop, padded length) of a process's contiguous eval slice; every process gets the same
    padded length, a multiple of the local batch."""
    local = global_batch_size // shard_count
    per = math.ceil(n / shard_count)
    start = min(n, shard_index * per)
    stop = min(n, start + per)
    return start, stop, max(1, math.ceil(per / local)) * local


def eval_num_batches(
    n: int, global_batch_size: int, shard_index: int | None = None, shard_count: int | None = None
) -> int:
    """Batches :func:`eval_iterator` yields on each process (the same on all, as the last ones are padded)."""
    index, count = _process(shard_index, shard_count)
    return eval_plan(n, global_batch_size, index, count)[2] // (global_batch_size // count)


def eval_iterator(
    data_source: Any,
    views: Mapping[str, views_lib.ViewSpec],
    *,
    global_batch_size: int,
    num_clips: int | None = None,
    tta: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    mesh: Any = None,
    read_threads: int = 2,
) -> grain.DatasetIterator:
    """Every record of ``data_source`` once (over all processes), deterministic views, padded last batches.

    ``views`` is branch -> ViewSpec (a model's test-time views); ``num_clips`` overrides each
    branch's clip count; ``tta`` > 1 stacks that many random samplings of every view on the clip axis (drawn
    from (``seed``, record index), so on any number of processes). Rows with ``valid=False`` are padding (empty
    ``name``) or decode failures (``error`` says why; see :func:`failed_names`).
    """
    index, count = _process(shard_index, shard_count)
    local = _local_batch(global_batch_size, count, mesh)
    spec = resolve_views(views, num_clips)
    n = len(data_source)
    if n == 0:
        raise ValueError("empty data source")
    start, stop, length = eval_plan(n, global_batch_size, index, count)
    ds = grain.MapDataset.source(_PaddedShard(data_source, start, stop, length))
    shapes = {k: (v.clips * tta, *v.shape[1:]) for k, v in spec.items()}
    ds = ds.map(_EvalViews(spec, shapes, tta, seed))
    return _finish(ds, num_workers, read_threads, local, drop_remainder=False)


def failed_names(batch: Mapping[str, np.ndarray]) -> list[tuple[str, str]]:
    """(name, reason) of every row of an eval batch whose video failed to decode."""
    return [
        (n.decode(errors="replace"), e)
        for n, e, v in zip(batch["name"], batch["error"], batch["valid"], strict=True)
        if e and not v
    ]


def to_global(batch: Mapping[str, np.ndarray], mesh: Any) -> dict[str, Any]:
    """Device fields -> global ``jax.Array`` s whose rows are split over every mesh axis, in mesh order (each
    process passes its local rows); host fields (:data:`HOST_FIELDS`) stay numpy."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    axes = tuple(mesh.axis_names)
    sharding = NamedSharding(mesh, P(axes[0] if len(axes) == 1 else axes))
    return {
        k: v if k in HOST_FIELDS else jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
    }
