"""Serialise a model's scoring function with `jax.export` (StableHLO) and run it without the model code.

    python -m kvq_jax.export --model dover --weights weights/dover --out dover.jaxexport
    python -m kvq_jax.export --weights weights/dover --out dover_b8.jaxexport --batch 8 --dtype bfloat16

The exported function takes the uint8 views of a batch of videos, a dict ``branch -> (b, clips, T, H, W, 3)``
(what `kvq_jax.data.views.sample_views` returns, stacked), normalises the pixels itself and returns a dict
of float32 ``(b,)`` arrays: the raw score of each branch and ``fused``, the model's normalised [0, 1] score
(none for a set-level fusion such as Zoom-VQA's, which exists only over a whole scored set: the JSON states it).
The weights are constants inside the file, so it is self-contained (DOVER: ~225 MB). The batch is a
symbolic dimension ``b`` (any batch size, one compilation per size); should the model not trace with a
symbolic batch, the export falls back to a fixed batch and says so in the JSON. ``FILE.json`` beside it
describes the inputs (branches, shapes, dtypes, view parameters) and outputs.

    from kvq_jax.export import load
    score = load("dover.jaxexport")          # needs jax (and flatbuffers), not kvq_jax's model code
    out = score({"technical": tech_u8, "aesthetic": aes_u8})   # {"technical": (b,), ..., "fused": (b,)}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from kvq_jax.scoring import pad_batch

if TYPE_CHECKING:
    from flax import nnx

    from kvq_jax.data.views import ViewSpec

# The export side imports kvq_jax's model code inside its functions: `load` and `ExportedScorer` need only
# jax and numpy, so a consumer of an exported file does not import (or need) the models.

FORMAT = "kvq_jax.export/2"
FUSED = "fused"


def scoring_function(model: nnx.Module) -> Callable[[Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """uint8 views (b, clips, T, H, W, 3) → {branch: (b,), "fused": (b,)}; weights (and statistics) as constants.

    The branch scores are `kvq_jax.scoring.score_views`, the function every tool runs; ``fused`` is the spec's
    fusion, when the model has one that a single video determines (a set-level fusion is left to the consumer).
    """
    from flax import nnx

    from kvq_jax.scoring import score_views

    model.eval()
    graphdef, state = nnx.split(model)
    fusion = model.spec.fusion if model.spec.fusion is not None and not model.spec.fusion.set_level else None

    def score(views: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        out, _ = score_views(nnx.merge(graphdef, state), views)
        if fusion is not None:
            out[FUSED] = fusion(out)
        return out

    return score


def input_specs(views: Mapping[str, ViewSpec], batch: int | jax_export.DimSize) -> dict[str, jax.ShapeDtypeStruct]:
    """The exported function's argument: uint8 (batch, clips, T, H, W, 3) per branch."""
    return {b: jax.ShapeDtypeStruct((batch, *v.shape), jnp.uint8) for b, v in views.items()}


def export_function(
    fn: Callable[[Mapping[str, jax.Array]], dict[str, jax.Array]],
    views: Mapping[str, ViewSpec],
    *,
    batch: int | None = None,
    fallback_batch: int = 1,
    platforms: Sequence[str] | None = None,
) -> tuple[jax_export.Exported, int | None, str | None]:
    """Export ``fn`` of uint8 views; batch None = symbolic ``b``, else (or if that fails) a fixed batch.

    Returns (exported, fixed batch or None, note on the fallback or None).
    """
    kwargs = {"platforms": tuple(platforms)} if platforms else {}
    jitted = jax.jit(fn)
    if batch is None:
        (dim,) = jax_export.symbolic_shape("b")
        try:
            return jax_export.export(jitted, **kwargs)(input_specs(views, dim)), None, None
        except Exception as e:  # some op of the model does not support a symbolic batch
            reason = " ".join(str(e).split())[:300]
            note = f"symbolic batch failed ({type(e).__name__}: {reason}); exported with fixed batch {fallback_batch}"
            return export_function(fn, views, batch=fallback_batch, platforms=platforms)[0], fallback_batch, note
    return jax_export.export(jitted, **kwargs)(input_specs(views, batch)), batch, None


def export_model(
    model: nnx.Module,
    views: Mapping[str, ViewSpec],
    *,
    batch: int | None = None,
    fallback_batch: int = 1,
    platforms: Sequence[str] | None = None,
) -> tuple[jax_export.Exported, dict]:
    """Export the model's scoring function (see :func:`export_function`) and the metadata for the JSON."""
    spec = model.spec
    views = {b: views[b] for b in spec.branch_names}
    exported, batch, note = export_function(
        scoring_function(model),
        views,
        batch=batch,
        fallback_batch=fallback_batch,
        platforms=platforms,
    )
    size = "b" if batch is None else batch
    meta = {
        "format": FORMAT,
        "model": spec.name,
        "batch": "symbolic" if batch is None else batch,
        "batch_note": note,
        "platforms": list(exported.platforms),
        "inputs": {
            b: {
                "shape": [size, *v.shape],
                "dtype": "uint8",
                "layout": "(batch, clips, T, H, W, RGB), channels-last, raw pixels 0-255",
                "view": dataclasses.asdict(v),
                "pixel_normalization": {**dataclasses.asdict(spec.branch(b).pixels), "applied": "inside"},
            }
            for b, v in views.items()
        },
        "outputs": {
            **{b: "float32 (batch,): raw score, the mean of the head's score map" for b in spec.score_names},
            **(
                {FUSED: f"float32 (batch,): {spec.fusion.meaning}"} if spec.fusion and not spec.fusion.set_level else {}
            ),
        },
        "fused": spec.fusion.to_json() if spec.fusion else None,
        "jax_version": jax.__version__,
    }
    return exported, meta


def meta_path(path: str | Path) -> Path:
    """The JSON beside an exported file: ``FILE.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save(exported: jax_export.Exported, meta: dict, out: str | Path) -> tuple[Path, Path]:
    """Write the serialised function to ``out`` and its metadata to ``out.json``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(exported.serialize())
    meta_file = meta_path(out)
    meta_file.write_text(json.dumps(meta, indent=1) + "\n")
    return out, meta_file


class ExportedScorer:
    """A deserialised scoring function; call it with uint8 views, get numpy scores.

    A symbolic-batch export takes any batch size; a fixed-batch one is fed in chunks of its batch (the
    last chunk padded), so callers never see the difference.
    """

    def __init__(self, exported: jax_export.Exported, meta: dict | None = None):
        self.exported = exported
        self.meta = meta or {}
        (args, kwargs) = jax.tree.unflatten(exported.in_tree, exported.in_avals)
        if kwargs or len(args) != 1 or not isinstance(args[0], dict):
            raise ValueError("not a kvq_jax scoring export: expected one dict of views as input")
        self.inputs: dict[str, Any] = args[0]  # branch -> ShapedArray
        first = next(iter(self.inputs.values())).shape[0]
        self.batch: int | None = first if isinstance(first, int) else None
        self._call = jax.jit(exported.call)

    def __call__(self, views: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(views) != set(self.inputs):
            raise ValueError(f"expected views {sorted(self.inputs)}, got {sorted(views)}")
        sizes = set()
        for branch, aval in self.inputs.items():
            v = np.asarray(views[branch])
            if v.dtype != np.uint8 or v.shape[1:] != tuple(aval.shape[1:]):
                want = ("b", *aval.shape[1:])
                raise ValueError(f"view {branch!r}: expected uint8 {want}, got {v.dtype} {v.shape}")
            sizes.add(v.shape[0])
        if len(sizes) != 1:
            raise ValueError(f"views have different batch sizes {sorted(sizes)}")
        (n,) = sizes
        if self.batch is None:
            return {k: np.asarray(x) for k, x in self._call(dict(views)).items()}
        parts = []
        for start in range(0, n, self.batch):
            chunk = {k: np.asarray(v)[start : start + self.batch] for k, v in views.items()}
            rows = len(next(iter(chunk.values())))
            parts.append({k: np.asarray(x)[:rows] for k, x in self._call(pad_batch(chunk, self.batch)).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load(path: str | Path) -> ExportedScorer:
    """Deserialise an exported scoring function (and its JSON, when present)."""
    path = Path(path)
    try:
        exported = jax_export.deserialize(bytearray(path.read_bytes()))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read a jax.export file: {e}") from e
    meta_file = meta_path(path)
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    return ExportedScorer(exported, meta)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from kvq_jax.models import default_model
    from kvq_jax.predict import add_model_arguments, build_model, enable_compile_cache, weights_help

    ap = argparse.ArgumentParser(
        prog=prog or "python -m kvq_jax.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(ap)
    ap.add_argument("--out", required=True, help="output file (the JSON is written to OUT.json)")
    ap.add_argument("--batch", default="symbolic", help="'symbolic' (any batch size; default) or a fixed batch size N")
    ap.add_argument(
        "--fallback-batch", type=int, default=1, help="fixed batch if the symbolic export fails (default 1)"
    )
    ap.add_argument(
        "--platforms", help="comma-separated platforms to lower for, e.g. cpu,cuda (default: this machine's)"
    )
    args = ap.parse_args(argv)
    if args.batch == "symbolic":
        batch = None
    elif args.batch.isdigit() and int(args.batch) >= 1:
        batch = int(args.batch)
    else:
        ap.error(f"--batch must be 'symbolic' or a positive integer, got {args.batch!r}")
    if args.weights is None and not args.random_weights:
        print(weights_help(args.model or default_model()), file=sys.stderr)
        return 2
    enable_compile_cache(args.compile_cache)
    t0 = time.perf_counter()
    try:
        name, model, views = build_model(args)
    except (ValueError, KeyError, OSError) as e:  # bad weights, views or options: one line
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.random_weights:
        print(f"WARNING: exporting {name} with UNTRAINED random weights (--random-weights)", file=sys.stderr)
    platforms = args.platforms.split(",") if args.platforms else None
    exported, meta = export_model(model, views, batch=batch, fallback_batch=args.fallback_batch, platforms=platforms)
    meta.update(weights=None if args.random_weights else [str(w) for w in args.weights], dtype=args.dtype)
    out, meta_file = save(exported, meta, args.out)
    if meta["batch_note"]:
        print(f"note: {meta['batch_note']}", file=sys.stderr)
    print(
        f"exported {name} (batch {meta['batch']}, {', '.join(meta['platforms'])}) to {out} "
        f"({out.stat().st_size / 2**20:.1f} MiB) and {meta_file} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
