"""Write a KVQ challenge submission: ``prediction.csv`` and a zip with it at the root (Codalab's format).

    python -m kvq_jax.eval.submit --pred preds.csv --out submissions/run1 [--truth labels.csv]

The CSV is ``filename,score`` with a header (the two columns the official scorer reads), sorted by name so
the same predictions always give byte-identical files; scores are written with ``repr`` (shortest text
that reads back to the same float).  The zip members carry a fixed timestamp, so it is reproducible too.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvq_jax.eval.challenge import PREDICTION_MEMBER, ScoreInputError, read_scores_csv, read_video_names

__all__ = ["ZIP_NAME", "write_submission"]

ZIP_NAME = "submission.zip"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # earliest zip timestamp; fixed for reproducible archives


def _csv_text(predictions: Mapping[str, float]) -> str:
    if not predictions:
        raise ScoreInputError("no predictions to write")
    bad = [k for k in predictions if not isinstance(k, str) or not k.strip() or "\n" in k or "\r" in k]
    if bad:
        raise ScoreInputError(f"invalid video names (empty or with line breaks): {bad[:10]}")
    nonfinite = [k for k, v in predictions.items() if not math.isfinite(float(v))]
    if nonfinite:
        raise ScoreInputError(f"NaN or infinite predictions for {nonfinite[:10]}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "score"])
    for name in sorted(predictions):
        writer.writerow([name, repr(float(predictions[name]))])
    return buf.getvalue()


def write_submission(predictions: Mapping[str, float], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/prediction.csv`` and ``out_dir/submission.zip`` (holding ``prediction.csv``)."""
    text = _csv_text(predictions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / PREDICTION_MEMBER
    csv_path.write_text(text, encoding="utf-8", newline="")
    zip_path = out_dir / ZIP_NAME
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(PREDICTION_MEMBER, date_time=_ZIP_EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        zf.writestr(info, text)
    return csv_path, zip_path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvq_jax.eval.submit", description=__doc__)
    ap.add_argument("--pred", required=True, help="predictions CSV ('filename,score' or headerless 'name,score')")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--truth", help="CSV with a 'filename' column: every video in it must have a prediction")
    ap.add_argument("--basename", action="store_true", help="reduce names to their file name (strip dirs)")
    args = ap.parse_args(argv)
    try:
        predictions = read_scores_csv(args.pred, basename=args.basename)
        if args.truth:
            truth = read_video_names(args.truth, basename=args.basename)
            missing = [k for k in truth if k not in predictions]
            if missing:
                shown = ", ".join(repr(k) for k in missing[:10])
                raise ScoreInputError(
                    f"{len(missing)} of {len(truth)} videos in {args.truth} lack a prediction: {shown}"
                )
            extra = len(set(predictions).difference(truth))
            if extra:
                print(f"note: {extra} predictions are for videos not in {args.truth}", file=sys.stderr)
        csv_path, zip_path = write_submission(predictions, args.out)
    except ScoreInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"csv": str(csv_path), "zip": str(zip_path), "n": len(predictions)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
