"""Score any videos with a VQA model: `kvq-jax score PATH...` (also `python -m kvq_jax.predict`).

    kvq-jax score clip.mp4 --weights weights/dover                 # one video: scores on stdout
    kvq-jax score videos/ --weights DOVER.pth --out scores.csv      # a folder, recursively
    kvq-jax score data/kvq/test --weights weights/dover --relative-to data/kvq \\
        --challenge-csv prediction.csv --heatmap maps/

Per video it prints (or writes as CSV) the raw score of every branch — the mean of that branch's score map
over clips, time and space, as the official code averages it — and ``fused``, the model's normalised
[0, 1] quality (DOVER's fusion of the two branches, FAST-VQA's sigmoid rescale). A set-level fusion (Zoom-VQA's:
each branch z-scored over the videos scored together) is computed once every video of the run is scored, and
only for two or more: a single video gets its branch scores and the reason why it has no fused one. CSV
columns: ``filename``, one column per branch (``technical,aesthetic`` for DOVER, ``fragments`` for the FAST-VQA
family), ``fused``, ``error`` (empty when the video was scored). A video that cannot be decoded gets a row with
an error and the run goes on; the exit status is 0 when at least one video was scored, 1 when none was (or the
challenge CSV asked for fused scores the set does not have), 2 for bad arguments or weights.

Views are the model's test-time views, centred and deterministic by default; ``--seed S`` samples them at
random instead, every video with its own ``np.random.default_rng(S)`` (so a video's score does not depend on
the other videos in the run). The model is compiled once for a fixed batch (the last batch is padded)
while a thread pool decodes the next videos. Compiled programs are kept in a persistent cache
(``--compile-cache``) so later runs skip the compilation (about a minute for DOVER on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from kvq_jax.data.decode import VIDEO_SUFFIXES, VideoDecodeError
from kvq_jax.data.views import BOOL_FIELDS, ViewSpec, sample_views
from kvq_jax.models import ModelSpec, default_model, get_model, get_spec, model_names
from kvq_jax.scoring import pad_batch, score_views

CHALLENGE_CHOICES = ("fused", "mean")  # plus any branch name of the model
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def weights_help(model: str) -> str:
    """The message shown when no weights were given: scores of an untrained model mean nothing."""
    weights = get_spec(model).weights
    files = weights.files if weights else ("CHECKPOINT.pth",)
    urls = " + ".join(w.url for w in (weights, *weights.also)) if weights else "none published"
    given = " ".join(f"--weights {f}" for f in files)
    sources = " ".join(f"--src {f}" for f in files)
    return (
        f"error: scoring needs trained weights for {model!r}; pass --weights DIR_or_FILE.\n"
        f"  Official checkpoint: {urls}\n"
        f"  Use it directly ({given}, converted on every run) or convert it once:\n"
        f"    python -m kvq_jax.convert --model {model} {sources} --out weights/{model}\n"
        f"    kvq-jax score VIDEO --weights weights/{model}\n"
        "  (--random-weights scores with an untrained model, for demos and tests only.)"
    )


# ------------------------------------------------------------------------------------------------ inputs


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One video to score: ``name`` is what the CSVs call it, ``path`` where it is read from."""

    name: str
    path: Path


def find_videos(
    inputs: Iterable[str | os.PathLike], *, relative_to: str | os.PathLike | None = None
) -> list[VideoItem]:
    """Videos named by ``inputs``: files as given, folders searched recursively for VIDEO_SUFFIXES.

    Names are the paths as written (a folder's files as ``folder/sub/file.mp4``, POSIX separators), or
    relative to ``relative_to`` when given (e.g. the dataset root, so names read ``test/0001.mp4`` like the
    challenge's). Hidden files and folders are skipped inside folders; a file reached twice is kept once. A
    path that does not exist is kept, and fails (reported) when it is decoded.
    """
    root = _absolute(relative_to) if relative_to is not None else None
    items: list[VideoItem] = []
    seen: set[Path] = set()
    for arg in map(Path, inputs):
        if arg.is_dir():
            found = sorted(
                p
                for p in arg.rglob("*")
                if p.suffix.lower() in VIDEO_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(arg).parts)
                and p.is_file()
            )
        else:
            found = [arg]
        for path in found:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            if root is None:
                name = path.as_posix()
            else:
                try:
                    name = _absolute(path).relative_to(root).as_posix()
                except ValueError:
                    raise ValueError(f"{path}: not inside --relative-to {relative_to}") from None
            items.append(VideoItem(name, path))
    return items


def _absolute(path: str | os.PathLike) -> Path:
    """Absolute and lexically normalised (``..`` removed), symlinks kept: names follow what the user typed."""
    return Path(os.path.normpath(Path(path).absolute()))


def _parse_value(field: str, text: str) -> int | bool | str | None:
    if field in ("t_frag", "frames_of") and text.lower() == "none":
        return None
    if field in BOOL_FIELDS:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{field}={text!r}: expected true or false")
        return text.lower() in ("true", "1")
    if field == "frames_of":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{field}={text!r}: expected an integer") from None


def resolve_views(
    views: Mapping[str, ViewSpec], *, clips: int | None = None, overrides: Sequence[str] = ()
) -> dict[str, ViewSpec]:
    """The model's views with ``--clips`` and ``--view`` overrides applied.

    ``clips`` sets ``num_clips`` of the fragment views (DOVER's technical, FAST-VQA's fragments) and of the views
    that take their frames (KSVQE's resized view); an
    override is ``FIELD=VALUE`` (every branch) or ``BRANCH.FIELD=VALUE``, FIELD a ViewSpec field. All the
    changes of a branch are applied at once, so e.g. ``clip_len=8`` and ``aesthetic.t_frag=8`` may be given
    together although each alone would be inconsistent.
    """
    changes: dict[str, dict[str, int | bool | str | None]] = {b: {} for b in views}
    if clips is not None:
        for branch, spec in views.items():
            source = views.get(spec.frames_of) if spec.frames_of else None
            if spec.kind == "fragments" or (source is not None and source.kind == "fragments"):
                changes[branch]["num_clips"] = clips
    fields = {f.name for f in dataclasses.fields(ViewSpec)} - {"kind"}
    for item in overrides:
        key, sep, text = item.partition("=")
        branch, dot, field = key.strip().rpartition(".")
        if not sep or not field:
            raise ValueError(f"--view {item!r}: expected FIELD=VALUE or BRANCH.FIELD=VALUE")
        if field not in fields:
            raise ValueError(f"--view {item!r}: unknown view field {field!r}; known: {sorted(fields)}")
        if dot and branch not in views:
            raise ValueError(f"--view {item!r}: no branch {branch!r}; the model has {sorted(views)}")
        value = _parse_value(field, text.strip())
        for b in [branch] if dot else list(views):
            changes[b][field] = value
    out = {}
    for branch, spec in views.items():
        try:
            out[branch] = dataclasses.replace(spec, **changes[branch])
        except ValueError as e:
            raise ValueError(f"views of branch {branch!r}: {e}") from None
    return out


# ------------------------------------------------------------------------------------------------ scoring


class Scorer:
    """A model's scoring function, jit-compiled once for a fixed batch; smaller batches are padded.

    ``samples`` > 1 scores that many random samplings of every view at once (test-time augmentation: they are
    stacked on the clip axis, over which the score averages).
    """

    def __init__(self, model: nnx.Module, views: Mapping[str, ViewSpec], batch_size: int, samples: int = 1):
        if batch_size < 1 or samples < 1:
            raise ValueError(f"batch_size and samples must be >= 1, got {batch_size}, {samples}")
        missing = set(model.spec.branch_names) - set(views)
        if missing:
            raise ValueError(f"no views for branches {sorted(missing)} of {model.spec.name}")
        model.eval()
        self.spec: ModelSpec = model.spec
        self.views = {b: views[b] for b in model.spec.branch_names}
        self.samples = samples
        self.shapes = {b: (v.clips * samples, *v.shape[1:]) for b, v in self.views.items()}
        self.batch_size = batch_size
        self.compile_seconds: float | None = None
        graphdef, self._state = nnx.split(model)

        def score(state: nnx.State, views: Mapping[str, jax.Array]):
            return score_views(nnx.merge(graphdef, state), views)

        self._fn = jax.jit(score)
        self._compiled: Callable | None = None

    def compile(self) -> float:
        """Compile for (batch_size, *view) uint8 inputs (done by the first call otherwise); returns seconds."""
        if self._compiled is None:
            t = time.perf_counter()
            args = {b: jax.ShapeDtypeStruct((self.batch_size, *shape), jnp.uint8) for b, shape in self.shapes.items()}
            self._compiled = self._fn.lower(self._state, args).compile()
            self.compile_seconds = time.perf_counter() - t
        return self.compile_seconds

    def __call__(self, views: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Branch scores (n,) and score maps (n, clips, T', H', W') of n <= batch_size videos."""
        sizes = {len(v) for v in views.values()}
        if len(sizes) != 1 or set(views) != set(self.views):
            raise ValueError(f"expected views {sorted(self.views)} with one batch size, got {sorted(views)}")
        (n,) = sizes
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"batch of {n} videos; this scorer takes 1 to {self.batch_size}")
        for branch, v in views.items():
            want = self.shapes[branch]
            if v.shape[1:] != want or v.dtype != np.uint8:
                raise ValueError(f"view {branch!r}: expected uint8 (n, {want}), got {v.dtype} {v.shape}")
        self.compile()
        scores, maps = self._compiled(self._state, pad_batch(views, self.batch_size))
        return (
            {k: np.asarray(s)[:n] for k, s in scores.items()},
            {k: np.asarray(m)[:n] for k, m in maps.items()},
        )


def normalised_score(spec: ModelSpec, branch_scores: Mapping[str, float]) -> float | None:
    """The model's [0, 1] quality (``spec.fusion``) from its branch means; None when the model defines none, or a
    set-level one (see :func:`fuse_set`)."""
    return None if spec.fusion is None or spec.fusion.set_level else float(spec.fusion(branch_scores))


def fuse_set(spec: ModelSpec, results: Sequence[VideoScore]) -> str | None:
    """Give the scored ``results`` their ``fused`` score from a set-level fusion over all of them (together).

    Returns why the set has no fused scores (too few videos, a constant branch), else None; a model whose fusion
    is per video (or that has none) is left alone.
    """
    fusion = spec.fusion
    if fusion is None or not fusion.set_level:
        return None
    ok = [r for r in results if r.ok]
    scores = {b: np.array([r.branches[b] for r in ok], np.float64) for b in fusion.branches}
    reason = fusion.undefined(scores)
    if reason is not None:
        return f"no fused score: {reason}"
    for r, fused in zip(ok, fusion(scores), strict=True):
        r.fused = float(fused)
    return None


@dataclasses.dataclass
class VideoScore:
    """The outcome for one video: raw branch scores and the normalised ``fused`` score, or an error."""

    name: str
    path: Path
    branches: dict[str, float] = dataclasses.field(default_factory=dict)
    fused: float | None = None
    error: str | None = None
    heatmap: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def load_views(
    item: VideoItem, views: Mapping[str, ViewSpec], seed: int | None, samples: int = 1
) -> dict[str, np.ndarray]:
    """Decode one video's views; seeded views use a fresh ``default_rng(seed)`` per video. A URI (``gs://…``) is
    read into memory first."""
    rng = None if seed is None else np.random.default_rng(seed)
    source = item.path
    if "://" in str(source):
        from etils import epath

        source = epath.Path(str(source)).read_bytes()
    return sample_views(source, views, rng, name=item.name, samples=samples)


def _error_text(err: BaseException) -> str:
    """One line; the exception type is kept unless it is the decoder's own (whose message says it all)."""
    text = " ".join(str(err).split())
    return text if isinstance(err, VideoDecodeError) else f"{type(err).__name__}: {text}".rstrip(": ")


def score_videos(
    scorer: Scorer,
    videos: Sequence[VideoItem],
    *,
    seed: int | None = None,
    workers: int = 2,
    pool: Executor | None = None,
    heatmap_dir: str | os.PathLike | None = None,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
    timing: dict[str, float] | None = None,
) -> list[VideoScore]:
    """Score ``videos`` in input order; decoding runs in a pool (``workers`` threads, or the given ``pool``, e.g.
    worker processes) ahead of the accelerator.

    A video whose decoding fails becomes a :class:`VideoScore` with ``error`` set (also passed to
    ``report``); the others are scored in batches of ``scorer.batch_size``. With ``heatmap_dir`` a PNG of
    the fragment branch's quality map is written per video (see :mod:`kvq_jax.heatmap`). ``timing`` accumulates
    ``wait_s`` (waiting for decoded views) and ``model_s`` (in the scorer).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    clock = timing if timing is not None else {}
    clock.setdefault("wait_s", 0.0)
    clock.setdefault("model_s", 0.0)
    map_branch = None
    if heatmap_dir is not None:
        from kvq_jax import heatmap  # matplotlib is imported only when maps are asked for

        # a fragment branch that has a score map of its own (not one score from several branches)
        map_branch = heatmap.heatmap_branch({b: v for b, v in scorer.views.items() if b in scorer.spec.score_names})
        Path(heatmap_dir).mkdir(parents=True, exist_ok=True)
    results: list[VideoScore | None] = [None] * len(videos)
    pending: list[tuple[int, dict[str, np.ndarray]]] = []
    prefetch = 2 * scorer.batch_size + workers

    def fail(i: int, message: str, bar: tqdm) -> None:
        results[i] = VideoScore(videos[i].name, videos[i].path, error=message)
        if report is not None:
            report(f"error: {message}")
        bar.update(1)

    def flush(bar: tqdm) -> None:
        batch = {b: np.stack([v[b] for _, v in pending]) for b in scorer.views}
        t0 = time.perf_counter()
        scores, maps = scorer(batch)
        clock["model_s"] += time.perf_counter() - t0
        for j, (i, views) in enumerate(pending):
            item = videos[i]
            branches = {b: float(scores[b][j]) for b in scorer.spec.score_names}  # model order, not sorted
            if not all(math.isfinite(s) for s in branches.values()):
                fail(i, f"{item.name}: non-finite score {branches}", bar)
                continue
            result = VideoScore(item.name, item.path, branches, normalised_score(scorer.spec, branches))
            if map_branch is not None:
                out = heatmap.heatmap_path(heatmap_dir, item.name)
                result.heatmap = heatmap.render_heatmap(
                    views[map_branch], maps[map_branch][j], out, title=heatmap_title(result)
                )
            results[i] = result
            bar.update(1)
        pending.clear()

    with (
        contextlib.nullcontext(pool) if pool is not None else ThreadPoolExecutor(workers, "kvq-decode") as pool,
        tqdm(total=len(videos), unit="video", disable=not progress, dynamic_ncols=True) as bar,
    ):
        queue: deque[tuple[int, Future]] = deque()
        upcoming = iter(range(len(videos)))
        for i in upcoming:
            queue.append((i, pool.submit(load_views, videos[i], scorer.views, seed, scorer.samples)))
            if len(queue) >= prefetch:
                break
        while queue:
            i, future = queue.popleft()
            nxt = next(upcoming, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(load_views, videos[nxt], scorer.views, seed, scorer.samples)))
            t0 = time.perf_counter()
            try:
                views = future.result()
            except Exception as err:  # decode errors, too-small videos, ...: report the video and go on
                message = _error_text(err)
                fail(i, message if videos[i].name in message else f"{videos[i].name}: {message}", bar)
                continue
            finally:
                clock["wait_s"] += time.perf_counter() - t0
            pending.append((i, views))
            if len(pending) == scorer.batch_size:
                flush(bar)
        if pending:
            flush(bar)
    return [r for r in results if r is not None]


def heatmap_title(result: VideoScore) -> str:
    branches = " · ".join(f"{b} {s:+.4f}" for b, s in result.branches.items())
    quality = "" if result.fused is None else f"quality {result.fused:.3f}  "
    return f"{result.name}\n{quality}({branches} raw)"


# ------------------------------------------------------------------------------------------------ outputs


def challenge_value(result: VideoScore, choice: str) -> float:
    """The score written to the challenge CSV: ``fused``, ``mean`` of the raw branch scores, or one branch."""
    if choice == "fused":
        assert result.fused is not None
        return result.fused
    if choice == "mean":
        return float(np.mean(list(result.branches.values())))
    return result.branches[choice]


def _format(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def write_scores_csv(results: Sequence[VideoScore], branches: Sequence[str], out: TextIO) -> None:
    """``filename,<branch>...,fused,error``: one row per video, scores empty for a failed video."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["filename", *branches, "fused", "error"])
    for r in results:
        writer.writerow([r.name, *(_format(r.branches.get(b)) for b in branches), _format(r.fused), r.error or ""])


def write_challenge_csv(results: Sequence[VideoScore], choice: str, out: TextIO) -> int:
    """The challenge's ``filename,score`` for the scored videos; returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["filename", "score"])
    n = 0
    for r in results:
        if r.ok:
            writer.writerow([r.name, repr(challenge_value(r, choice))])
            n += 1
    return n


def format_single(result: VideoScore, spec: ModelSpec, note: str | None = None) -> str:
    """Human-readable scores of one video; ``note`` says why a set-level fusion gave it no fused score."""
    if not result.ok:
        return f"{result.name}: {result.error}"
    width = max(len(b) for b in (*result.branches, "fused"))
    lines = [result.name]
    lines += [f"  {b:<{width}}  {s:+.6f}  (raw branch score)" for b, s in result.branches.items()]
    if result.fused is not None:
        lines.append(f"  {'fused':<{width}}  {result.fused:.6f}  ({spec.fusion.meaning})")
    elif note is not None:
        lines.append(f"  {'fused':<{width}}  none: {note.removeprefix('no fused score: ')}")
    if result.heatmap is not None:
        lines.append(f"  heat-map: {result.heatmap}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


def default_compile_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("KVQ_JAX_COMPILE_CACHE") or os.path.join(base, "kvq_jax", "xla")


def enable_compile_cache(path: str | os.PathLike | None) -> str | None:
    """Keep compiled XLA programs in ``path`` across runs, unless a cache directory is already configured.

    JAX settles the cache at the first compilation of the process, so this must run before any. Returns
    the directory in use (None: disabled). ``path`` None or "none" disables it.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if path is None or str(path).lower() == "none":
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """Options shared with `kvq_jax.export`: model, weights, dtype and views."""
    ap.add_argument(
        "--model",
        choices=model_names(),
        help=f"registered model (default: the model named in a converted --weights dir, else {default_model()})",
    )
    ap.add_argument(
        "--weights",
        metavar="DIR_or_FILE",
        action="append",
        help="converted weights dir, or official checkpoint file (repeat for models whose weights are in several)",
    )
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="score with an untrained model (meaningless scores; demos and tests only)",
    )
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype")
    ap.add_argument(
        "--clips", type=int, metavar="K", help="clips of the fragment views (default: the model's test views)"
    )
    ap.add_argument(
        "--view",
        action="append",
        default=[],
        metavar="[BRANCH.]FIELD=VALUE",
        help="advanced: change a view field, e.g. clip_len=16 or aesthetic.t_frag=16 (repeatable); "
        "scores then differ from the official test-time views",
    )
    ap.add_argument(
        "--compile-cache",
        default=default_compile_cache(),
        metavar="DIR",
        help="persistent XLA compilation cache ('none' disables; default %(default)s, or $KVQ_JAX_COMPILE_CACHE)",
    )


def build_model(args: argparse.Namespace) -> tuple[str, nnx.Module, dict[str, ViewSpec]]:
    """(model name, model with weights, views) from parsed `add_model_arguments` options.

    Raises ValueError / FileNotFoundError with a message for the user.
    """
    from kvq_jax.weights import load_model, read_meta

    if args.weights is not None and args.random_weights:
        raise ValueError("--weights and --random-weights exclude each other")
    name = args.model
    if name is None and args.weights is not None and Path(args.weights[0]).is_dir():
        name = read_meta(args.weights[0])["model"]
    name = name or default_model()
    spec = get_spec(name)
    if args.clips is not None and args.clips < 1:
        raise ValueError(f"--clips must be >= 1, got {args.clips}")
    views = resolve_views(spec.views, clips=args.clips, overrides=args.view)
    dtype = DTYPES[args.dtype]
    model = get_model(name, dtype=dtype) if args.random_weights else load_model(name, args.weights, dtype=dtype)
    return name, model, views


def random_weights_warning(name: str) -> str:
    bar = "!" * 78
    return (
        f"{bar}\nWARNING: --random-weights: {name} runs with UNTRAINED random weights; its scores say\n"
        f"nothing about quality. Use --weights for real scores.\n{bar}"
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "kvq-jax score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("paths", nargs="+", metavar="PATH", help="video files and/or folders (searched recursively)")
    add_model_arguments(ap)
    ap.add_argument(
        "--seed", type=int, help="sample views at random with this seed (default: centred deterministic views)"
    )
    ap.add_argument(
        "--tta",
        type=int,
        default=1,
        metavar="K",
        help="test-time augmentation: average K random samplings of every view (seed --seed, default 0)",
    )
    ap.add_argument("--batch-size", type=int, default=4, help="videos per compiled batch (default 4)")
    ap.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding threads (default %(default)s)"
    )
    ap.add_argument("--out", metavar="CSV", help="write filename,<branches>,fused,error here")
    ap.add_argument("--challenge-csv", metavar="CSV", help="also write the challenge's filename,score file")
    ap.add_argument(
        "--challenge-score",
        default="fused",
        metavar="fused|mean|BRANCH",
        help="score in --challenge-csv: 'fused' = the normalised [0,1] score (default; its constants were "
        "fitted to the released weights), 'mean' = mean of the raw branch scores (use for fine-tuned "
        "weights), or one branch's raw score (e.g. technical)",
    )
    ap.add_argument("--heatmap", metavar="DIR", help="write a quality-map PNG per video into DIR")
    ap.add_argument(
        "--relative-to", metavar="DIR", help="name videos by their path relative to DIR (e.g. the dataset root)"
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = build_parser(prog)
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.workers < 1 or args.tta < 1:
        ap.error("--batch-size, --workers and --tta must be >= 1")
    if args.tta > 1 and args.seed is None:
        args.seed = 0
    if args.weights is None and not args.random_weights:
        print(weights_help(args.model or default_model()), file=sys.stderr)
        return 2
    try:
        videos = find_videos(args.paths, relative_to=args.relative_to)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not videos:
        print(f"error: no video files ({', '.join(VIDEO_SUFFIXES)}) in {args.paths}", file=sys.stderr)
        return 2
    cache = enable_compile_cache(args.compile_cache)
    t0 = time.perf_counter()
    try:
        name, model, views = build_model(args)
        spec = model.spec
        choices = (*CHALLENGE_CHOICES, *spec.score_names)
        if args.challenge_score not in choices:
            raise ValueError(f"--challenge-score {args.challenge_score!r}: choose one of {list(choices)}")
        if args.challenge_csv and args.challenge_score == "fused" and spec.fusion is None:
            raise ValueError(f"{name} defines no normalised 'fused' score: use --challenge-score mean or a branch")
    except (ValueError, KeyError, OSError) as e:  # bad weights, views or options: one line, no traceback
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0
    if args.random_weights:
        print(random_weights_warning(name), file=sys.stderr)
    batch = min(args.batch_size, len(videos))
    shapes = ", ".join(f"{b} {'x'.join(map(str, v.shape[:4]))}" for b, v in views.items())
    print(
        f"{name} ({'random weights' if args.random_weights else ', '.join(args.weights)}, {args.dtype}) on "
        f"{jax.devices()[0].platform}: {len(videos)} video(s), batch {batch}, views {shapes}"
        + (f", seed {args.seed}" if args.seed is not None else ", centred views")
        + (f", {args.tta} samplings averaged" if args.tta > 1 else "")
        + (f"; compile cache {cache}" if cache else ""),
        file=sys.stderr,
    )
    scorer = Scorer(model, views, batch, samples=args.tta)
    results = score_videos(
        scorer,
        videos,
        seed=args.seed,
        workers=args.workers,
        heatmap_dir=args.heatmap,
        progress=not args.no_progress,
        report=lambda msg: tqdm.write(msg, file=sys.stderr),
    )
    note = fuse_set(spec, results)
    elapsed = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    fused_missing = bool(args.challenge_csv) and args.challenge_score == "fused" and any(r.fused is None for r in ok)
    write_challenge = bool(args.challenge_csv) and bool(ok) and not fused_missing
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            write_scores_csv(results, spec.score_names, f)
    if len(videos) == 1:
        print(format_single(results[0], spec, note))
    else:
        if not args.out:  # many videos and no file: the CSV goes to stdout (progress and notes are on stderr)
            write_scores_csv(results, spec.score_names, sys.stdout)
        if note is not None and ok:
            print(f"note: {note}", file=sys.stderr)
    if write_challenge:
        Path(args.challenge_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.challenge_csv, "w", newline="", encoding="utf-8") as f:
            write_challenge_csv(results, args.challenge_score, f)
    failed = len(results) - len(ok)
    print(
        f"scored {len(ok)} of {len(results)} video(s)"
        + (f", {failed} failed (see the error column)" if failed else "")
        + f" in {elapsed:.1f} s (model load {load_s:.1f} s and compilation {scorer.compile_seconds or 0:.1f} s "
        "included)"
        + (f"; wrote {args.out}" if args.out else "")
        + (f", {args.challenge_csv} ({args.challenge_score})" if write_challenge else "")
        + (" -- RANDOM WEIGHTS" if args.random_weights else ""),
        file=sys.stderr,
    )
    if args.challenge_csv and not ok:
        print(f"error: no video was scored; {args.challenge_csv} not written", file=sys.stderr)
    if fused_missing:
        print(
            f"error: {args.challenge_csv} not written ({note}); use --challenge-score mean or a branch", file=sys.stderr
        )
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m kvq_jax.predict"))
