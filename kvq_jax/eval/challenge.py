"""NTIRE 2024 KVQ challenge score, computed as the official ``metric_score.py`` does.

Official semantics (from the challenge repository, github.com/lixinustc/KVQ-Challenge-CVPR-NTIRE2024):

* SROCC and PLCC are SciPy's, on the *raw* predicted scores ordered like the truth file (no rescale, no fit).
* Pairs come from ``rank-pair-val.xlsx``: sheet ``source`` (homologous pairs, "Rank1") and sheet
  ``nonsource`` ("Rank2"); each row is ``video1, video2, rank`` read positionally, after a header row.
  The predicted rank is 1 when ``score1 >= score2`` (a tie counts as "video1 better") and 2 otherwise;
  accuracy is the fraction of rows whose predicted rank equals the label.
* ``final = 0.45 * SROCC + 0.45 * PLCC + 0.05 * Rank2(nonsource) + 0.05 * Rank1(source)``.

Deliberate differences, all of them errors where the official script would crash or silently mis-score
(:class:`ScoreInputError` names the offending file, row and video):

* a truth video without a prediction (official: ``None`` in the score list, a crash in SciPy),
* duplicate names in any scores file (official: last prediction silently wins; truth rows counted twice),
* NaN, infinite or non-numeric scores, empty files, a missing ``source``/``nonsource`` sheet,
* a pair naming a video that is not in the truth file (official: ``None >= float`` crash, or a pair that
  silently scores against a different split), a rank label other than 1 or 2,
* constant predictions or labels (SROCC/PLCC undefined; official: NaN final).

Names are matched exactly as written, after stripping surrounding whitespace.  With ``basename=True`` the
readers reduce every name to its last path component (``train/0001_0.mp4`` -> ``0001_0.mp4``) and refuse
two names that collapse onto the same basename.  Predictions for videos absent from the truth file are
ignored, as the official scorer does.  The KVQ file formats are parsed by :mod:`kvq_jax.data.kvq_files`,
shared with the dataset builder.

:func:`logistic_scores` adds PLCC and RMSE after the VQEG 4-parameter logistic fit (as the COVER and
SimpleVQA papers report them); they are not part of the challenge score.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.stats
from tqdm import tqdm

from kvq_jax.data.kvq_files import (
    PAIR_SHEETS,
    KvqFileError,
    Pair,
    csv_rows,
    looks_like_pair,
    pair_from_cells,
    parse_score,
    read_pair_workbook,
)
from kvq_jax.eval import metrics

__all__ = [
    "PAIR_KINDS",
    "TABLE_COLUMNS",
    "ChallengeScore",
    "Pair",
    "Pairs",
    "ScoreInputError",
    "bootstrap_ci",
    "bootstrap_replicates",
    "challenge_score",
    "logistic_scores",
    "pair_accuracy",
    "read_pairs",
    "read_scores_csv",
    "read_video_names",
    "split_score",
]

PAIR_KINDS = PAIR_SHEETS
PREDICTION_MEMBER = "prediction.csv"  # the file name Codalab's scoring program opens inside a submission zip
_MAX_LISTED = 10

PathLike = str | os.PathLike


class ScoreInputError(KvqFileError):
    """Bad scorer input (missing/duplicate/unknown video, non-numeric score, malformed file)."""


@dataclasses.dataclass(frozen=True)
class Pairs:
    """The two pair sets of the challenge: ``source`` (Rank1) and ``nonsource`` (Rank2)."""

    source: tuple[Pair, ...]
    nonsource: tuple[Pair, ...]


@dataclasses.dataclass(frozen=True)
class ChallengeScore:
    """The challenge score and its parts; ``rmse`` is after the DOVER linear rescale (not in ``final``)."""

    final: float
    srocc: float
    plcc: float
    rank1: float
    rank2: float
    krocc: float
    rmse: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _basename(name: str) -> str:
    return posixpath.basename(name.replace("\\", "/"))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank rows of a CSV, or of ``prediction.csv`` at the root of a submission zip (what Codalab unpacks)."""
    if not path.is_file():
        raise ScoreInputError(f"{path}: no such file")
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = zf.namelist()
                if PREDICTION_MEMBER not in members:
                    raise ScoreInputError(f"{path}: no {PREDICTION_MEMBER!r} at the zip root ({_listing(members)})")
                raw = zf.read(PREDICTION_MEMBER)
        except zipfile.BadZipFile as e:
            raise ScoreInputError(f"{path}: not a valid zip file ({e})") from None
    else:
        raw = path.read_bytes()
    return csv_rows(raw, path, ScoreInputError)


def _normalise_names(
    items: list[tuple[str, str, float | None]], basename: bool, path: Path
) -> list[tuple[str, str, float | None]]:
    """``(name, where, value)`` -> ``(key, where, value)``, rejecting duplicates (after ``basename``)."""
    seen: dict[str, tuple[str, str]] = {}
    dups: list[str] = []
    out = []
    for name, where, value in items:
        key = _basename(name) if basename else name
        if key in seen:
            first_name, first_where = seen[key]
            dups.append(f"{name!r} ({where}; first as {first_name!r} at {first_where})")
        else:
            seen[key] = (name, where)
        out.append((key, where, value))
    if dups:
        raise ScoreInputError(f"{path}: duplicate video names: {'; '.join(dups[:_MAX_LISTED])}")
    return out


def _read_named_rows(path: Path, need_score: bool, basename: bool) -> list[tuple[str, str, float | None]]:
    """``(name, where, score)`` rows of a ``filename[,score]`` CSV, duplicates rejected (after ``basename``).

    A header is recognised when the first row is not ``name,number``; it must then name a ``filename`` column
    (and ``score`` if ``need_score``), in any order, extra columns allowed, case and spaces ignored.
    """
    rows = _csv_rows(path)
    if not rows:
        raise ScoreInputError(f"{path}: empty file, expected 'filename,score' rows")
    first_line, first = rows[0]
    needed = ["filename", "score"] if need_score else ["filename"]
    if len(first) >= 2 and _is_number(first[1]):
        name_col, score_col, body = 0, 1, rows
        wrong = [(n, r) for n, r in rows if len(r) != 2]
        if wrong:
            lineno, row = wrong[0]
            raise ScoreInputError(f"{path}:{lineno}: expected 2 fields 'name,score', got {len(row)}: {row}")
    else:
        header = [cell.lower() for cell in first]
        if not set(needed) <= set(header):
            raise ScoreInputError(
                f"{path}:{first_line}: header {first} lacks the column(s) {needed} "
                "(or give headerless 'name,score' lines)"
            )
        name_col = header.index("filename")
        score_col = header.index("score") if "score" in header else None
        body = rows[1:]
        if not body:
            raise ScoreInputError(f"{path}: header only, no rows")
    items = []
    for lineno, row in body:
        where = f"{path}:{lineno}"
        if len(row) <= max(name_col, score_col or 0):
            raise ScoreInputError(f"{where}: row {row} is missing the {' or '.join(needed)} column")
        name = row[name_col]
        if not name:
            raise ScoreInputError(f"{where}: empty video name")
        score = parse_score(row[score_col], where, ScoreInputError, name) if need_score else None
        items.append((name, where, score))
    return _normalise_names(items, basename, path)


def read_scores_csv(path: PathLike, *, basename: bool = False) -> dict[str, float]:
    """Read ``filename,score`` rows (with header) or headerless ``name,score`` lines (KVQ ``output.txt``).

    A ``.zip`` path is read as a submission: its root ``prediction.csv``.  Names keep file order.
    """
    return {key: score for key, _, score in _read_named_rows(Path(path), True, basename)}


def read_video_names(path: PathLike, *, basename: bool = False) -> list[str]:
    """The ``filename`` column of a CSV (a score column is optional), e.g. the list of test videos."""
    return [key for key, _, _ in _read_named_rows(Path(path), False, basename)]


def _kind_from_name(path: Path) -> str | None:
    stem = path.stem.lower()
    return "nonsource" if "nonsource" in stem else "source" if "source" in stem else None


def _read_csv_pairs(path: Path, kind: str | None) -> dict[str, list[Pair]]:
    """A pairs CSV: header row, then ``video1,video2,rank`` (by name if the header has them, else columns
    0-2), with an optional ``sheet`` column (``source``/``nonsource``) that overrides the file's kind."""
    rows = _csv_rows(path)
    if not rows:
        raise ScoreInputError(f"{path}: empty pairs file, expected a header and 'video1,video2,rank' rows")
    first_line, first = rows[0]
    if looks_like_pair(first):
        raise ScoreInputError(
            f"{path}:{first_line}: first row {first} looks like data; add the header 'video1,video2,rank'"
        )
    header = [cell.lower() for cell in first]
    named = ("video1", "video2", "rank")
    cols = [header.index(c) for c in named] if set(named) <= set(header) else [0, 1, 2]
    sheet_col = header.index("sheet") if "sheet" in header else None
    if sheet_col is None and kind is None:
        raise ScoreInputError(
            f"{path}: cannot tell source from nonsource pairs: add a 'sheet' column, name the file "
            "*source*/*nonsource*, or pass it as 'source=PATH' / 'nonsource=PATH'"
        )
    found: dict[str, list[Pair]] = {}
    for lineno, row in rows[1:]:
        where = f"{path}:{lineno}"
        row_kind = kind
        if sheet_col is not None:
            row_kind = row[sheet_col].lower() if sheet_col < len(row) else ""
            if row_kind not in PAIR_KINDS:
                raise ScoreInputError(f"{where}: sheet {row_kind!r} is not 'source' or 'nonsource'")
        picked = [row[c] if c < len(row) else "" for c in cols]
        found.setdefault(row_kind, []).append(pair_from_cells(picked, where, ScoreInputError))
    return found


def read_pairs(paths: PathLike | Sequence[PathLike], *, basename: bool = False) -> Pairs:
    """Read the challenge pairs from the official ``.xlsx`` or from CSVs, merged over all ``paths``.

    * ``*.xlsx``: sheets ``source`` and ``nonsource``, first row a header, columns 0-2 positional.
    * any other file is a CSV with a header row: ``video1,video2,rank`` (by name when the header has them,
      else columns 0-2) and an optional ``sheet`` column (``source``/``nonsource``) per row.  Without it the
      kind comes from a ``source=``/``nonsource=`` prefix on the path or else from the file name
      (``nonsource`` is looked for first, so ``rank_nonsource.csv`` and ``rank_source.csv`` both work).

    Both kinds must end up non-empty (the final score needs both accuracies).
    """
    specs = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not specs:
        raise ScoreInputError("no pairs file given")
    merged: dict[str, list[Pair]] = {k: [] for k in PAIR_KINDS}
    for spec in specs:
        text = os.fspath(spec)
        prefix, sep, rest = text.partition("=")
        kind = prefix.lower() if sep and prefix.lower() in PAIR_KINDS else None
        path = Path(rest if kind else text)
        if not path.is_file():
            raise ScoreInputError(f"{path}: no such pairs file")
        if path.suffix.lower() == ".xlsx":  # other sheets are ignored, as officially
            found = {k: [p for _, p in rows] for k, rows in read_pair_workbook(path, ScoreInputError).items()}
        else:
            found = _read_csv_pairs(path, kind or _kind_from_name(path))
        for k, pairs in found.items():
            if basename:
                pairs = [Pair(_basename(p.video1), _basename(p.video2), p.rank) for p in pairs]
            merged[k].extend(pairs)
    empty = [k for k in PAIR_KINDS if not merged[k]]
    if empty:
        raise ScoreInputError(f"no {' or '.join(empty)} pairs in {[os.fspath(s) for s in specs]}")
    return Pairs(source=tuple(merged["source"]), nonsource=tuple(merged["nonsource"]))


def pair_accuracy(scores: Mapping[str, float], pairs: Sequence[Pair]) -> float:
    """Fraction of pairs whose predicted rank (1 iff ``score1 >= score2``) equals the label."""
    if not pairs:
        raise ScoreInputError("no pairs to score")
    unknown = list(dict.fromkeys(v for p in pairs for v in (p.video1, p.video2) if v not in scores))
    if unknown:
        raise ScoreInputError(f"pairs name {len(unknown)} videos without a score: {_listing(unknown)}")
    return sum((1 if scores[p.video1] >= scores[p.video2] else 2) == p.rank for p in pairs) / len(pairs)


def _check_finite(scores: Mapping[str, float], what: str) -> None:
    bad = [k for k, v in scores.items() if not (isinstance(v, int | float | np.number) and math.isfinite(v))]
    if bad:
        raise ScoreInputError(f"{what} has NaN, infinite or non-numeric scores for {_listing(bad)}")


def _missing_hint(missing: list[str], available: Iterable[str]) -> str:
    """Point at ``basename`` matching when the names differ only by a directory prefix."""
    base = {_basename(a) for a in available}
    if all(_basename(m) in base for m in missing):
        return " (the names differ only by a directory prefix; use basename matching: --basename)"
    return ""


def _validate_scores(pred: Mapping[str, float], truth: Mapping[str, float]) -> None:
    """Scores that SROCC/PLCC are defined on: finite, a prediction per truth video, neither side constant."""
    if not truth:
        raise ScoreInputError("truth is empty")
    if not pred:
        raise ScoreInputError("prediction is empty")
    _check_finite(truth, "truth")
    _check_finite(pred, "prediction")
    missing = [k for k in truth if k not in pred]
    if missing:
        raise ScoreInputError(
            f"{len(missing)} of {len(truth)} truth videos have no prediction: {_listing(missing)}"
            + _missing_hint(missing, pred)
        )
    if len(truth) < 2:
        raise ScoreInputError(f"need at least 2 truth videos, got {len(truth)}")
    for what, values in (("predictions", [pred[k] for k in truth]), ("truth scores", list(truth.values()))):
        if min(values) == max(values):
            raise ScoreInputError(f"all {what} equal {values[0]}; SROCC/PLCC are undefined")


def _validate(pred: Mapping[str, float], truth: Mapping[str, float], pairs: Pairs) -> None:
    _validate_scores(pred, truth)
    for kind in PAIR_KINDS:
        sheet = getattr(pairs, kind)
        if not sheet:
            raise ScoreInputError(f"no {kind} pairs")
        unknown = list(dict.fromkeys(v for p in sheet for v in (p.video1, p.video2) if v not in truth))
        if unknown:
            raise ScoreInputError(
                f"{kind} pairs name {len(unknown)} videos that are not in the truth file: {_listing(unknown)}"
                + _missing_hint(unknown, truth)
            )


def challenge_score(pred: Mapping[str, float], truth: Mapping[str, float], pairs: Pairs) -> ChallengeScore:
    """The official KVQ challenge score (plus KROCC and rescaled RMSE) after strict input checks."""
    _validate(pred, truth, pairs)
    y = np.array(list(truth.values()), dtype=np.float64)
    p = np.array([pred[k] for k in truth], dtype=np.float64)
    srocc = float(scipy.stats.spearmanr(y, p)[0])
    plcc = float(scipy.stats.pearsonr(y, p)[0])
    rank1 = pair_accuracy(pred, pairs.source)
    rank2 = pair_accuracy(pred, pairs.nonsource)
    return ChallengeScore(
        final=0.45 * srocc + 0.45 * plcc + 0.05 * rank2 + 0.05 * rank1,
        srocc=srocc,
        plcc=plcc,
        rank1=rank1,
        rank2=rank2,
        krocc=metrics.krocc(p, y),
        rmse=metrics.rmse(p, y, mapping="linear"),
        n=len(truth),
    )


def logistic_scores(pred: Mapping[str, float], truth: Mapping[str, float]) -> dict[str, float]:
    """``plcc_logistic`` and ``rmse_logistic``: PLCC and RMSE after fitting the VQEG 4-parameter logistic
    from predictions to MOS, the numbers COVER and SimpleVQA report.  Not part of the challenge's ``final``,
    which uses the raw PLCC."""
    _validate_scores(pred, truth)
    y = np.array(list(truth.values()), dtype=np.float64)
    p = np.array([pred[k] for k in truth], dtype=np.float64)
    try:
        mapped = metrics.map_predictions(p, y, "logistic")
    except ValueError as e:  # the fit did not converge
        raise ScoreInputError(str(e)) from e
    return {
        "plcc_logistic": float(scipy.stats.pearsonr(mapped, y)[0]),
        "rmse_logistic": float(np.sqrt(np.mean((mapped - y) ** 2))),
    }


def split_score(pred: Mapping[str, float], truth: Mapping[str, float], pairs: Pairs) -> dict[str, float]:
    """The challenge score of the truth videos' predictions where both pair sheets exist; elsewhere (a train split,
    a dataset without pairs) the correlations, ``final`` NaN and the rank accuracy of the sheet there is, if any.
    Beside them ``plcc_logistic`` and ``rmse_logistic`` (NaN where the logistic fit does not converge)."""
    names = [n for n in truth if n in pred]
    pred, truth = {n: pred[n] for n in names}, {n: truth[n] for n in names}
    if pairs.source and pairs.nonsource:
        result = challenge_score(pred, truth, pairs).to_dict()
    else:
        p, y = np.array(list(pred.values())), np.array(list(truth.values()))
        result = {**metrics.correlations(p, y), "n": len(names), "final": math.nan}
        result["rank1"] = pair_accuracy(pred, pairs.source) if pairs.source else math.nan
        result["rank2"] = pair_accuracy(pred, pairs.nonsource) if pairs.nonsource else math.nan
    try:
        result |= logistic_scores(pred, truth)
    except ScoreInputError:
        result |= {"plcc_logistic": math.nan, "rmse_logistic": math.nan}
    return result


# (key, column title) of the results tables: the challenge's parts, then the logistic-fitted PLCC papers report.
TABLE_COLUMNS = (
    ("final", "final"),
    ("srocc", "srocc"),
    ("plcc", "plcc"),
    ("plcc_logistic", "plcc_log"),
    ("rank1", "rank1"),
    ("rank2", "rank2"),
    ("krocc", "krocc"),
)


def bootstrap_replicates(
    preds: Sequence[Mapping[str, float]], truth: Mapping[str, float], pairs: Pairs, n_boot: int, seed: int = 0
) -> list[dict[str, list[float]]]:
    """Per prediction set, every :class:`ChallengeScore` field over ``n_boot`` video resamples, the *same*
    resamples for every set (so differences between sets are paired).

    Each replicate draws ``n`` truth videos with replacement; correlations use the drawn multiset.  A pair
    enters a replicate once per combination of drawn copies of its two videos (weight ``c1 * c2``), the
    usual bootstrap of a pairwise statistic: its expected weight is ~1, and pairs stay tied to the videos
    whose sampling variability the interval describes.  Replicates where a part is undefined for any set
    (constant draws, a sheet with no drawn pair) are dropped for all.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    for pred in preds:
        _validate(pred, truth, pairs)
    names = list(truth)
    index = {k: i for i, k in enumerate(names)}
    y = np.array([truth[k] for k in names], dtype=np.float64)
    ps = [np.array([pred[k] for k in names], dtype=np.float64) for pred in preds]
    sheets = []
    for pred in preds:
        per_kind = {}
        for kind in PAIR_KINDS:
            sheet = getattr(pairs, kind)
            i1 = np.array([index[q.video1] for q in sheet])
            i2 = np.array([index[q.video2] for q in sheet])
            correct = np.array([(1 if pred[q.video1] >= pred[q.video2] else 2) == q.rank for q in sheet], float)
            per_kind[kind] = (i1, i2, correct)
        sheets.append(per_kind)
    rng = np.random.default_rng(seed)
    keys = [f.name for f in dataclasses.fields(ChallengeScore) if f.name != "n"]
    draws: list[dict[str, list[float]]] = [{k: [] for k in keys} for _ in preds]
    for _ in tqdm(range(n_boot), desc="bootstrap", disable=None, leave=False):
        idx = rng.integers(0, len(names), size=len(names))
        yb = y[idx]
        counts = np.bincount(idx, minlength=len(names)).astype(float)
        reps = []
        for p, per_kind in zip(ps, sheets, strict=True):
            pb = p[idx]
            if np.ptp(yb) == 0 or np.ptp(pb) == 0:
                break
            acc = {}
            for kind, (i1, i2, correct) in per_kind.items():
                w = counts[i1] * counts[i2]
                acc[kind] = float(w @ correct / w.sum()) if w.sum() > 0 else math.nan
            if math.isnan(acc["source"]) or math.isnan(acc["nonsource"]):
                break
            srocc = float(scipy.stats.spearmanr(yb, pb)[0])
            plcc = float(scipy.stats.pearsonr(yb, pb)[0])
            reps.append(
                {
                    "final": 0.45 * srocc + 0.45 * plcc + 0.05 * acc["nonsource"] + 0.05 * acc["source"],
                    "srocc": srocc,
                    "plcc": plcc,
                    "rank1": acc["source"],
                    "rank2": acc["nonsource"],
                    "krocc": metrics.krocc(pb, yb),
                    "rmse": metrics.rmse(pb, yb, mapping="linear"),
                }
            )
        if len(reps) < len(preds):
            continue
        for out, rep in zip(draws, reps, strict=True):
            for k in keys:
                out[k].append(rep[k])
    if not draws[0]["final"]:
        raise ScoreInputError(f"all {n_boot} bootstrap replicates were degenerate; too few videos or pairs")
    return draws


def bootstrap_ci(
    pred: Mapping[str, float],
    truth: Mapping[str, float],
    pairs: Pairs,
    n_boot: int,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[dict[str, tuple[float, float]], int]:
    """Percentile bootstrap intervals for every :class:`ChallengeScore` field, resampling *videos* (see
    :func:`bootstrap_replicates`). Returns the intervals and the number of replicates used."""
    (draws,) = bootstrap_replicates([pred], truth, pairs, n_boot, seed)
    tail = 100 * (1 - level) / 2
    intervals = {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in draws.items()}
    return intervals, len(draws["final"])
