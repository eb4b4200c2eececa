"""Score a KVQ prediction file the way the NTIRE 2024 challenge does.

    python -m kvq_jax.eval.score --pred prediction.csv --truth truth.csv --pairs rank-pair-val.xlsx
    python -m kvq_jax.eval.score --pred submission.zip --truth labels.csv \\
        --pairs rank_source.csv --pairs rank_nonsource.csv --bootstrap 1000 --seed 0 --logistic

Prints one JSON line: ``final, srocc, plcc, rank1, rank2, krocc, rmse, n`` (``rmse`` after rescaling the
predictions to the label mean/std; ``final`` uses raw predictions, as the official scorer), plus
``ci95`` and ``bootstrap`` with ``--bootstrap N``, and ``plcc_logistic``, ``rmse_logistic`` with
``--logistic``: PLCC and RMSE after fitting the VQEG 4-parameter logistic from predictions to MOS, as the
COVER and SimpleVQA papers report them.  They are NOT part of ``final`` (the challenge uses the raw PLCC).
Bad input exits with status 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from kvq_jax.eval.challenge import (
    ScoreInputError,
    bootstrap_ci,
    challenge_score,
    logistic_scores,
    read_pairs,
    read_scores_csv,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m kvq_jax.eval.score",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument(
        "--pred",
        required=True,
        help="predictions: CSV 'filename,score' (header), headerless 'name,score' lines, "
        "or a submission .zip holding prediction.csv",
    )
    ap.add_argument("--truth", required=True, help="labels CSV with 'filename' and 'score' columns")
    ap.add_argument(
        "--pairs",
        required=True,
        action="extend",
        nargs="+",
        help="rank-pair-val.xlsx (sheets source/nonsource) or CSVs 'video1,video2,rank' named *source*/"
        "*nonsource*, prefixed 'source='/'nonsource=', or with a 'sheet' column; repeatable",
    )
    ap.add_argument(
        "--basename",
        action="store_true",
        help="match videos by file name only (strip directories in all files); default: exact names",
    )
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N", help="N video-resampling replicates")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument(
        "--logistic",
        action="store_true",
        help="also report plcc_logistic and rmse_logistic: after the VQEG 4-parameter logistic fit "
        "(COVER/SimpleVQA papers); not part of 'final'",
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be >= 0, got {args.bootstrap}")
    try:
        pred = read_scores_csv(args.pred, basename=args.basename)
        truth = read_scores_csv(args.truth, basename=args.basename)
        pairs = read_pairs(args.pairs, basename=args.basename)
        result: dict = challenge_score(pred, truth, pairs).to_dict()
        if args.logistic:
            result |= logistic_scores(pred, truth)
        if args.bootstrap > 0:
            ci, used = bootstrap_ci(pred, truth, pairs, n_boot=args.bootstrap, seed=args.seed)
            result["ci95"] = {k: list(v) for k, v in ci.items()}
            result["bootstrap"] = {"replicates": args.bootstrap, "used": used, "seed": args.seed}
    except ScoreInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    extra = len(set(pred) - set(truth))
    if extra:
        print(f"note: ignored {extra} predictions for videos not in {args.truth}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
