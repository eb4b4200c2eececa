"""Ensembles of prediction files: the NTIRE 2024 KVQ winners' move (several models or checkpoints, one score).

    kvq-jax ensemble a.csv b.csv c.csv --method zmean --out ensemble.csv
    kvq-jax ensemble a.csv b.csv --method nnls --fit a_val.csv b_val.csv --fit-truth val_truth.csv \\
        --truth test_truth.csv --pairs rank-pair-test.xlsx --bootstrap 1000 --submit submissions/ens

Members are ``filename,score`` CSVs (kvq_jax's prediction files, `kvq-jax score` challenge CSVs, any model's
output), aligned by video name: a video missing from a member, or listed twice, is an error naming it. Fusions:

* ``zmean``: the mean of each member's z-scores (population std), so members on different scales weigh alike;
* ``rank``: the mean of each member's ranks over the set, scaled to (0, 1];
* ``sigmoid``: Zoom-VQA's late fusion, ``100 / (1 + exp(−z))`` of each member's z-scores, averaged;
* ``mean``: the plain mean of the raw scores (checkpoints of one run share a scale);
* ``lstsq`` / ``nnls``: weights on the members' z-scores fitted on validation predictions against the validation
  truth (``--fit`` files in member order, ``--fit-truth``): ordinary least squares, or non-negative (SciPy's NNLS),
  both with an intercept; the weights are reported.

With ``--truth`` (and ``--pairs``) the challenge score of every member and of the ensemble is printed side by side,
and ``--bootstrap N`` adds a paired bootstrap of the ensemble's gain over its best member (same video resamples for
both), so a gain can be told from noise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.stats

from kvq_jax.eval.challenge import (
    TABLE_COLUMNS,
    Pairs,
    ScoreInputError,
    bootstrap_replicates,
    challenge_score,
    read_pairs,
    read_scores_csv,
    split_score,
)
from kvq_jax.eval.metrics import sigmoid_rescale
from kvq_jax.eval.submit import write_submission

METHODS = ("zmean", "rank", "sigmoid", "mean", "lstsq", "nnls")
FITTED = ("lstsq", "nnls")


def align(members: Mapping[str, Mapping[str, float]]) -> tuple[list[str], np.ndarray]:
    """(video names, scores (videos, members)): every member must score exactly the same videos."""
    if not members:
        raise ScoreInputError("no ensemble members")
    (first, ref), *rest = members.items()
    names = list(ref)
    for label, scores in rest:
        missing, extra = [n for n in names if n not in scores], [n for n in scores if n not in ref]
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"lacks {len(missing)} video(s) of {first}: {missing[:5]}")
            if extra:
                problems.append(f"has {len(extra)} video(s) that {first} lacks: {extra[:5]}")
            raise ScoreInputError(f"{label} " + "; ".join(problems))
    return names, np.array([[float(m[n]) for m in members.values()] for n in names], np.float64)


def zscores(x: np.ndarray) -> np.ndarray:
    """Column-wise z-scores with the population std (a constant column is an error: it carries no ranking)."""
    std = x.std(axis=0)
    if np.any(std == 0):
        raise ScoreInputError(f"member(s) {np.flatnonzero(std == 0).tolist()} give every video the same score")
    return (x - x.mean(axis=0)) / std


def fit_weights(x: np.ndarray, y: np.ndarray, nonnegative: bool) -> tuple[np.ndarray, float]:
    """(weights, intercept) of ``y ≈ z(x) @ w + b`` on validation data; ``nonnegative`` uses NNLS."""
    z = zscores(x)
    if nonnegative:
        w, _ = scipy.optimize.nnls(z, y - y.mean())  # z is centred, so the intercept is the mean of y
        return w, float(y.mean())
    design = np.column_stack([z, np.ones(len(y))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef[:-1], float(coef[-1])


def fuse(x: np.ndarray, method: str, weights: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """One score per video from the member scores ``x`` (videos, members)."""
    if method == "mean":
        return x.mean(axis=1)
    if method == "rank":
        return np.mean([scipy.stats.rankdata(col) / len(col) for col in x.T], axis=0)
    z = zscores(x)
    if method == "zmean":
        return z.mean(axis=1)
    if method == "sigmoid":
        return sigmoid_rescale(x).mean(axis=1)
    if method in FITTED:
        if weights is None:
            raise ValueError(f"method {method!r} needs weights fitted on validation predictions")
        w, b = weights
        return z @ w + b
    raise ValueError(f"unknown fusion {method!r}; choose one of {METHODS}")


def score_table(
    predictions: Mapping[str, Mapping[str, float]], truth: Mapping[str, float], pairs: Pairs
) -> dict[str, dict[str, float]]:
    """Challenge score (or, without both pair sheets, the correlations) of each prediction set, by label."""
    return {label: split_score(pred, truth, pairs) for label, pred in predictions.items()}


def format_table(table: Mapping[str, Mapping[str, float]]) -> str:
    width = max(len(k) for k in table)
    lines = [f"{'':<{width}}" + "".join(f"{title:>9}" for _, title in TABLE_COLUMNS)]
    lines += [f"{k:<{width}}" + "".join(f"{row[c]:>9.4f}" for c, _ in TABLE_COLUMNS) for k, row in table.items()]
    return "\n".join(lines)


def paired_gain(
    ensemble: Mapping[str, float],
    member: Mapping[str, float],
    truth: Mapping[str, float],
    pairs: Pairs,
    n_boot: int,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Bootstrap of ``final(ensemble) − final(member)`` over the same video resamples: interval and P(gain > 0)."""
    reps = bootstrap_replicates([ensemble, member], truth, pairs, n_boot, seed)
    diff = np.asarray(reps[0]["final"]) - np.asarray(reps[1]["final"])
    tail = 100 * (1 - level) / 2
    return {
        "gain": float(challenge_score(ensemble, truth, pairs).final - challenge_score(member, truth, pairs).final),
        "low": float(np.percentile(diff, tail)),
        "high": float(np.percentile(diff, 100 - tail)),
        "p_gain": float((diff > 0).mean()),
        "replicates": len(diff),
    }


def _members(paths: Sequence[str]) -> dict[str, dict[str, float]]:
    labels = [Path(p).name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in paths]
    return {label: read_scores_csv(p) for label, p in zip(labels, paths, strict=True)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="kvq-jax ensemble", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("members", nargs="+", help="prediction CSVs ('filename,score'), one per member")
    ap.add_argument("--method", choices=METHODS, default="zmean")
    ap.add_argument("--fit", nargs="+", metavar="VAL_CSV", help="validation predictions, in member order (lstsq/nnls)")
    ap.add_argument("--fit-truth", metavar="CSV", help="validation truth for --fit")
    ap.add_argument("--out", metavar="CSV", help="write the ensemble's filename,score here")
    ap.add_argument("--truth", metavar="CSV", help="score every member and the ensemble against this truth")
    ap.add_argument("--pairs", nargs="+", default=[], help="rank-pair workbook or CSVs for the challenge score")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N", help="paired bootstrap vs the best member")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--submit", metavar="DIR", help="also write prediction.csv and submission.zip into DIR")
    args = ap.parse_args(argv)
    if len(args.members) < 2:
        ap.error("an ensemble needs at least two members")
    if (args.method in FITTED) != bool(args.fit):
        ap.error("--fit (and --fit-truth) go with --method lstsq or nnls, and only with them")
    try:
        members = _members(args.members)
        names, x = align(members)
        weights = None
        if args.method in FITTED:
            if len(args.fit) != len(args.members) or not args.fit_truth:
                raise ScoreInputError("--fit needs one validation file per member and --fit-truth")
            val_names, val_x = align(_members(args.fit))
            val_truth = read_scores_csv(args.fit_truth)
            missing = [n for n in val_names if n not in val_truth]
            if missing:
                raise ScoreInputError(f"{args.fit_truth} lacks {len(missing)} validation video(s): {missing[:5]}")
            weights = fit_weights(val_x, np.array([val_truth[n] for n in val_names]), args.method == "nnls")
            report = dict(zip(members, weights[0].round(6).tolist(), strict=True))
            print(f"fitted weights ({args.method}, on {len(val_names)} videos): {report}", file=sys.stderr)
        fused = dict(zip(names, fuse(x, args.method, weights).tolist(), strict=True))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            lines = ["filename,score", *(f"{n},{s!r}" for n, s in fused.items())]
            Path(args.out).write_text("\n".join(lines) + "\n")
        if args.submit:
            write_submission(fused, args.submit)
        if args.truth:
            truth = read_scores_csv(args.truth)
            pairs = read_pairs(args.pairs) if args.pairs else Pairs((), ())
            table = score_table({**members, f"ensemble ({args.method})": fused}, truth, pairs)
            print(format_table(table))
            if args.bootstrap:
                key = "final" if math.isfinite(next(iter(table.values()))["final"]) else "srocc"
                best = max(members, key=lambda m: table[m][key])
                if key != "final":
                    raise ScoreInputError("--bootstrap needs both pair sheets (--pairs) for the challenge score")
                gain = paired_gain(fused, members[best], truth, pairs, args.bootstrap, args.seed)
                print(json.dumps({"best_member": best, **gain}))
    except ScoreInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
