"""Read and validate a KVQ-style folder: per-split label CSVs, video files, rank-pair workbooks.

The layout (the challenge release, as used by the KVQ code and challenge entries; our synthetic generator
writes the same)::

    ROOT/train/0001.mp4 ...         videos; KVQ numbers them 4-digit, 1-based, 7 consecutive per source
    ROOT/val/...  ROOT/test/...
    ROOT/train_data.csv             header ``filename,score`` (filename relative to ROOT: "train/0001.mp4")
    ROOT/val_data.csv | ROOT/truth.csv | ROOT/groundtruth_label/truth.csv     (validation labels)
    ROOT/test_data.csv
    ROOT/rank-pair-val.xlsx         sheets ``source`` / ``nonsource``, columns video1, video2, rank (1 = first
                                    better); also looked for as ``rank-pair-{split}.xlsx`` for every split and
                                    under ``groundtruth_label/``

The file formats themselves (CSV rows, score cells, the pair workbook) are parsed by
:mod:`kvq_jax.data.kvq_files`, which the challenge scorer shares; this module adds the folder conventions.

Label files may also be the KVQ repository's headerless ``filename,cls_label,dis_label,score`` lists, whose
``dis_label`` (the distortion class, KSVQE's contrastive labels) is kept; a header may name a ``dis_label`` column
too. A filename is resolved against ROOT first, then against ``ROOT/<split>/``. Optional columns: ``source_id``
(overrides the id derived from the name). A CSV without a score column makes the split *unlabelled*
(challenge test phase): MOS becomes NaN. Everything else that is wrong with a row is a
:class:`LayoutError` naming the file and line: a missing video, an empty, non-numeric or NaN score, a
duplicate name.

Source id: KVQ keeps the 7 versions of a source under consecutive numbers, so a numeric stem ``n`` gives
``(n - 1) // 7`` (e.g. ``0239`` ... ``0245`` are one source); a stem ``<sid>_<k>`` gives ``sid``; otherwise
the id is -1 (unknown) unless a ``source_id`` column is present.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kvq_jax.data.kvq_files import PAIR_SHEETS, KvqFileError, csv_rows, parse_score, read_pair_workbook

SPLITS = ("train", "val", "test")
VIDEOS_PER_SOURCE = 7


class LayoutError(KvqFileError):
    """Bad input in a KVQ folder; the message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class VideoEntry:
    """One labelled video: ``name`` as written in the CSV (the challenge's key), resolved ``path``."""

    name: str
    path: Path
    mos: float  # NaN when the split is unlabelled
    source_id: int  # -1 when unknown
    line: int  # 1-based line in ``csv_path``
    csv_path: Path
    extra: tuple[float, ...] = ()  # further numeric labels of a labelled folder (kvq_jax.data.labels)
    dis_label: int = -1  # distortion class of the KVQ repository's lists (KSVQE's contrastive loss); -1 unknown


@dataclass(frozen=True)
class SplitLayout:
    split: str
    csv_path: Path
    labelled: bool
    videos: list[VideoEntry]
    pairs_path: Path | None = None
    pairs: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)


def source_id_from_name(name: str) -> int | None:
    """The source id that KVQ's naming convention implies, or None when the name does not tell."""
    stem = Path(name).stem
    if stem.isdigit() and int(stem) > 0:
        return (int(stem) - 1) // VIDEOS_PER_SOURCE
    m = re.fullmatch(r"(\d+)_(\d+)", stem)
    return int(m.group(1)) if m else None


def label_candidates(root: Path, split: str) -> list[Path]:
    """Where a split's label CSV may live, in order of preference."""
    names = [f"{split}_data.csv", f"{split}.csv", f"{split}/{split}_data.csv"]
    if split == "val":
        names += ["truth.csv", "groundtruth_label/truth.csv", "val_data_nolabel.csv"]
    return [root / n for n in names]


def pair_candidates(root: Path, split: str) -> list[Path]:
    return [root / f"rank-pair-{split}.xlsx", root / "groundtruth_label" / f"rank-pair-{split}.xlsx"]


def _has_header(first: list[str]) -> bool:
    return bool(first) and first[0].strip().lower() in (
        "filename",
        "file_name",
        "file_names",
        "name",
        "video",
    )


def _read_rows(csv_path: Path) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(lower-cased header or None, [(line number, cells)]); blank lines are skipped."""
    rows = csv_rows(csv_path.read_bytes(), csv_path, LayoutError)
    if not rows:
        raise LayoutError(f"{csv_path}: empty label file")
    if _has_header(rows[0][1]):
        return [c.lower() for c in rows[0][1]], rows[1:]
    return None, rows


def read_labels(csv_path: Path, root: Path, split: str) -> tuple[list[VideoEntry], bool]:
    """Parse and validate one split's label file; returns (entries, labelled)."""
    header, rows = _read_rows(csv_path)
    if header is not None:
        name_col = 0
        score_col = header.index("score") if "score" in header else None
        sid_col = header.index("source_id") if "source_id" in header else None
        dis_col = header.index("dis_label") if "dis_label" in header else None
    else:  # headerless: "filename,score" or the KVQ repository's "filename,cls_label,dis_label,score"
        width = len(rows[0][1])
        if width not in (2, 4):
            raise LayoutError(
                f"{csv_path}:{rows[0][0]}: no header and {width} columns; expected a 'filename,score' header "
                "or headerless 'filename,score' / 'filename,cls_label,dis_label,score' rows"
            )
        name_col, score_col, sid_col = 0, width - 1, None
        dis_col = 2 if width == 4 else None
    entries: list[VideoEntry] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        where = f"{csv_path}:{line}"
        name = cells[name_col] if cells else ""
        if not name:
            raise LayoutError(f"{where}: empty filename")
        need = max(c for c in (name_col, score_col, sid_col, dis_col) if c is not None)
        if len(cells) <= need:
            raise LayoutError(f"{where}: expected at least {need + 1} columns, got {len(cells)}: {cells}")
        if name in seen:
            raise LayoutError(f"{where}: duplicate filename {name!r} (first on line {seen[name]})")
        seen[name] = line
        mos = parse_score(cells[score_col], where, LayoutError) if score_col is not None else math.nan
        sid = source_id_from_name(name)
        if sid_col is not None:
            try:
                sid = int(cells[sid_col])
            except ValueError:
                raise LayoutError(f"{where}: source_id {cells[sid_col]!r} is not an integer") from None
        dis = -1
        if dis_col is not None:
            try:
                dis = int(float(cells[dis_col]))  # the official reader: int(float(dis_label))
            except ValueError:
                raise LayoutError(f"{where}: dis_label {cells[dis_col]!r} is not a number") from None
            if dis < 0:
                raise LayoutError(f"{where}: dis_label {dis} is negative")
        tried = [root / name, root / split / name]
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise LayoutError(f"{where}: video {name!r} not found (looked for {', '.join(map(str, tried))})")
        entries.append(VideoEntry(name, path, mos, -1 if sid is None else sid, line, csv_path, dis_label=dis))
    if not entries:
        raise LayoutError(f"{csv_path}: no videos listed")
    return entries, score_col is not None


def _resolve_pair_name(name: str, names: set[str], by_base: dict[str, str | None], where: str) -> str:
    """A pair's video -> the label file's name for it (exact, else by unique basename)."""
    if name in names:
        return name
    match = by_base.get(name.rsplit("/", 1)[-1])
    if match is None:
        raise LayoutError(f"{where}: video {name!r} is not in the split's label file")
    return match


def read_pairs(xlsx_path: Path, names: set[str]) -> dict[str, list[tuple[str, str, int]]]:
    """Both rank-pair sheets, checked: every pair names two listed videos (and has rank 1 or 2).

    A pair cell that is not a listed name but whose basename matches exactly one listed name is mapped
    to it (a workbook may write "0001.mp4" where the CSV says "val/0001.mp4")."""
    by_base: dict[str, str | None] = {}
    for n in names:
        base = n.rsplit("/", 1)[-1]
        by_base[base] = None if base in by_base else n  # None marks an ambiguous basename
    sheets = read_pair_workbook(xlsx_path, LayoutError)
    missing = [s for s in PAIR_SHEETS if s not in sheets]
    if missing:
        raise LayoutError(f"{xlsx_path}: missing sheet(s) {missing}; found {list(sheets)}")
    return {
        sheet: [
            (
                _resolve_pair_name(p.video1, names, by_base, where),
                _resolve_pair_name(p.video2, names, by_base, where),
                p.rank,
            )
            for where, p in rows
        ]
        for sheet, rows in sheets.items()
    }


def read_split(root: str | os.PathLike, split: str) -> SplitLayout | None:
    """One split of a KVQ folder, validated; None when no label file for it exists."""
    root = Path(root)
    csv_path = next((p for p in label_candidates(root, split) if p.is_file()), None)
    if csv_path is None:
        return None
    videos, labelled = read_labels(csv_path, root, split)
    pairs_path = next((p for p in pair_candidates(root, split) if p.is_file()), None)
    pairs = read_pairs(pairs_path, {v.name for v in videos}) if pairs_path else {}
    return SplitLayout(split, csv_path, labelled, videos, pairs_path, pairs)


def read_layout(root: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> dict[str, SplitLayout]:
    """All splits found under ``root``; a LayoutError when there is none (the message shows the layout)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory")
    found = {s: lay for s in splits if (lay := read_split(root, s)) is not None}
    if not found:
        tried = [str(p) for s in splits for p in label_candidates(root, s)]
        raise LayoutError(f"{root}: no label CSV for any of {list(splits)}; looked for {tried}")
    return found
