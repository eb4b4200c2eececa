"""Readers for the KVQ challenge's file formats, shared by the data layout (``kvq_layout``) and the scorer.

One parser per format, so the dataset builder and the challenge scorer cannot drift apart:

* :func:`csv_rows`: the non-blank rows of a label / score CSV (UTF-8, optional BOM), with line numbers;
* :func:`parse_score`: one score cell, which must be a finite number;
* :func:`read_pair_workbook`: ``rank-pair-{split}.xlsx``, as the official ``metric_score.py`` of the
  challenge repository (github.com/lixinustc/KVQ-Challenge-CVPR-NTIRE2024) reads it: sheets ``source`` and
  ``nonsource``, first row a header, then ``video1, video2, rank`` positionally (rank 1: video1 is better).

Every error is a :class:`KvqFileError` naming the file and the line or row. Callers pass their own subclass
as ``error`` so that their users catch one type (``LayoutError`` for the builder, ``ScoreInputError`` for the
scorer). Only the standard library is imported here (openpyxl lazily), so ``kvq_jax.data`` stays light.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "PAIR_SHEETS",
    "KvqFileError",
    "Pair",
    "cell_text",
    "csv_rows",
    "looks_like_pair",
    "pair_from_cells",
    "parse_score",
    "read_pair_workbook",
]

PAIR_SHEETS = ("source", "nonsource")


class KvqFileError(ValueError):
    """A malformed KVQ file; the message names the file and, where there is one, the line or row."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One ranked pair; ``rank`` 1 means ``video1`` is the better video, 2 means ``video2`` is."""

    video1: str
    video2: str
    rank: int


def csv_rows(raw: bytes, path: Path, error: type[KvqFileError] = KvqFileError) -> list[tuple[int, list[str]]]:
    """Non-blank rows of a CSV given as bytes, cells stripped, with the 1-based line number where each ends."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a UTF-8 text file ({e})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    return [(reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)]


def parse_score(text: str, where: str, error: type[KvqFileError] = KvqFileError, name: str | None = None) -> float:
    """A score cell as a finite float; ``where`` ("file:line") and ``name`` (the video) go into the message."""
    t = text.strip()
    of = f" for {name!r}" if name is not None else ""
    if not t:
        raise error(f"{where}: empty score{of}")
    try:
        value = float(t)
    except ValueError:
        raise error(f"{where}: score {t!r}{of} is not a number") from None
    if not math.isfinite(value):
        raise error(f"{where}: score{of} is {t!r}, not a finite number")
    return value


def cell_text(value: object) -> str:
    """Spreadsheet cell -> text; integral floats lose their ``.0`` so numeric names and ranks match CSV text."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "" if value is None else str(value).strip()


def looks_like_pair(row: Sequence[object]) -> bool:
    """Whether a row reads as data (a rank 1/2 in the third column) rather than as a header."""
    return len(row) >= 3 and cell_text(row[2]) in ("1", "2")


def pair_from_cells(row: Sequence[object], where: str, error: type[KvqFileError] = KvqFileError) -> Pair:
    """``video1, video2, rank`` from the first three cells; names non-empty, rank exactly 1 or 2."""
    if len(row) < 3:
        raise error(f"{where}: expected video1, video2, rank; got {list(row)}")
    v1, v2, rank = (cell_text(c) for c in row[:3])
    if not (v1 and v2):
        raise error(f"{where}: empty video name in {list(row[:3])}")
    if rank not in ("1", "2"):
        raise error(f"{where}: rank label {row[2]!r} is not 1 (video1 better) or 2 (video2 better)")
    return Pair(v1, v2, int(rank))


def read_pair_workbook(path: Path, error: type[KvqFileError] = KvqFileError) -> dict[str, list[tuple[str, Pair]]]:
    """The ``source``/``nonsource`` sheets present in a rank-pair workbook: ``{sheet: [(where, pair)]}``.

    ``where`` ("path[sheet] row r") lets callers name the row when they reject a pair. As in the official
    scorer (pandas), blank rows are skipped, the first remaining row is the header (a warning says so when it
    looks like a pair) and other sheets are ignored; a workbook with neither sheet is an error.
    """
    import openpyxl  # lazily: only pair workbooks need it

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises several unrelated types for non-workbooks
        raise error(f"{path}: cannot read as an .xlsx workbook: {e}") from e
    try:
        found: dict[str, list[tuple[str, Pair]]] = {}
        for sheet in PAIR_SHEETS:
            if sheet not in wb.sheetnames:
                continue
            rows = [
                (r, row)
                for r, row in enumerate(wb[sheet].iter_rows(values_only=True), start=1)
                if any(cell_text(c) for c in row)
            ]
            if rows and looks_like_pair(rows[0][1]):
                warnings.warn(
                    f"{path}[{sheet}] row {rows[0][0]} looks like a pair, but the first row is a header "
                    "(as the official scorer reads it) and is skipped",
                    stacklevel=3,
                )
            pairs = []
            for r, row in rows[1:]:
                where = f"{path}[{sheet}] row {r}"
                pairs.append((where, pair_from_cells(row, where, error)))
            found[sheet] = pairs
        if not found:
            raise error(f"{path}: no 'source' or 'nonsource' sheet (sheets: {wb.sheetnames})")
        return found
    finally:
        wb.close()
