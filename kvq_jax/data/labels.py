"""Any labelled folder of videos: label files in CSV, TSV or the official repositories' headerless lists, and the
field's standard datasets (LSVQ, KoNViD-1k, LIVE-VQC, YouTube-UGC) as presets of the same reader.

A :class:`FolderSpec` says which file(s) hold the labels and which columns mean what: a column title (files with a
header row) or a 0-based position (headerless files, such as DOVER's ``examplar_data_labels/<SET>/labels.txt``
lists, ``name, duration, fps, mos``). Splits come from one file per split, from a split column, or from a seeded
split that keeps every source's videos together (``fractions``). Every problem with a row — a missing video, an
empty, non-numeric or NaN score, a duplicate name — is a :class:`~kvq_jax.data.kvq_layout.LayoutError` naming the
file and line, exactly as for the KVQ layout, and the result has the KVQ layout's types so one TFDS builder writes
both.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kvq_jax.data.kvq_files import csv_rows, parse_score
from kvq_jax.data.kvq_layout import LayoutError, SplitLayout, VideoEntry

Column = str | int  # a header's title (case-insensitive), or a 0-based position in a headerless file


@dataclasses.dataclass(frozen=True)
class FolderSpec:
    """How to read a labelled folder (see the module docstring).

    ``labels`` maps a split to its label file (relative to the folder), or ``{"all": file}`` for one file that a
    ``split`` column or ``fractions`` divides. ``fractions`` is (train, test) or (train, val, test), drawn with
    ``seed`` over sources (``source_id`` column; without one every video is its own source). ``suffix`` is added to
    names that lack it (KoNViD's ``flickr_id``), ``videos`` is the sub-folder the names are relative to, and
    ``extra`` names further numeric labels kept with each record; a column titled ``dis_label`` also becomes the
    records' ``dis_label`` (KSVQE's contrastive labels).
    """

    labels: tuple[tuple[str, str], ...]
    name: Column = "filename"
    score: Column = "score"
    split: Column | None = None
    source_id: Column | None = None
    extra: tuple[Column, ...] = ()
    suffix: str = ""
    videos: str = ""
    fractions: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        columns = [self.name, self.score, self.split, self.source_id, *self.extra]
        kinds = {type(c) for c in columns if c is not None}
        if len(kinds) > 1:
            raise ValueError(f"columns are all titles or all positions, not both: {columns}")
        if self.fractions and (len(self.fractions) not in (2, 3) or not math.isclose(sum(self.fractions), 1.0)):
            raise ValueError(f"fractions {self.fractions}: give (train, test) or (train, val, test) summing to 1")
        one_file = [s for s, _ in self.labels] == ["all"]
        if one_file and self.split is None and not self.fractions:
            raise ValueError("one label file for every split needs a split column or fractions")
        if not one_file and (self.split is not None or self.fractions):
            raise ValueError("a label file per split excludes a split column and fractions")

    @property
    def headerless(self) -> bool:
        return isinstance(self.name, int)


# DOVER's label lists of the standard datasets (examplar_data_labels/<SET>/*.txt): "name, duration, fps, mos".
_DOVER_LIST = {"name": 0, "score": 3}
PRESETS: dict[str, FolderSpec] = {
    # LSVQ: its train list and its two test lists; names relative to the release folder
    "lsvq": FolderSpec(
        labels=(("train", "labels.txt"), ("test", "labels_test.txt"), ("test_1080p", "labels_1080p.txt")),
        **_DOVER_LIST,
    ),
    # KoNViD-1k: the release's KoNViD_1k_attributes.csv (flickr_id, MOS), videos in KoNViD_1k_videos/
    "konvid": FolderSpec(
        labels=(("all", "KoNViD_1k_attributes.csv"),),
        name="flickr_id",
        score="mos",
        suffix=".mp4",
        videos="KoNViD_1k_videos",
        fractions=(0.8, 0.2),
    ),
    "live_vqc": FolderSpec(labels=(("all", "labels.txt"),), fractions=(0.8, 0.2), **_DOVER_LIST),
    "youtube_ugc": FolderSpec(labels=(("all", "labels.txt"),), fractions=(0.8, 0.2), **_DOVER_LIST),
}


def _column(header: list[str] | None, col: Column, path: Path, what: str) -> int:
    if isinstance(col, int):
        return col
    assert header is not None
    titles = [h.lower() for h in header]
    if col.lower() not in titles:
        raise LayoutError(f"{path}: no {what} column {col!r}; the header has {header}")
    return titles.index(col.lower())


def _rows(path: Path, headerless: bool) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header, rows) of a comma-, tab- or whitespace-separated label file."""
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "," not in first and "\t" in first:
        raw = raw.replace(b"\t", b",")
    elif "," not in first:
        raw = re.sub(rb"[ \t]+", b",", raw)
    rows = csv_rows(raw, path, LayoutError)
    if not rows:
        raise LayoutError(f"{path}: empty label file")
    return (None, rows) if headerless else ([c.strip() for c in rows[0][1]], rows[1:])


def read_label_file(path: Path, root: Path, spec: FolderSpec) -> list[tuple[VideoEntry, str | None, tuple[float, ...]]]:
    """(entry, the row's split or None, extra labels) per row of one label file, validated."""
    header, rows = _rows(path, spec.headerless)
    named = {"name": spec.name, "score": spec.score, "split": spec.split, "source_id": spec.source_id}
    cols = {what: _column(header, col, path, what) for what, col in named.items() if col is not None}
    extra = [_column(header, col, path, "extra") for col in spec.extra]
    need = max([*cols.values(), *extra])
    out, seen = [], {}
    base = root / spec.videos
    for line, cells in rows:
        where = f"{path}:{line}"
        if len(cells) <= need:
            raise LayoutError(f"{where}: expected at least {need + 1} columns, got {len(cells)}: {cells}")
        name = cells[cols["name"]]
        if not name:
            raise LayoutError(f"{where}: empty video name")
        if spec.suffix and not name.endswith(spec.suffix):
            name += spec.suffix
        if name in seen:
            raise LayoutError(f"{where}: duplicate video {name!r} (first on line {seen[name]})")
        seen[name] = line
        mos = parse_score(cells[cols["score"]], where, LayoutError, name)
        sid = -1
        if "source_id" in cols:
            try:
                sid = int(cells[cols["source_id"]])
            except ValueError:
                raise LayoutError(f"{where}: source_id {cells[cols['source_id']]!r} is not an integer") from None
        extras = tuple(parse_score(cells[c], where, LayoutError, name) for c in extra)
        video = base / name
        if not video.is_file():
            raise LayoutError(f"{where}: video {name!r} not found (looked for {video})")
        split = cells[cols["split"]] if "split" in cols else None
        out.append((VideoEntry(name, video, mos, sid, line, path), split, extras))
    if not out:
        raise LayoutError(f"{path}: no videos listed")
    return out


def source_aware_split(source_ids: list[int], fractions: tuple[float, ...], seed: int) -> list[str]:
    """A split name per video: sources shuffled with ``seed`` and cut by ``fractions`` of the videos, so the
    versions of one source never straddle two splits (a video with source -1 is a source of its own)."""
    names = ("train", "test") if len(fractions) == 2 else ("train", "val", "test")
    ids = [sid if sid >= 0 else -(i + 1) for i, sid in enumerate(source_ids)]
    sources = sorted(set(ids))
    order = np.random.default_rng(seed).permutation(len(sources))
    counts = {s: 0 for s in sources}
    for sid in ids:
        counts[sid] += 1
    bounds = np.cumsum(fractions)[:-1] * len(ids)
    assigned, done = {}, 0
    for k in order:
        source = sources[k]
        assigned[source] = names[int(np.searchsorted(bounds, done, side="right"))]
        done += counts[source]
    return [assigned[sid] for sid in ids]


def read_folder(root: str | Path, spec: FolderSpec) -> dict[str, SplitLayout]:
    """Every split of a labelled folder, validated, in the KVQ layout's types (no rank pairs)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory")
    rows: list[tuple[VideoEntry, str, tuple[float, ...]]] = []
    for split, file in spec.labels:
        path = root / file
        if not path.is_file():
            raise LayoutError(f"{root}: label file {file!r} not found")
        for entry, row_split, extras in read_label_file(path, root, spec):
            rows.append((entry, row_split or split, extras))
    if spec.fractions:
        splits = source_aware_split([e.source_id for e, _, _ in rows], spec.fractions, spec.seed)
        rows = [(e, s, x) for (e, _, x), s in zip(rows, splits, strict=True)]
    names = [e.name for e, _, _ in rows]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise LayoutError(f"{root}: video {dup!r} is listed by more than one label file")
    dis = next((i for i, c in enumerate(spec.extra) if isinstance(c, str) and c.lower() == "dis_label"), None)
    layouts: dict[str, SplitLayout] = {}
    for split in dict.fromkeys(s for _, s, _ in rows):
        videos = [
            dataclasses.replace(e, extra=x, dis_label=-1 if dis is None else int(x[dis]))
            for e, s, x in rows
            if s == split
        ]
        layouts[split] = SplitLayout(split, videos[0].csv_path, True, videos)
    return layouts


def spec_from_options(options: Mapping) -> FolderSpec:
    """A FolderSpec from plain options (a config or the build CLI): ``preset`` and/or the spec's own fields;
    ``labels`` may be a file name (one file) or a mapping split -> file."""
    opts = {k: v for k, v in dict(options).items() if v is not None}
    base = dataclasses.asdict(PRESETS[opts.pop("preset")]) if "preset" in opts else {}
    labels = opts.pop("labels", None)
    if labels is not None:
        base["labels"] = (("all", labels),) if isinstance(labels, str) else tuple(dict(labels).items())
    base.update({k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
    if "labels" not in base:
        raise ValueError("a labelled folder needs 'labels' (a file, or split -> file) or a 'preset'")
    base["labels"] = tuple(tuple(x) for x in base["labels"])
    return FolderSpec(**base)
