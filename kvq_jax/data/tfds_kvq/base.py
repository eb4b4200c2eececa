"""Shared TFDS builder for KVQ-style folders, written to work without TensorFlow.

Why this shape: ``tfds.features.Video``/``Image`` need TensorFlow, so each record keeps the *original encoded
file* as ``Scalar(np.object_)`` bytes and is decoded at load time (``kvq_jax.data.decode``). Records are
stored as ArrayRecord (random access for grain), in the label file's order (``disable_shuffling``; the
input pipeline shuffles). Features:

* ``video``: bytes of the encoded file, exactly as on disk;
* ``name``: the label file's name for the video ("train/0001.mp4"), the key of prediction/truth CSVs and
  rank pairs (``Text``: comes back as ``bytes``);
* ``mos``: float32 (NaN in an unlabelled split); ``source_id``: int64 (-1 when unknown);
* ``num_frames``: int64, as probed at build time;
* ``dis_label``: int64, the distortion class where the label file gives one (the KVQ repository's
  ``filename,cls_label,dis_label,score`` lists; KSVQE's contrastive labels), -1 otherwise. New in 1.1.0: records
  built before it lack the field, and read back as they are.

With ``frames=FrameOptions(...)`` (``--frames jpeg``) each record also holds its video's frames, decoded once here
(`kvq_jax.data.frames`: what is kept, and for which views): ``frames`` (JPEG bytes per frame, the decoders'
numbering), ``fps`` (float32) and ``frames_short_side`` (int64, 0 for native resolution); the video bytes stay. The
options are in ``metadata.json`` (``frames``, None without).

The split is the TFDS split name. Every video is probed (frame count plus a first-frame decode) before it
is written; a video that fails is left out *and reported*: in ``skipped.json`` next to the records, in the
dataset's ``metadata.json`` and by :func:`load_skipped`. The rank pairs (sheets ``source``/``nonsource`` per
split) are kept in ``metadata.json`` as data (:func:`load_pairs`); pairs naming a skipped video are dropped
and counted there.
"""

from __future__ import annotations

import abc
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tqdm import tqdm

from kvq_jax.data import kvq_layout

if TYPE_CHECKING:
    from kvq_jax.data.frames import FrameOptions

SKIPPED_FILE = "skipped.json"
PROBE_THREADS = 4
# Records made at once by the writer's threads: bounds memory when they hold pre-extracted frames (tens of MB each).
RECORD_WINDOW = 2 * PROBE_THREADS


def probe_video(path: str | os.PathLike) -> tuple[int, str | None]:
    """(number of frames, None) for a video that opens and decodes its first frame, (0, reason) otherwise."""
    from kvq_jax.data import decode  # imported lazily: only building needs a decoder

    try:
        return decode.num_frames(path, check_decode=True), None
    except decode.VideoDecodeError as e:
        return 0, str(e)


class KvqBuilderBase(tfds.core.GeneratorBasedBuilder):
    """ArrayRecord records of a KVQ-style folder (see the module docstring); subclasses pick the folder."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Encoded video bytes, name, MOS, source id, frame count; pairs in metadata.",
        "1.1.0": "dis_label (distortion class, -1 unknown); metadata says which splits have it.",
    }

    def __init__(self, *, file_format: str | None = "array_record", frames: FrameOptions | None = None, **kwargs: Any):
        self.frame_options = frames  # before TFDS's init, which reads the features
        super().__init__(file_format=file_format, **kwargs)

    @abc.abstractmethod
    def _manual_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
        """The KVQ-style folder to read."""

    def _layouts(self, root: Path) -> dict[str, kvq_layout.SplitLayout]:
        """The folder's splits, validated (the KVQ layout; the labelled-folder builder reads its own)."""
        return kvq_layout.read_layout(root)

    def _features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {
            "video": tfds.features.Scalar(np.object_, doc="the encoded video file's bytes"),
            "name": tfds.features.Text(doc="name in the label file, e.g. train/0001.mp4"),
            "mos": tfds.features.Scalar(np.float32, doc="mean opinion score, NaN if unlabelled"),
            "source_id": tfds.features.Scalar(np.int64, doc="source (homologous group), -1 unknown"),
            "num_frames": tfds.features.Scalar(np.int64, doc="frame count probed at build time"),
            "dis_label": tfds.features.Scalar(np.int64, doc="distortion class (KSVQE's contrastive loss), -1 unknown"),
            **(self._frame_features() if self.frame_options else {}),
        }

    @staticmethod
    def _frame_features() -> dict[str, tfds.features.FeatureConnector]:
        return {
            "frames": tfds.features.Sequence(tfds.features.Scalar(np.object_), doc="JPEG bytes of every frame"),
            "fps": tfds.features.Scalar(np.float32, doc="the video's average frame rate"),
            "frames_short_side": tfds.features.Scalar(np.int64, doc="short side of the frames, 0: native"),
        }

    def _record(self, entry: kvq_layout.VideoEntry, num_frames: int) -> dict[str, Any]:
        record = {
            "video": entry.path.read_bytes(),
            "name": entry.name,
            "mos": np.float32(entry.mos),
            "source_id": entry.source_id,
            "num_frames": num_frames,
            "dis_label": entry.dis_label,
        }
        if self.frame_options:
            from kvq_jax.data import frames  # imported lazily: only building needs a decoder

            extracted = frames.extract(record["video"], self.frame_options, name=entry.name)
            if len(extracted["frames"]) != num_frames:
                raise ValueError(f"{entry.name}: {len(extracted['frames'])} frames extracted, {num_frames} probed")
            record.update(extracted)
        return record

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__class__.__doc__ or "").strip(),
            features=tfds.features.FeaturesDict(self._features()),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
            homepage="https://github.com/lixinustc/KVQ-Challenge-CVPR-NTIRE2024",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = self._manual_root(dl_manager)
        layouts = self._layouts(root)
        entries = [(split, v) for split, lay in layouts.items() for v in lay.videos]
        with ThreadPoolExecutor(PROBE_THREADS) as pool:
            probes = list(
                tqdm(
                    pool.map(lambda sv: probe_video(sv[1].path), entries),
                    total=len(entries),
                    desc=f"probing {self.name} videos",
                    unit="video",
                )
            )
        kept: dict[str, list[tuple[kvq_layout.VideoEntry, int]]] = {s: [] for s in layouts}
        skipped = []
        for (split, v), (n, reason) in zip(entries, probes, strict=True):
            if reason is None:
                kept[split].append((v, n))
            else:
                skipped.append({"split": split, "name": v.name, "path": str(v.path), "reason": reason})
        empty = [s for s, items in kept.items() if not items]
        if empty:
            raise kvq_layout.LayoutError(
                f"{root}: no decodable video left in split(s) {empty}; skipped: {json.dumps(skipped)}"
            )
        bad = {s["name"] for s in skipped}
        pairs: dict[str, dict[str, list[list[Any]]]] = {}
        dropped: dict[str, int] = {}
        for split, lay in layouts.items():
            pairs[split] = {}
            for sheet, rows in lay.pairs.items():
                good = [list(p) for p in rows if p[0] not in bad and p[1] not in bad]
                pairs[split][sheet] = good
                dropped[f"{split}/{sheet}"] = len(rows) - len(good)
        meta = self.info.metadata
        meta.clear()
        meta.update(
            {
                "manual_dir": str(root),
                "label_files": {s: str(lay.csv_path) for s, lay in layouts.items()},
                "pair_files": {s: str(lay.pairs_path) for s, lay in layouts.items() if lay.pairs_path},
                "labelled": {s: lay.labelled for s, lay in layouts.items()},
                "dis_labelled": {s: all(v.dis_label >= 0 for v in lay.videos) for s, lay in layouts.items()},
                "listed": {s: len(lay.videos) for s, lay in layouts.items()},
                "pairs": pairs,
                "dropped_pairs": dropped,
                "skipped": skipped,
                "frames": self.frame_options.as_dict() if self.frame_options else None,
                # the records of each split in order, (name, source id): re-splitting needs no pass over videos
                "index": {s: [[v.name, v.source_id] for v, _ in items] for s, items in kept.items()},
            }
        )
        out = epath.Path(self.data_dir)  # TFDS's temporary dir, renamed into place on success; may be gs://
        out.mkdir(parents=True, exist_ok=True)
        (out / SKIPPED_FILE).write_text(json.dumps(skipped, indent=1) + "\n")
        return {split: self._generate_examples(items) for split, items in kept.items()}

    def _generate_examples(self, items: list[tuple[kvq_layout.VideoEntry, int]]):
        """Records in order, made ``RECORD_WINDOW`` at a time by threads (decoding and JPEG coding release the GIL)."""
        with ThreadPoolExecutor(PROBE_THREADS) as pool:
            for start in range(0, len(items), RECORD_WINDOW):
                window = items[start : start + RECORD_WINDOW]
                for (v, _), record in zip(window, pool.map(lambda vn: self._record(*vn), window), strict=True):
                    yield v.name, record


def dataset_dir(data_dir: str | os.PathLike, name: str) -> epath.Path:
    """Where a built dataset lives (``<data_dir>/<name>[/<config>]/<newest version>``): found on disk, so a
    labelled folder's own config needs no registration to be read back."""
    root = epath.Path(data_dir) / name
    versions = sorted(
        (p for p in root.glob("*") if (p / "dataset_info.json").exists()),
        key=lambda p: tuple(int(x) if x.isdigit() else -1 for x in p.name.split(".")),
    )
    if not versions:
        raise FileNotFoundError(
            f"no built dataset {name!r} under {data_dir}; build it with python -m kvq_jax.data.build"
        )
    return versions[-1]


def load_metadata(data_dir: str | os.PathLike, name: str = "kvq") -> dict[str, Any]:
    """The build report stored with a prepared dataset (pairs, skipped videos, label files, counts)."""
    path = dataset_dir(data_dir, name) / "metadata.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metadata; build the dataset with python -m kvq_jax.data.build")
    return json.loads(path.read_text())


def load_pairs(
    data_dir: str | os.PathLike, name: str = "kvq", split: str = "val"
) -> dict[str, list[tuple[str, str, int]]]:
    """Rank pairs of a prepared split: ``{"source": [(video1, video2, rank)], "nonsource": [...]}``.

    ``rank`` is 1 when video1 is better (the challenge's convention); empty dict when the folder had no
    rank-pair workbook for the split."""
    pairs = load_metadata(data_dir, name)["pairs"]
    if split not in pairs:
        raise KeyError(f"{name} in {data_dir} has no split {split!r}; it has {sorted(pairs)}")
    return {sheet: [(a, b, int(r)) for a, b, r in rows] for sheet, rows in pairs[split].items()}


def load_skipped(data_dir: str | os.PathLike, name: str = "kvq") -> list[dict[str, str]]:
    """Videos left out at build time, each with split, name, path and the decoder's reason."""
    return list(load_metadata(data_dir, name)["skipped"])
