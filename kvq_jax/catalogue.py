"""Score a whole catalogue: `kvq-jax catalogue INPUT... --weights W --out DIR` (also `python -m kvq_jax.catalogue`).

    kvq-jax catalogue /videos manifest.txt --weights weights/dover --out scores/ --chunk-size 1000
    KVQ_JAX_DISTRIBUTED=1 kvq-jax catalogue gs://bucket/list.csv --weights weights/dover --out gs://bucket/scores

Inputs are folders (searched recursively), manifest files (``.txt``: one path or URI per line; ``.csv``: a
``filename`` column) or single videos; paths may be local or ``gs://`` URIs. The list is cut into chunks of
``--chunk-size`` videos; process ``p`` of ``n`` (JAX processes: one host, or every host of a pod slice joined
with ``KVQ_JAX_DISTRIBUTED=1``) scores chunks ``p, p + n, …``. Each chunk is written to
``DIR/chunks/chunk-NNNNNN.csv`` by an atomic rename when it is complete, so a rerun of the same command skips the
chunks that exist and a killed run loses at most the chunks in progress; no video is written twice. When every
process is done, process 0 merges the chunks in input order into ``DIR/scores.csv`` and writes ``DIR/summary.json``
(videos scored / errored / skipped as done, wall time, videos/s, the share of time the model waited for input).

Rows are those of `kvq-jax score`'s CSV: ``filename``, one column per score, ``fused``, ``error`` (a video that
cannot be read gets an error row, and the run goes on). A set-level fusion (Zoom-VQA's, over the videos scored
together) is not computed here, where each chunk is scored apart: ``fused`` stays empty; it follows from the branch
columns of the whole ``scores.csv`` (`kvq_jax.models.fusion.SetSigmoidRescale`). Decoding runs ahead of the
model in ``--workers`` threads or, with ``--worker-processes``, processes (for decoders that hold the GIL).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import jax
from etils import epath
from jax.experimental import multihost_utils

from kvq_jax.data.decode import VIDEO_SUFFIXES
from kvq_jax.distributed import maybe_initialize_distributed
from kvq_jax.models import default_model
from kvq_jax.predict import (
    Scorer,
    VideoItem,
    add_model_arguments,
    build_model,
    enable_compile_cache,
    find_videos,
    score_videos,
    weights_help,
    write_scores_csv,
)

CHUNKS = "chunks"
PLAN = "plan.json"


def _manifest(path: epath.Path) -> list[VideoItem]:
    """The videos a manifest lists: a CSV with a ``filename`` column, or one path per line (``#`` comments)."""
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or "filename" not in rows[0]:
            raise ValueError(f"{path}: a CSV manifest needs a 'filename' column")
        names = [r["filename"].strip() for r in rows]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    base = path.parent
    return [VideoItem(n, Path(n) if "://" in n or Path(n).is_absolute() else Path(str(base / n))) for n in names]


def catalogue_items(inputs: Sequence[str]) -> list[VideoItem]:
    """Every video the inputs name, in input order (folders sorted), each once."""
    items: list[VideoItem] = []
    for arg in inputs:
        path = epath.Path(arg)
        if arg.lower().endswith((".txt", ".csv")) and path.is_file():
            items += _manifest(path)
        elif "://" in arg and path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            items += [VideoItem(str(p), Path(str(p))) for p in found]
        else:
            items += find_videos([arg])
    seen, out = set(), []
    for item in items:
        if item.name not in seen:
            seen.add(item.name)
            out.append(item)
    return out


def plan(items: Sequence[VideoItem], chunk_size: int, run: dict) -> dict:
    """What the output folder holds a run of: a rerun must ask for the same list, chunking, model and views."""
    digest = hashlib.sha256("\n".join(i.name for i in items).encode()).hexdigest()
    return {"videos": len(items), "list_sha256": digest, "chunk_size": chunk_size, **run}


def _check_plan(out: epath.Path, wanted: dict) -> None:
    path = out / PLAN
    if path.exists():
        held = json.loads(path.read_text())
        if held != wanted:
            diff = {k: (held.get(k), v) for k, v in wanted.items() if held.get(k) != v}
            raise ValueError(f"{out} holds another run (differs in {diff}); use a new --out or remove it")
    elif jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=1))


def chunk_path(out: epath.Path, k: int) -> epath.Path:
    return out / CHUNKS / f"chunk-{k:06d}.csv"


def _write_atomically(path: epath.Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{jax.process_index()}.tmp"
    tmp.write_text(text)
    tmp.rename(path)


def merge_chunks(out: epath.Path, n_chunks: int) -> tuple[int, int]:
    """``scores.csv`` from the chunk files in order; returns (rows, error rows)."""
    header, rows = None, []
    for k in range(n_chunks):
        reader = csv.reader(io.StringIO(chunk_path(out, k).read_text()))
        header, *body = list(reader)
        rows += body
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    _write_atomically(out / "scores.csv", buf.getvalue())
    return len(rows), sum(1 for r in rows if r[-1])


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=prog or "kvq-jax catalogue", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, manifests (.txt/.csv) or videos; gs:// ok")
    add_model_arguments(ap)
    ap.add_argument("--out", required=True, help="output folder (chunks, scores.csv, summary.json); gs:// ok")
    ap.add_argument("--chunk-size", type=int, default=1000, help="videos per chunk file (default 1000)")
    ap.add_argument("--batch-size", type=int, default=4, help="videos per compiled batch (default 4)")
    ap.add_argument("--workers", type=int, default=4, help="decoding threads or processes (default 4)")
    ap.add_argument("--worker-processes", action="store_true", help="decode in processes instead of threads")
    ap.add_argument("--seed", type=int, help="random views with this seed (default: centred views)")
    ap.add_argument("--tta", type=int, default=1, metavar="K", help="average K random samplings (seed default 0)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if min(args.chunk_size, args.batch_size, args.workers, args.tta) < 1:
        ap.error("--chunk-size, --batch-size, --workers and --tta must be >= 1")
    if args.weights is None and not args.random_weights:
        print(weights_help(args.model or default_model()), file=sys.stderr)
        return 2
    seed = 0 if args.tta > 1 and args.seed is None else args.seed
    maybe_initialize_distributed()
    t0 = time.perf_counter()
    try:
        items = catalogue_items(args.inputs)
        if not items:
            raise ValueError(f"no videos in {args.inputs}")
        enable_compile_cache(args.compile_cache)
        name, model, views = build_model(args)
        out = epath.Path(args.out)
        run = {"model": name, "weights": args.weights, "views": {b: str(v) for b, v in views.items()}, "seed": seed}
        run |= {"tta": args.tta, "dtype": args.dtype}
        _check_plan(out, plan(items, args.chunk_size, run))
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    (out / CHUNKS).mkdir(parents=True, exist_ok=True)
    n_chunks = -(-len(items) // args.chunk_size)
    mine = [k for k in range(jax.process_index(), n_chunks, jax.process_count())]
    todo = [k for k in mine if not chunk_path(out, k).exists()]
    scorer = Scorer(model, views, min(args.batch_size, args.chunk_size), samples=args.tta)
    timing: dict[str, float] = {}
    scored = errored = 0
    pool = (
        ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
        if args.worker_processes
        else ThreadPoolExecutor(args.workers, "kvq-decode")
    )
    with pool:
        for k in todo:
            chunk = items[k * args.chunk_size : (k + 1) * args.chunk_size]
            results = score_videos(
                scorer, chunk, seed=seed, pool=pool, progress=not args.no_progress, timing=timing, workers=args.workers
            )
            buf = io.StringIO()
            write_scores_csv(results, scorer.spec.score_names, buf)
            _write_atomically(chunk_path(out, k), buf.getvalue())
            scored += sum(r.ok for r in results)
            errored += sum(not r.ok for r in results)
    elapsed = time.perf_counter() - t0
    mine_totals = [scored, errored, len(mine) - len(todo), timing.get("wait_s", 0.0), timing.get("model_s", 0.0)]
    totals = multihost_utils.process_allgather(jax.numpy.array([*mine_totals, elapsed])).reshape(-1, 6)
    if jax.process_index() == 0:
        rows, bad = merge_chunks(out, n_chunks)
        waited, modelled, wall = totals[:, 3].sum(), totals[:, 4].sum(), float(totals[:, 5].max())
        summary = {
            "videos": len(items),
            "rows": rows,
            "scored_now": int(totals[:, 0].sum()),
            "errored_now": int(totals[:, 1].sum()),
            "error_rows": bad,
            "chunks_skipped_as_done": int(totals[:, 2].sum()),
            "processes": jax.process_count(),
            "wall_s": wall,
            "videos_per_s": float((totals[:, 0].sum() + totals[:, 1].sum()) / max(wall, 1e-9)),
            "model_wait_share": float(waited / max(waited + modelled, 1e-9)),
            "workers": args.workers,
            "worker_kind": "process" if args.worker_processes else "thread",
            "model": name,
            "batch_size": scorer.batch_size,
            "device": jax.devices()[0].device_kind,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(
            f"{name}: {rows} rows in {out / 'scores.csv'} ({bad} with errors); this run scored "
            f"{summary['scored_now']} and errored {summary['errored_now']} video(s), skipped "
            f"{summary['chunks_skipped_as_done']} finished chunk(s); {summary['wall_s']:.1f} s, "
            f"{summary['videos_per_s']:.2f} videos/s, model waiting {100 * summary['model_wait_share']:.0f} %",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m kvq_jax.catalogue"))
