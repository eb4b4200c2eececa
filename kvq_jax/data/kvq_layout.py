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

Label files may also be the KVQ repository's headerless ``filename,cls_label,dis_label,score`` lists. A
filename is resolved against ROOT first, then against ``ROOT/<split>/``. Optional columns: ``source_id``
(overrides the id derived from the name). A CSV without a score column makes the split *unlabelled*
(challenge test phase): MOS becomes NaN. Everything else that is wrong with a row is a
:class:`LayoutError` naming the file and line: a missing video, an empty, non-numeric or NaN score, a
duplicate name.

Source id: KVQ keeps the 7 versions of a source under consecutive numbers, so a numeric stem ``n`` gives
``(n - 1) // 7`` (e.g. ``0239`` ... ``0245`` are one source); a stem ``<sid>_<k>`` gives ``sid``; otherwise
the id is -1 (unknown) unless a ``source_id`` column is present.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")
VIDEOS_PER_SOURCE = 7
PAIR_SHEETS = ("source", "nonsource")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".yuv", ".m4v")


class LayoutError(ValueError):
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


def _parse_score(text: str, where: str) -> float:
    t = text.strip()
    if not t:
        raise LayoutError(f"{where}: empty score")
    try:
        value = float(t)
    except ValueError:
        raise LayoutError(f"{where}: score {t!r} is not a number") from None
    if math.isnan(value):
        raise LayoutError(f"{where}: score is NaN")
    if math.isinf(value):
        raise LayoutError(f"{where}: score is infinite")
    return value


def _read_rows(csv_path: Path) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header or None, [(line number, cells)]); blank lines are skipped, a UTF-8 BOM is tolerated."""
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        rows = [(i, [c.strip() for c in r]) for i, r in enumerate(csv.reader(f), start=1) if any(c.strip() for c in r)]
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
    else:  # headerless: "filename,score" or the KVQ repository's "filename,cls_label,dis_label,score"
        width = len(rows[0][1])
        if width not in (2, 4):
            raise LayoutError(
                f"{csv_path}:{rows[0][0]}: no header and {width} columns; expected a 'filename,score' header "
                "or headerless 'filename,score' / 'filename,cls_label,dis_label,score' rows"
            )
        name_col, score_col, sid_col = 0, width - 1, None
    entries: list[VideoEntry] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        where = f"{csv_path}:{line}"
        name = cells[name_col] if cells else ""
        if not name:
            raise LayoutError(f"{where}: empty filename")
        need = max(c for c in (name_col, score_col, sid_col) if c is not None)
        if len(cells) <= need:
            raise LayoutError(f"{where}: expected at least {need + 1} columns, got {len(cells)}: {cells}")
        if name in seen:
            raise LayoutError(f"{where}: duplicate filename {name!r} (first on line {seen[name]})")
        seen[name] = line
        mos = _parse_score(cells[score_col], where) if score_col is not None else math.nan
        sid = source_id_from_name(name)
        if sid_col is not None:
            try:
                sid = int(cells[sid_col])
            except ValueError:
                raise LayoutError(f"{where}: source_id {cells[sid_col]!r} is not an integer") from None
        tried = [root / name, root / split / name]
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise LayoutError(f"{where}: video {name!r} not found (looked for {', '.join(map(str, tried))})")
        entries.append(VideoEntry(name, path, mos, -1 if sid is None else sid, line, csv_path))
    if not entries:
        raise LayoutError(f"{csv_path}: no videos listed")
    return entries, score_col is not None


def _resolve_pair_name(value: object, names: set[str], by_base: dict[str, str | None], where: str) -> str:
    """A pair cell -> the label file's name for it (exact, else by unique basename)."""
    v = str(value).strip() if value is not None else ""
    if v in names:
        return v
    match = by_base.get(v.rsplit("/", 1)[-1])
    if match is None:
        raise LayoutError(f"{where}: video {v!r} is not in the split's label file")
    return match


def read_pairs(xlsx_path: Path, names: set[str]) -> dict[str, list[tuple[str, str, int]]]:
    """The rank-pair sheets, checked: every pair names two listed videos and has rank 1 or 2.

    A pair cell that is not a listed name but whose basename matches exactly one listed name is mapped
    to it (a workbook may write "0001.mp4" where the CSV says "val/0001.mp4")."""
    import openpyxl

    by_base: dict[str, str | None] = {}
    for n in names:
        base = n.rsplit("/", 1)[-1]
        by_base[base] = None if base in by_base else n  # None marks an ambiguous basename
    try:
        wb = openpyxl.load_workbook(xlsx_path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises several types for non-xlsx input
        raise LayoutError(f"{xlsx_path}: cannot read as an .xlsx workbook: {e}") from e
    try:
        missing = [s for s in PAIR_SHEETS if s not in wb.sheetnames]
        if missing:
            raise LayoutError(f"{xlsx_path}: missing sheet(s) {missing}; found {wb.sheetnames}")
        out: dict[str, list[tuple[str, str, int]]] = {}
        for sheet in PAIR_SHEETS:
            pairs = []
            for r, row in enumerate(wb[sheet].iter_rows(values_only=True), start=1):
                if r == 1 or row is None or all(v is None for v in row[:3]):
                    continue  # header row, blank rows
                where = f"{xlsx_path}[{sheet}]:{r}"
                if len(row) < 3:
                    raise LayoutError(f"{where}: expected video1, video2, rank; got {row}")
                v1, v2 = (_resolve_pair_name(row[i], names, by_base, where) for i in (0, 1))
                try:
                    rank = int(float(row[2]))
                except (TypeError, ValueError):
                    rank = 0
                if rank not in (1, 2):
                    raise LayoutError(f"{where}: rank must be 1 or 2, got {row[2]!r}")
                pairs.append((v1, v2, rank))
            out[sheet] = pairs
        return out
    finally:
        wb.close()


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
