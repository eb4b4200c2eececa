"""`python -m kvq_jax.bench`: speed of a kvq_jax model, optionally against the official PyTorch code.

Reports compile time, steady-state latency (median, p10/p90, min over ``--repeats`` synchronised runs after
``--warmup``), videos/s, peak memory, XLA's FLOP count and the implied utilisation of the device. With
``--torch-reference DIR`` (a clone of VQAssessment/DOVER, or of VQAssessment/FAST-VQA-and-FasterVQA for the
FAST-VQA models) the official PyTorch model is built from that checkout, given the *same* weights and
inputs, checked to produce the same score maps, and timed in the same process. The timed runs of all
implementations are interleaved (one run of each in turn), so a change of machine load during the study
hits every implementation alike and their ratio stays meaningful.

Weights and inputs are deterministic (the ``kvq_jax.parity`` rule), never zeros: uint8 views that JAX scores
with `kvq_jax.scoring.score_views` (normalising on the device, as every tool does) and PyTorch receives
normalised by the same `PixelNorm`. One video is one clip per branch (the training form; DOVER's test-time
technical view has 3 clips, i.e. 3× the technical work). The training step is the trainer's own
(`kvq_jax.train.steps.make_train_step`).

Examples::

    python -m kvq_jax.bench --model dover --frames 32 --out bench.json --png bench.png
    python -m kvq_jax.bench --model dover --torch-reference ~/src/DOVER --torch-compile --out dover.json
    python -m kvq_jax.bench --mode train --model dover_mobile --batch 4 --frames 16 \
        --torch-reference ~/src/DOVER
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from kvq_jax.convert import convert_state_dict, to_state_dict
from kvq_jax.models import default_model, get_model, get_spec, model_names, split_model
from kvq_jax.parity import manifest_weights, rel_error, unit_uniform
from kvq_jax.scoring import score_views
from kvq_jax.train.optim import make_optimizer
from kvq_jax.train.state import init_state
from kvq_jax.train.steps import make_train_step

SCHEMA = "kvq_jax.bench/1"
# The DOVER / FAST-VQA objective and optimiser (dover.yml: lr 1e-3, backbone ×0.1, wd 0.05), constant LR.
LOSS_WEIGHTS = {"plcc": 1.0, "rank": 0.3}
OPTIMIZER = {"lr": 1e-3, "backbone_lr_mult": 0.1, "weight_decay": 0.05, "schedule": "constant"}

# Dense peak TFLOP/s per device from vendor datasheets: (substring of jax's device_kind, float32, bfloat16).
# float32 uses the rate JAX's default matmul precision runs at: TF32 tensor cores on NVIDIA Ampere and later,
# one bfloat16 pass on TPU. TPU v2/v3 devices are single cores (half a chip).
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 494.7, 989.4),
    ("H100 PCIe", 378.0, 756.0),
    ("H100", 494.7, 989.4),
    ("A100", 156.0, 312.0),
    ("L4", 60.0, 121.0),
    ("TPU v2", 22.5, 22.5),
    ("TPU v3", 61.5, 61.5),
    ("TPU v4", 275.0, 275.0),
    ("TPU v5 lite", 197.0, 197.0),
    ("TPU v5", 459.0, 459.0),
    ("TPU v6 lite", 918.0, 918.0),
)


# ----------------------------------------------------------------------------------------------- statistics


def latency_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, p10/p90, min, max and mean of per-run latencies (seconds), plus the runs themselves."""
    x = np.asarray(seconds, np.float64)
    if x.size == 0:
        raise ValueError("latency_stats: no runs")
    p10, med, p90 = np.percentile(x, [10, 50, 90])
    return {
        "median_s": float(med),
        "p10_s": float(p10),
        "p90_s": float(p90),
        "min_s": float(x.min()),
        "max_s": float(x.max()),
        "mean_s": float(x.mean()),
        "n": int(x.size),
        "runs_s": [float(v) for v in x],
    }


def paired_ratios(times: Sequence[float], base: Sequence[float]) -> dict[str, float]:
    """Median and p10/p90 of ``times[i] / base[i]`` over rounds.

    The timed runs are interleaved, so run i of both implementations saw about the same machine load; the
    per-round ratio cancels slow load changes that widen each implementation's own spread.
    """
    r = np.asarray(times, np.float64) / np.asarray(base, np.float64)
    p10, med, p90 = np.percentile(r, [10, 50, 90])
    return {"median": float(med), "p10": float(p10), "p90": float(p90)}


def agreement(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], tol: float) -> dict[str, Any]:
    """Per-branch ``max|ours − ref| / max|ref|`` of the score maps; ``ok`` iff every error is ≤ tol.

    NaN or inf anywhere counts as an infinite error. Different branch sets or shapes raise ValueError.
    """
    if set(ours) != set(ref):
        raise ValueError(f"agreement: branches differ: ours {sorted(ours)}, reference {sorted(ref)}")
    errors = {}
    for branch in sorted(ours):
        a, b = np.asarray(ours[branch]), np.asarray(ref[branch])
        if a.shape != b.shape:
            raise ValueError(f"agreement: branch {branch!r}: shape {a.shape} vs reference {b.shape}")
        finite = np.isfinite(a).all() and np.isfinite(b).all()
        errors[branch] = rel_error(a, b) if finite else float("inf")
    worst = max(errors.values())
    return {"max_rel_error": errors, "worst": worst, "tol": tol, "ok": bool(worst <= tol)}


# ------------------------------------------------------------------------------------------- host / memory


def _proc_field(path: str, field: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        return None
    return None


def available_cores() -> int:
    """Cores this process may run on (the affinity mask; what XLA and torch threads can use)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_info(device: jax.Device) -> dict[str, Any]:
    """Machine, library versions and the JAX device, for the JSON report."""
    mem_kib = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cpu_mhz": _proc_field("/proc/cpuinfo", "cpu MHz"),
        "cores_total": os.cpu_count(),
        "cores_available": available_cores(),
        "memory_total_bytes": int(mem_kib.split()[0]) * 1024 if mem_kib else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy", "torch")},
        "device_kind": device.device_kind,
        "device_platform": device.platform,
        "device_count": jax.device_count(device.platform),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "kvq_jax_models_sha1": models_fingerprint(),
    }


def models_fingerprint() -> str:
    """SHA-1 over the model source files, so a report can be matched to the code version it measured."""
    digest = hashlib.sha1()
    for path in sorted((Path(__file__).parent / "models").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _rss_bytes(field: str) -> int | None:
    value = _proc_field("/proc/self/status", field)
    return int(value.split()[0]) * 1024 if value else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process, so a later read covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that memory an earlier phase freed
    but the allocator kept does not hide the next phase's allocations from the resident-set peak."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def machine_cpu_s() -> float | None:
    """CPU seconds spent so far on the cores this process may use, by anyone (hypervisor steal included)."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        with open("/proc/stat") as f:
            rows = [line.split() for line in f if line.startswith("cpu") and line.split()[0] in cpus]
    except (OSError, AttributeError):
        return None
    total = 0
    for row in rows:
        ticks = [int(v) for v in row[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        total += sum(ticks) - idle - sum(ticks[8:10])  # guest time is already in user/nice
    return total / os.sysconf("SC_CLK_TCK") if rows else None


def own_cpu_s() -> float:
    """CPU seconds used by this process, all threads."""
    t = os.times()
    return t.user + t.system


def foreign_share(machine_s: float, own_s: float, wall_s: float) -> float:
    """Share of the available cores other processes used during a run of ``wall_s`` seconds (0 = quiet).

    A run is only comparable with another when the machine gave it the same cores: on a shared host this
    separates undisturbed runs from ones that competed for the CPU (clock-tick resolution, 10 ms).
    """
    return max(machine_s - own_s, 0.0) / (wall_s * available_cores())


def measure_peak_memory(fn: Callable[[], Any], device: jax.Device | None) -> dict[str, Any]:
    """Run ``fn`` and report the peak memory it reached.

    Accelerators: ``device.memory_stats()['peak_bytes_in_use']`` (the device's high-water mark since start).
    CPU: the process's resident-set peak (VmHWM, reset just before ``fn``), with the resident size before
    ``fn`` (after returning free heap pages to the OS) as ``baseline_bytes``; the difference is what the
    runs added (activations, workspaces). Parameters and inputs are resident before and count in neither.
    """
    stats = device.memory_stats() if device is not None and device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        fn()
        stats = device.memory_stats()
        return {
            "source": "device memory_stats",
            "peak_bytes": int(stats["peak_bytes_in_use"]),
            "bytes_in_use": int(stats.get("bytes_in_use", 0)),
        }
    _release_free_memory()
    baseline = _rss_bytes("VmRSS")
    reset = _reset_peak_rss()
    fn()
    peak = _rss_bytes("VmHWM") if reset else None
    if peak is None:  # no /proc: the whole-process peak (KiB on Linux, bytes on macOS)
        scale = 1 if sys.platform == "darwin" else 1024
        return {
            "source": "process ru_maxrss (whole run)",
            "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        }
    return {
        "source": "process VmHWM, reset before the warm-up runs (after malloc_trim)",
        "peak_bytes": peak,
        "baseline_bytes": baseline,
        "delta_bytes": peak - baseline if baseline is not None else None,
    }


# ----------------------------------------------------------------------------------------------- peak rates


def cpu_peak_tflops(cores: int) -> tuple[float | None, str]:
    """Rough float32 FMA peak of the available cores: cores × clock × FLOPs/cycle (from /proc/cpuinfo)."""
    flags = (_proc_field("/proc/cpuinfo", "flags") or "").split()
    mhz = _proc_field("/proc/cpuinfo", "cpu MHz")
    if not mhz:
        return None, "unknown (no /proc/cpuinfo clock)"
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512: 2 FMA pipes × 16 lanes × 2"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2: 2 FMA pipes × 8 lanes × 2"
    else:
        per_cycle, isa = 8, "SSE: 4 lanes × 2"
    value = cores * float(mhz) * 1e6 * per_cycle / 1e12
    return value, f"estimate: {cores} cores × {float(mhz):.0f} MHz × {per_cycle} FLOP/cycle ({isa})"


def device_peak_tflops(device: jax.Device, dtype: str) -> tuple[float | None, str]:
    """Datasheet peak for the device kind (see PEAK_TFLOPS), or a CPU estimate; (None, why) if unknown."""
    if device.platform == "cpu":
        return cpu_peak_tflops(available_cores())
    for key, f32, bf16 in PEAK_TFLOPS:
        if key in device.device_kind:
            return (bf16 if dtype == "bfloat16" else f32), f"datasheet ({key}, dense {dtype})"
    return None, f"unknown device kind {device.device_kind!r}: pass --peak-tflops"


def matmul_ceiling_tflops(device: jax.Device, dtype: Any, repeats: int = 5) -> float:
    """Measured rate of one large square matmul through XLA: the practical ceiling for dense work."""
    n = 2048 if device.platform == "cpu" else 8192
    with jax.default_device(device):
        a = jax.random.normal(jax.random.key(1), (n, n), dtype)
        b = jax.random.normal(jax.random.key(2), (n, n), dtype)
        f = jax.jit(jnp.matmul).lower(a, b).compile()
        jax.block_until_ready(f(a, b))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(a, b))
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e12


def xla_cost(compiled: Any) -> dict[str, float | None]:
    """FLOPs, transcendentals and bytes accessed from XLA's cost analysis of a compiled executable."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):  # older jax: one dict per computation
        ca = ca[0] if ca else {}
    ca = ca or {}
    pick = {"flops": "flops", "transcendentals": "transcendentals", "bytes_accessed": "bytes accessed"}
    return {k: (float(ca[v]) if v in ca else None) for k, v in pick.items()}


def xla_memory(compiled: Any) -> dict[str, int] | None:
    """Argument, output and temporary buffer sizes XLA planned for the executable."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if ma is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    return {f: int(getattr(ma, f)) for f in fields if hasattr(ma, f)}


# ---------------------------------------------------------------------------------------- inputs / weights


def reference_state_dict(model: nnx.Module, seed: int) -> dict[str, np.ndarray]:
    """Deterministic official-layout weights for ``model`` (the kvq_jax.parity rule, index = key position).

    Unlike a fresh init (ConvNeXt layer-scale 1e-6, zero fragment biases) every tensor carries signal, so an
    agreement check exercises every layer. Integer buffers are kept as computed.
    """
    layout = to_state_dict(model)
    manifest = [
        {"key": k, "shape": list(v.shape), **({"index": i} if v.dtype.kind == "f" else {})}
        for i, (k, v) in enumerate(layout.items())
    ]
    weights = manifest_weights(manifest, seed)
    return {k: weights.get(k, v) for k, v in layout.items()}


def bench_views(model_name: str, branches: Sequence[str], batch: int, frames: int | None, seed: int):
    """Deterministic uint8 views (batch, 1 clip, T, H, W, 3) per branch: the parity rule's uniform numbers
    spread over 0–255. ``frames`` sets the longest view's T; the others keep their share (COVER: half as many
    semantic frames, as its gates need)."""
    spec = get_spec(model_name)
    longest = max(b.view.shape[1] for b in spec.branches)
    views = {}
    for j, branch in enumerate(spec.branches):
        if branch.name not in branches:
            continue
        view = branch.view
        t = view.shape[1] if frames is None else max(1, frames * view.shape[1] // longest)
        shape = (batch, 1, t, *view.out_hw, 3)
        u = unit_uniform([seed, j], shape) / np.sqrt(3)  # [-1, 1)
        views[branch.name] = np.floor((u + 1) * 128).clip(0, 255).astype(np.uint8)
    return views


def bench_labels(batch: int, seed: int) -> np.ndarray:
    """Deterministic MOS-like labels in [1, 5] for the training step."""
    return (3.0 + unit_uniform([seed, 99], (batch,)) / np.sqrt(3) * 2).astype(np.float32)


# ----------------------------------------------------------------------------------------------- runners


@dataclasses.dataclass
class Runner:
    """One implementation ready to time: ``step()`` runs one synchronised step."""

    name: str
    step: Callable[[], Any]
    info: dict[str, Any]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def jax_infer_runner(model: nnx.Module, views: Mapping[str, np.ndarray], device: jax.Device) -> tuple[Runner, dict]:
    """Jitted eval scoring of uint8 views; returns the runner and its score maps (N, T', H', W') for the
    agreement check."""
    model.eval()
    graphdef, state = nnx.split(model)
    with jax.default_device(device):
        state = jax.device_put(state, device)
        xs = jax.device_put(dict(views), device)

        def forward(state, xs):
            return score_views(nnx.merge(graphdef, state), xs)[1]

        t0 = time.perf_counter()
        lowered = jax.jit(forward).lower(state, xs)
        lower_s = time.perf_counter() - t0
        compiled, compile_s = _timed(lowered.compile)
    maps, first_s = _timed(lambda: jax.block_until_ready(compiled(state, xs)))

    def step() -> None:
        jax.block_until_ready(compiled(state, xs))

    info = {"lower_s": lower_s, "compile_s": compile_s, "first_call_s": first_s, **_compiled_info(compiled)}
    return Runner("jax", step, info), {k: np.asarray(v)[:, 0] for k, v in maps.items()}


def _compiled_info(compiled: Any) -> dict[str, Any]:
    return {"xla_cost": xla_cost(compiled), "xla_memory": xla_memory(compiled)}


def jax_train_runner(
    model: nnx.Module, views: Mapping[str, np.ndarray], labels: np.ndarray, device: jax.Device
) -> Runner:
    """The trainer's jitted step (forward in train mode with dropout and drop-path, the DOVER loss Σ branches
    plcc + 0.3·rank of the per-video mean score, gradients, AdamW update), without EMA."""
    model.train()
    graphdef, params, stats = split_model(model)
    tx = make_optimizer(OPTIMIZER, params)
    fn = make_train_step(graphdef, tx, branches=tuple(views), loss_weights=LOSS_WEIGHTS)
    batch = {**views, "mos": labels, "source_id": np.zeros(len(labels), np.int32)}
    with jax.default_device(device):
        state = jax.device_put(init_state(params, stats, tx, ema=False), device)
        batch = jax.device_put(batch, device)
        t0 = time.perf_counter()
        lowered = jax.jit(fn, donate_argnums=0).lower(state, batch)
        lower_s = time.perf_counter() - t0
        compiled, compile_s = _timed(lowered.compile)
    carry = [state]

    def step() -> float:
        carry[0], aux = compiled(carry[0], batch)
        return float(jax.block_until_ready(aux["loss"]))

    loss, first_s = _timed(step)
    info = {"lower_s": lower_s, "compile_s": compile_s, "first_call_s": first_s, "first_loss": loss}
    return Runner("jax", step, {**info, **_compiled_info(compiled)})


def official_net(args: argparse.Namespace, weights: Mapping[str, np.ndarray]) -> tuple[Any, float]:
    """The official model from ``--torch-reference``, holding ``weights``; (net, seconds to build and load)."""
    from kvq_jax import torch_reference as tr

    t0 = time.perf_counter()
    net = tr.build_official_model(args.torch_reference, args.model)
    tr.load_weights(net, weights)
    return net, time.perf_counter() - t0


def torch_runners(
    args: argparse.Namespace,
    net: Any,
    views: Mapping[str, np.ndarray],
    labels: np.ndarray,
) -> tuple[list[Runner], dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """The official model ``net`` (eager, and compiled with --torch-compile) on the same inputs.

    Returns the runners, each implementation's eval score maps (for the agreement check) and torch facts.
    """
    import torch

    from kvq_jax import torch_reference as tr

    torch.set_num_threads(available_cores())
    use_cuda = args.device == "gpu" and torch.cuda.is_available()
    dev = torch.device("cuda" if use_cuda else "cpu")
    net.to(dev)

    def sync() -> None:
        if use_cuda:
            torch.cuda.synchronize()

    checkpointing = args.mode == "train" and args.torch_grad_checkpoint
    tr.set_grad_checkpointing(net, checkpointing)
    spec = get_spec(args.model)  # the official model takes clips normalised outside it, one clip per video
    inputs = {b: spec.branch(b).pixels(v[:, 0]) for b, v in views.items()}
    xs = {k: v.to(dev) for k, v in tr.to_torch_views(inputs).items()}
    y = torch.from_numpy(labels).to(dev)
    quiet = io.StringIO()  # the official code prints from inside some forwards

    def eval_maps(fn: Callable[[dict], dict]) -> dict[str, np.ndarray]:
        net.eval()
        with torch.inference_mode(), contextlib.redirect_stdout(quiet):
            out = fn(xs)
        quiet.seek(0), quiet.truncate()
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def forward(views_: dict) -> dict:
        return tr.branch_forward(net, views_)

    variants: list[tuple[str, Callable[[dict], dict]]] = [("torch_eager", forward)]
    if args.torch_compile:
        variants.append(("torch_compile", torch.compile(forward)))
    runners, outputs = [], {}
    facts = {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "device": str(dev),
        "swin_grad_checkpointing": checkpointing,
    }
    for name, fn in variants:
        try:
            maps, first_s = _timed(lambda fn=fn: eval_maps(fn))  # eager: warm-up; compiled: compilation
        except Exception as e:  # torch.compile can fail (no compiler, unsupported op): report, go on
            facts[f"{name}_error"] = f"{type(e).__name__}: {e}"[:2000]
            continue
        outputs[name] = maps
        info: dict[str, Any] = {"first_call_s": first_s}
        if args.mode == "infer":

            def step(fn=fn) -> None:
                with torch.inference_mode(), contextlib.redirect_stdout(quiet):
                    fn(xs)
                sync()
                quiet.seek(0), quiet.truncate()

        else:
            opt = torch.optim.AdamW(
                [
                    {"params": [p for n, p in net.named_parameters() if "backbone" in n.split(".")[0]]},
                    {"params": [p for n, p in net.named_parameters() if "backbone" not in n.split(".")[0]]},
                ],
                lr=OPTIMIZER["lr"],
                weight_decay=OPTIMIZER["weight_decay"],
            )
            opt.param_groups[0]["lr"] = OPTIMIZER["lr"] * OPTIMIZER["backbone_lr_mult"]

            def step(fn=fn, opt=opt) -> float:
                net.train()
                opt.zero_grad(set_to_none=True)
                with contextlib.redirect_stdout(quiet):
                    maps = fn(xs)
                preds = {b: s.reshape(s.shape[0], -1).mean(dim=1) for b, s in maps.items()}
                loss = tr.torch_vqa_loss(preds, y, LOSS_WEIGHTS["plcc"], LOSS_WEIGHTS["rank"])
                loss.backward()
                opt.step()
                sync()
                quiet.seek(0), quiet.truncate()
                return float(loss.detach())

            loss, info["first_train_step_s"] = _timed(step)
            info["first_loss"] = loss
        runners.append(Runner(name, step, info))
    return runners, outputs, facts


# ----------------------------------------------------------------------------------------------- report


def write_png(report: dict[str, Any], path: Path) -> None:
    """Bar chart: median latency per implementation with p10–p90 error bars, over all timed rounds and (when
    any) over the quiet rounds only; each PyTorch bar is annotated with its latency ratio to JAX."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = report["results"]
    names = list(impls)
    quiet = report["quiet"]
    groups = [("all rounds", "latency", report["speedup_paired"])]
    if quiet["rounds"]:
        groups.append(
            (f"quiet rounds (≤{quiet['threshold']:.0%} foreign CPU)", "latency_quiet", quiet["speedup_paired"])
        )
    colors = {"jax": "#1f77b4", "torch_eager": "#d62728", "torch_compile": "#ff7f0e"}
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    top = 0.0
    for g, (label, key, paired) in enumerate(groups):
        x = np.arange(len(names)) + (g - (len(groups) - 1) / 2) * width
        med = np.array([impls[n][key]["median_s"] for n in names])
        lo = med - np.array([impls[n][key]["p10_s"] for n in names])
        hi = np.array([impls[n][key]["p90_s"] for n in names]) - med
        ax.bar(
            x,
            med,
            width * 0.95,
            yerr=[lo, hi],
            capsize=5,
            color=[colors.get(n, "#7f7f7f") for n in names],
            hatch="//" if g else None,
            edgecolor="white" if g else None,
            label=f"{label}, n={impls['jax'][key]['n']}",
        )
        for i, n in enumerate(names):
            text = f"{med[i]:.3g} s"
            if n != "jax":
                text += f"\n{paired[n]['median']:.2f}× JAX"
            ax.annotate(
                text, (x[i], med[i] + hi[i]), ha="center", va="bottom", xytext=(0, 2), textcoords="offset points"
            )
        top = max(top, float((med + hi).max()))
    c, h = report["config"], report["host"]
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel(f"{c['mode']} latency per step (s)\nmedian, p10–p90")
    ax.set_ylim(0, top * 1.35)
    ax.legend(loc="upper left", fontsize=8)
    load = ", ".join(f"{v:.2f}" for v in report["load_average"]["before"])
    ax.set_title(
        f"{c['model']} [{c['branch']}] {c['mode']}, batch {c['batch']}, T={c['frames']}, {c['dtype']}\n"
        f"{h['cpu_model'] if h['device_platform'] == 'cpu' else h['device_kind']} · "
        f"{h['cores_available']} cores · load avg before {load} · ratio = per-round median",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in report["results"].items():
        lat = r["latency"]
        util = r.get("utilisation")
        lines.append(
            f"{name:14s} median {lat['median_s']:.4f}s  p10 {lat['p10_s']:.4f}  p90 {lat['p90_s']:.4f}  "
            f"min {lat['min_s']:.4f}  {r['videos_per_s']:.3f} videos/s  "
            f"peak mem {r['peak_memory']['peak_bytes'] / 2**30:.2f} GiB"
            + (f"  util {100 * util:.1f}%" if util is not None else "")
        )
    quiet = report["quiet"]
    lines.append(f"quiet rounds (other processes ≤ {quiet['threshold']:.0%} of the cores): {len(quiet['rounds'])}")
    for name, r in report["results"].items():
        if r["latency_quiet"]:
            q = r["latency_quiet"]
            lines.append(f"{name:14s} quiet median {q['median_s']:.4f}s  min {q['min_s']:.4f}  n {q['n']}")
    for name, paired in quiet["speedup_paired"].items():
        lines.append(f"{name} / jax per quiet round: median {paired['median']:.3f}")
    for name, ratio in report.get("speedup", {}).items():
        paired = report["speedup_paired"][name]
        lines.append(
            f"{name} / jax latency ratio: {ratio:.3f} (ratio of medians); per round: median "
            f"{paired['median']:.3f}, p10 {paired['p10']:.3f}, p90 {paired['p90']:.3f}"
        )
    if report.get("agreement"):
        a = report["agreement"]
        lines.append(f"agreement ({a['compared']}): worst rel err {a['worst']:.3e} (tol {a['tol']:g}) -> {a['ok']}")
    return lines


# ----------------------------------------------------------------------------------------------- main


def study_table(folder: Path) -> str:
    """A markdown table of every bench report in ``folder`` (a speed study): per run the JAX latency, the
    official PyTorch eager / compiled latencies and their ratio to JAX, JAX's utilisation of the device, and
    whether the score maps agreed."""
    lines = [
        "| model | mode | dtype | batch | device | JAX s/step | torch eager | torch.compile | eager/JAX | "
        "JAX util | agree |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        if not isinstance(report, dict) or report.get("schema") != SCHEMA:  # parity reports are lists
            continue
        c, r = report["config"], report["results"]
        median = {name: res["latency"]["median_s"] for name, res in r.items()}
        util = r["jax"].get("utilisation")
        agreement = report.get("agreement")
        cells = [
            c["model"],
            c["mode"],
            c["dtype"],
            str(c["batch"]),
            report["host"]["device_kind"],
            f"{median['jax']:.4f}",
            f"{median['torch_eager']:.4f}" if "torch_eager" in median else "—",
            f"{median['torch_compile']:.4f}" if "torch_compile" in median else "—",
            f"{median['torch_eager'] / median['jax']:.2f}×" if "torch_eager" in median else "—",
            f"{100 * util:.1f} %" if util else "—",
            ("yes" if agreement["ok"] else f"NO ({agreement['worst']:.1e})") if agreement else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kvq_jax.bench", description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("infer", "train"), default="infer")
    p.add_argument("--model", choices=model_names(), default=default_model())
    p.add_argument("--branch", default="all", help="'all' or one branch of the model (technical, aesthetic, ...)")
    p.add_argument("--batch", type=int, default=1, help="clips per step (one clip = one video)")
    p.add_argument(
        "--frames", type=int, help="frames per clip of the longest view (default: the model's, 32 for DOVER)"
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", choices=("cpu", "gpu", "tpu"), help="JAX backend (default: JAX's default)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per implementation after the first call")
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic weights and inputs")
    p.add_argument("--peak-tflops", type=float, help="device peak for the utilisation (default: looked up)")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--png", type=Path, help="write a bar chart here")
    p.add_argument("--torch-reference", type=Path, metavar="DIR", help="official checkout to compare against")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile of the official model")
    p.add_argument(
        "--torch-grad-checkpoint",
        action="store_true",
        help="train mode: keep the official Swin's activation recomputation on (its training default); "
        "off by default so both frameworks do the same arithmetic",
    )
    p.add_argument(
        "--quiet",
        type=float,
        default=0.1,
        help="a timed run is 'quiet' when other processes used at most this share of the cores meanwhile",
    )
    p.add_argument("--tol", type=float, help="max rel. error of the score maps vs torch (default by dtype)")
    args = p.parse_args(argv)
    branches = get_spec(args.model).branch_names
    if args.branch != "all" and args.branch not in branches:
        p.error(f"--branch {args.branch!r}: model {args.model} has branches {list(branches)} (or 'all')")
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be ≥ 1")
    if args.warmup < 0 or (args.frames is not None and args.frames < 1):
        p.error("--warmup must be ≥ 0 and --frames ≥ 1")
    if args.torch_compile and not args.torch_reference:
        p.error("--torch-compile needs --torch-reference DIR")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--table"]:  # python -m kvq_jax.bench --table DIR: the markdown table of a speed study
        if len(argv) != 2:
            raise SystemExit("usage: python -m kvq_jax.bench --table DIR")
        print(study_table(Path(argv[1])))
        return 0
    args = parse_args(argv)
    device = jax.devices(args.device)[0] if args.device else jax.devices()[0]
    dtype = jnp.dtype(args.dtype)
    load_before = list(os.getloadavg())
    branches = get_spec(args.model).branch_names if args.branch == "all" else (args.branch,)
    views = bench_views(args.model, branches, args.batch, args.frames, args.seed)
    labels = bench_labels(args.batch, args.seed)
    frames = max(v.shape[2] for v in views.values())
    if args.mode == "train" and args.batch < 2:
        print(
            "note: with --batch 1 the PLCC and rank losses are constant (zero gradients); use ≥ 2",
            file=sys.stderr,
        )

    with jax.default_device(device):
        model = get_model(args.model, dtype=dtype, seed=args.seed)
        weights = reference_state_dict(model, args.seed)
        nnx.update(model, convert_state_dict(weights, model))

    net = None
    if args.torch_reference:  # fail fast, before the long JAX compile, if the checkout does not fit
        print("building the official PyTorch model ...", file=sys.stderr)
        net, build_s = official_net(args, weights)
    print(f"compiling the JAX {args.mode} step of {args.model} ...", file=sys.stderr)
    reference: dict[str, dict[str, np.ndarray]] = {}
    if args.mode == "infer":
        jax_runner, jax_maps = jax_infer_runner(model, views, device)
    else:
        if net is not None:  # same weights: check the eval forward first, then train from there
            _, jax_maps = jax_infer_runner(model, views, device)
        jax_runner = jax_train_runner(model, views, labels, device)
    runners = [jax_runner]
    torch_facts: dict[str, Any] = {}
    if net is not None:
        t_runners, reference, torch_facts = torch_runners(args, net, views, labels)
        torch_facts["build_and_load_s"] = build_s
        runners += t_runners

    peaks = {}
    # Warm-up under the memory probe. PyTorch first: after XLA:CPU has run, gigabytes it freed can stay
    # resident and would hide a later probe's growth; PyTorch leaves little behind (see measure_peak_memory).
    for r in reversed(runners):
        peaks[r.name] = measure_peak_memory(lambda r=r: [r.step() for _ in range(max(args.warmup, 1))], device)
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    foreign: dict[str, list[float | None]] = {r.name: [] for r in runners}
    for _ in tqdm(range(args.repeats), desc="timed runs", unit="round", file=sys.stderr):
        for r in runners:  # interleaved: one run of each implementation per round
            busy0, own0 = machine_cpu_s(), own_cpu_s()
            _, dt = _timed(r.step)
            busy1, own1 = machine_cpu_s(), own_cpu_s()
            times[r.name].append(dt)
            foreign[r.name].append(foreign_share(busy1 - busy0, own1 - own0, dt) if busy0 is not None else None)
    quiet_rounds = [
        i for i in range(args.repeats) if all(f[i] is not None and f[i] <= args.quiet for f in foreign.values())
    ]
    load_after = list(os.getloadavg())

    flops = jax_runner.info["xla_cost"]["flops"]
    peak, peak_source = (
        (args.peak_tflops, "--peak-tflops") if args.peak_tflops else device_peak_tflops(device, args.dtype)
    )
    ceiling = matmul_ceiling_tflops(device, dtype)
    results = {}
    for r in runners:
        lat = latency_stats(times[r.name])
        achieved = flops / lat["median_s"] / 1e12 if flops else None
        results[r.name] = {
            **r.info,
            "latency": lat,
            "videos_per_s": args.batch / lat["median_s"],
            "peak_memory": peaks[r.name],
            "achieved_tflops": achieved,
            "utilisation": achieved / peak if achieved and peak else None,
            "utilisation_vs_matmul_ceiling": achieved / ceiling if achieved else None,
            "foreign_cpu_share": foreign[r.name],
            "latency_quiet": latency_stats([times[r.name][i] for i in quiet_rounds]) if quiet_rounds else None,
        }
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "config": {
            "mode": args.mode,
            "model": args.model,
            "branch": args.branch,
            "branches": list(branches),
            "batch": args.batch,
            "frames": frames,
            "input_shapes": {k: list(v.shape) for k, v in views.items()},
            "input_dtype": "uint8",
            "dtype": args.dtype,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seed": args.seed,
            "torch_reference": str(args.torch_reference) if args.torch_reference else None,
        },
        "host": host_info(device),
        "load_average": {"before": load_before, "after": load_after},
        "flops_per_step": flops,
        "flops_source": "XLA cost analysis of the JAX program (used for every implementation)",
        "peak_tflops": peak,
        "peak_source": peak_source,
        "matmul_ceiling_tflops": ceiling,
        "results": results,
        "speedup": {
            n: results[n]["latency"]["median_s"] / results["jax"]["latency"]["median_s"] for n in results if n != "jax"
        },
        "speedup_paired": {n: paired_ratios(times[n], times["jax"]) for n in results if n != "jax"},
        "quiet": {
            "threshold": args.quiet,
            "rounds": quiet_rounds,
            "speedup_paired": {
                n: paired_ratios([times[n][i] for i in quiet_rounds], [times["jax"][i] for i in quiet_rounds])
                for n in results
                if n != "jax" and quiet_rounds
            },
        },
        "torch": torch_facts or None,
        "agreement": None,
    }
    status = 0
    if reference:
        tol = (
            args.tol
            if args.tol is not None
            else (1e-3 if args.dtype == "float32" and device.platform == "cpu" else 3e-2)
        )
        checks = {name: agreement(jax_maps, maps, tol) for name, maps in reference.items()}
        worst = max(checks.values(), key=lambda c: c["worst"])
        report["agreement"] = {
            **worst,
            "compared": "jax vs " + ", ".join(checks) + " score maps (eval forward)",
            "per_implementation": checks,
        }
        status = 0 if all(c["ok"] for c in checks.values()) else 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        write_png(report, args.png)
    print("\n".join(summary_lines(report)))
    if status:
        print("FAIL: the JAX and PyTorch score maps disagree beyond the tolerance", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
