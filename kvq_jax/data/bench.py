"""Data-path benchmark: decoded-and-viewed videos per second for one worker process.

Why: decoding, not the model, bounds VQA training and evaluation on CPU hosts (a DOVER test sample touches
~128 frames spread over the whole video). This measures what one data-loader worker sustains for DOVER's
test-time views (technical: 3 clips of 32 fragment frames, aesthetic: 32 resized frames) and for its training
form (one clip per branch), and how the time splits between decoding (open + ``decode_frames``) and building
the views (fragments / resize).

It encodes its own clip (PyAV libx264 ``veryfast``, QP 27, GOP 32, 10 s at 30 fps, 720x1280 portrait by
default) with a textured camera pan and a bouncing sprite, so the numbers do not depend on any dataset.

``--preextract`` compares, for the training form, the video's bytes (what a record holds) with its frames
pre-extracted as JPEG (``kvq_jax.data.frames``, what ``--frames jpeg`` adds to a record): videos/s, the bytes
per video, the extraction time, and how far the frames and the views are from those of the video decode.

Usage::

    python -m kvq_jax.data.bench --out bench_data.json [--seconds 20] [--size 720x1280] [--frames 300]
    python -m kvq_jax.data.bench --preextract --out data/bench/preextract_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from kvq_jax.data import decode, frames
from kvq_jax.data.decode import VideoSource, decode_frames, open_video
from kvq_jax.data.views import ViewSpec, make_view, sample_view_indices, sample_views


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Natural-ish texture, uint8 [H, W, 3]: luma detail at three scales, a slow colour tint, and gratings."""
    img = np.zeros((height, width, 3), np.float32)
    for sigma, weight, channels in ((24.0, 25.0, 3), (12.0, 55.0, 1), (4.0, 30.0, 1), (1.5, 10.0, 1)):
        noise = rng.standard_normal((height, width, channels)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigma).reshape(height, width, channels)
        img += weight * noise / (noise.std() + 1e-6)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(3):
        angle, period = rng.uniform(0, math.pi), rng.uniform(12, 80)
        wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        img += rng.uniform(8, 20) * wave[..., None]
    return np.clip(img + 128.0, 0, 255).astype(np.uint8)


def render_clip(path: Path, width: int, height: int, frames: int, fps: int, seed: int) -> dict[str, float]:
    """Encode a panning, textured clip with a bouncing sprite (x264 veryfast, QP 27, GOP 32) to ``path``."""
    rng = np.random.default_rng(seed)
    pad = max(8, min(width, height) // 6)
    canvas = _texture(rng, height + 2 * pad, width + 2 * pad)
    side = max(8, min(width, height) // 5)
    sprite = _texture(rng, side, side)
    pos, vel = np.array([height / 3, width / 3]), np.array([height / 47, width / 61])
    start = time.perf_counter()
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "qp": "27", "g": "32"}
        for t in tqdm(range(frames), desc="encoding benchmark clip", unit="frame", leave=False):
            oy = round(pad + pad * 0.9 * math.sin(2 * math.pi * t / (2.3 * fps)))
            ox = round(pad + pad * 0.9 * math.sin(2 * math.pi * t / (3.1 * fps) + 1.0))
            frame = canvas[oy : oy + height, ox : ox + width].copy()
            pos += vel
            for axis, limit in enumerate((height - side, width - side)):
                if not 0 <= pos[axis] <= limit:
                    vel[axis] = -vel[axis]
                    pos[axis] = min(max(pos[axis], 0), limit)
            y, x = int(pos[0]), int(pos[1])
            frame[y : y + side, x : x + side] = sprite
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return {"encode_s": round(time.perf_counter() - start, 2), "bytes": path.stat().st_size}


def measure(
    path: VideoSource, views: Mapping[str, ViewSpec], seconds: float, seed: int, min_videos: int = 3
) -> dict[str, float]:
    """Run the sample_views pipeline on ``path`` (a video, or pre-extracted frames) for ``seconds`` (at least
    ``min_videos`` times), timing its two halves: decode (open, sample indices, ``decode_frames`` on the union)
    and views (``make_view``)."""
    rng = np.random.default_rng(seed)
    decode_s, view_s, cpu_s, decoded = [], [], [], []
    bar = tqdm(desc="videos", unit="video", leave=False)
    wall_start = time.perf_counter()
    while time.perf_counter() - wall_start < seconds or len(decode_s) < min_videos:
        cpu0, t0 = time.process_time(), time.perf_counter()
        reader = open_video(path)
        indices = sample_view_indices(len(reader), views, rng)
        wanted = np.unique(np.concatenate(list(indices.values())))
        frames = decode_frames(reader, wanted)
        del reader
        t1 = time.perf_counter()
        for branch, spec in views.items():
            make_view(frames, spec, rng, order=np.searchsorted(wanted, indices[branch]))
        t2 = time.perf_counter()
        del frames  # ~300 MB at 720p: do not hold it while the next video decodes
        decode_s.append(t1 - t0)
        view_s.append(t2 - t1)
        cpu_s.append(time.process_time() - cpu0)
        decoded.append(wanted.size)
        bar.update()
    bar.close()
    total = np.add(decode_s, view_s)
    return {
        "videos": len(total),
        "videos_per_s": round(len(total) / float(total.sum()), 3),
        "ms_per_video_mean": round(1e3 * float(total.mean()), 1),
        "ms_per_video_median": round(1e3 * float(np.median(total)), 1),
        "decode_ms_mean": round(1e3 * float(np.mean(decode_s)), 1),
        "views_ms_mean": round(1e3 * float(np.mean(view_s)), 1),
        "decode_share": round(float(np.sum(decode_s) / total.sum()), 3),
        "cpu_ms_per_video_mean": round(1e3 * float(np.mean(cpu_s)), 1),
        "distinct_frames_per_video_mean": round(float(np.mean(decoded)), 1),
    }


def measure_workers(path: VideoSource, views: Mapping[str, ViewSpec], seconds: float, seed: int, workers: int) -> dict:
    """:func:`measure` in ``workers`` processes at once (seeds ``seed + i``): their summed rate is what a host's
    data loader sustains with that many workers; one worker is measured in this process."""
    if workers == 1:
        return measure(path, views, seconds, seed=seed)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(
            pool.map(measure, [path] * workers, [views] * workers, [seconds] * workers, range(seed, seed + workers))
        )
    return {
        "workers": workers,
        "videos_per_s": round(sum(p["videos_per_s"] for p in parts), 3),
        "cpu_ms_per_video_mean": round(float(np.mean([p["cpu_ms_per_video_mean"] for p in parts])), 1),
        "per_worker": parts,
    }


def preextract(clip: Path, views: Mapping[str, ViewSpec], args: argparse.Namespace) -> dict[str, object]:
    """Training views from the clip's bytes vs from its frames pre-extracted at native resolution (JPEG)."""
    video = clip.read_bytes()
    options = frames.FrameOptions()
    start = time.perf_counter()
    extracted = frames.extract(video, options)
    extract_s = time.perf_counter() - start
    jpeg = decode.JpegFrames(extracted["frames"], float(extracted["fps"]))
    every = np.arange(0, len(jpeg.frames), 10)
    err = np.abs(decode_frames(jpeg, every).astype(np.int16) - decode_frames(video, every))
    view_err = {}
    for branch in views:
        a = sample_views(video, views, np.random.default_rng(args.seed))[branch]
        b = sample_views(jpeg, views, np.random.default_rng(args.seed))[branch]
        view_err[branch] = round(float(np.abs(a.astype(np.int16) - b).mean()), 3)
    frame_bytes = sum(len(f) for f in jpeg.frames)
    results = {}
    for name, source in (("video_bytes", video), ("jpeg_frames", jpeg)):
        results[name] = measure_workers(source, views, args.seconds, args.seed, args.workers)
        print(f"{name}: {results[name]}", flush=True)
    return {
        "frames": options.as_dict() | {"chroma": "4:4:4"},
        "video_bytes": len(video),
        "frames_bytes": frame_bytes,
        "record_size_ratio": round((len(video) + frame_bytes) / len(video), 2),
        "extract_s_per_video": round(extract_s, 2),
        "frame_error_vs_decode": {"max": int(err.max()), "mean": round(float(err.mean()), 3), "frames": every.size},
        "view_mean_abs_error_vs_decode": view_err,
        "speedup": round(results["jpeg_frames"]["videos_per_s"] / results["video_bytes"]["videos_per_s"], 2),
        "results": results,
    }


def host_info() -> dict[str, object]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "decord": importlib.metadata.version("decord") if decode.decord is not None else None,
        "av": av.__version__,
    }


def _parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError("size must be WxH with even sides >= 32")
    return width, height


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per configuration")
    parser.add_argument("--size", type=_parse_size, default=(720, 1280), help="WxH of the clip (720x1280)")
    parser.add_argument("--frames", type=int, default=300, help="frames in the clip (300 = 10 s at 30 fps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes measuring at once (the host's aggregate rate)"
    )
    parser.add_argument(
        "--preextract", action="store_true", help="training views from video bytes vs pre-extracted JPEG frames"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    width, height = args.size
    from kvq_jax.models import default_model, get_spec  # imported here: the rest of this module needs no models

    spec = get_spec(default_model())
    configs = {f"{spec.name}_test": spec.views, f"{spec.name}_train": spec.train_views}
    report: dict[str, object] = {"host": host_info()}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "bench_clip.mp4"
        clip_info = render_clip(clip, width, height, args.frames, fps=30, seed=args.seed)
        results = {}
        if args.preextract:
            configs = {f"{spec.name}_train": spec.train_views}
            results[f"{spec.name}_train"] = preextract(clip, spec.train_views, args)
        else:
            for name, views in configs.items():
                results[name] = measure_workers(clip, views, args.seconds, args.seed, args.workers)
                print(f"{name}: {results[name]}", flush=True)
    report["settings"] = {
        "clip": {"width": width, "height": height, "frames": args.frames, "fps": 30, **clip_info},
        "encoder": "PyAV libx264 preset=veryfast qp=27 g=32 yuv420p",
        "seconds_per_config": args.seconds,
        "sampling": f"random offsets, np.random.default_rng({args.seed})",
        "decoder": f"{'decord' if decode.decord is not None else 'PyAV'} (PyAV where decord fails), one decoding "
        "thread, one reader per video (as in a data-loader worker)",
        "workers": args.workers,
        "views": {name: {b: str(spec) for b, spec in views.items()} for name, views in configs.items()},
    }
    report["results"] = results
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
