"""`python -m kvq_jax.parity CASE.json [CASE.json ...]`: reproduce the official PyTorch outputs.

A case (format of tests/fixtures/parity/README.md) names an official model config, a weight seed and input shapes;
its manifest (beside it) lists the official state_dict. This tool regenerates the deterministic weights and
inputs by the published rule, converts the weights **through the same converter as real checkpoints**, runs
the Flax model and prints the relative error `max|ours − ref| / max|ref|` of every array in the case's .npz.
It exits non-zero when any error exceeds --tol.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvq_jax.convert import convert_state_dict
from kvq_jax.models import abstract_model, spec_for_official_config, with_state


def unit_uniform(seed_words: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Unit-variance uniform float64 numbers from PCG64's raw stream (stable across NumPy versions)."""
    n = math.prod(shape)
    bg = np.random.PCG64(np.random.SeedSequence(list(seed_words)))
    u = (bg.random_raw(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return ((2 * u - 1) * math.sqrt(3)).reshape(tuple(shape))


def manifest_weights(manifest: list[dict], seed: int) -> dict[str, np.ndarray]:
    """The deterministic state_dict of the rule; entries without `index` (integer buffers) are skipped."""
    out = {}
    for entry in manifest:
        if "index" not in entry:
            continue
        key, shape = entry["key"], tuple(entry["shape"])
        x = unit_uniform([seed, entry["index"]], shape)
        if len(shape) >= 2:
            x = x / math.sqrt(math.prod(shape[1:]))
        elif key.endswith((".weight", "running_var")):  # BatchNorm variances stay positive: 1 + 0.1·x
            x = 1 + 0.1 * x
        else:
            x = 0.1 * x
        out[key] = x.astype(np.float32)
    return out


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {ours.shape}, reference {ref.shape}")
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def run_case(case_path: Path, dtype=jnp.float32) -> dict:
    """Run one case; returns {"errors": {array: rel_error}, "compile_s", "forward_s", ...}."""
    case = json.loads(case_path.read_text())
    cfg = case["config"]
    spec = spec_for_official_config(cfg["cfg"])
    if spec.parity is None:
        raise ValueError(f"{spec.name} defines no parity arrays")
    manifest_path = case_path.parent / f"manifest_{spec.official.config_stem}.json"
    manifest = json.loads(manifest_path.read_text())
    abstract = abstract_model(spec, dtype=dtype)
    model = with_state(abstract, convert_state_dict(manifest_weights(manifest, cfg["seed"]), abstract))
    model.eval()
    inputs = {  # the rule's numbers, already normalised, in the fixture's own layout
        name: jnp.asarray(unit_uniform([cfg["inputs_seed"], j], shape).astype(np.float32))
        for j, (name, shape) in enumerate(cfg["shapes"].items())
    }
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, inputs):
        return spec.parity(nnx.merge(graphdef, state), inputs, cfg)

    t0 = time.perf_counter()
    compiled = forward.lower(state, inputs).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(state, inputs))
    forward_s = time.perf_counter() - t0
    ours = {k: np.asarray(v, np.float64) for k, v in out.items()}
    ref = np.load(case_path.with_suffix(".npz"))
    missing = sorted(set(ref.files) - set(ours))
    if missing:
        raise ValueError(f"{case_path.name}: {spec.name}'s parity arrays lack {missing}")
    errors = {k: rel_error(ours[k], ref[k]) for k in ref.files}
    return {
        "case": str(case_path),
        "model": spec.name,
        "errors": errors,
        "compile_s": compile_s,
        "forward_s": forward_s,
        "seconds_torch_cpu": case.get("seconds_torch_cpu"),
        "device": jax.devices()[0].device_kind,
        "dtype": jnp.dtype(dtype).name,
    }


def case_paths(paths: list[Path]) -> list[Path]:
    """Case files among `paths`: folders expand to their cases; weight manifests (`manifest_*.json`) are not cases."""
    out = []
    for path in paths:
        found = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        out += [f for f in found if not f.name.startswith("manifest_")]
    if not out:
        raise SystemExit(f"no parity cases in {', '.join(map(str, paths))}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvq_jax.parity", description=__doc__.splitlines()[0])
    p.add_argument(
        "cases", nargs="+", type=Path, help="case .json files or folders of them (the .npz and manifest sit beside)"
    )
    p.add_argument("--tol", type=float, default=1e-4, help="max relative error allowed (default 1e-4)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    results, worst = [], 0.0
    for path in case_paths(args.cases):
        r = run_case(path, jnp.dtype(args.dtype))
        results.append(r)
        torch_s = r["seconds_torch_cpu"]
        print(
            f"{path.name}: model={r['model']} dtype={r['dtype']} compile={r['compile_s']:.2f}s "
            f"forward={r['forward_s']:.2f}s (torch cpu {torch_s}s)"
        )
        for k, e in r["errors"].items():
            flag = "FAIL" if e > args.tol else "ok"
            print(f"  {k:32s} rel_err={e:.3e}  {flag}")
            worst = max(worst, e)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    status = "PASS" if worst <= args.tol else "FAIL"
    print(f"{status}: worst relative error {worst:.3e} (tol {args.tol:g}) over {len(results)} case(s)")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
