"""A synthetic KVQ-like dataset: procedural portrait clips processed like KVQ's workflows.

Why: the real KVQ set (600 sources x 7 videos, MOS 1-5 in 0.5 steps) is not redistributable, and CI needs
data with the same *structure* — homologous groups of 7 videos per source, a QP ladder, enhancement and
degradation steps, a rank-pair sheet — and a label that carries real signal. Every source clip is rendered
procedurally (one of five scenarios, with a camera pan and a bouncing sprite), then turned into 7 versions:

* variant 0 (the "user upload"): mild UGC blur or noise, QP 16-21;
* variants 1-6: one QP from each of the six groups [16-21] [22-27] [28-32] [33-37] [38-42] [43-47] (shuffled)
  plus one random extra step: none, blur, noise, downscale-upscale, or "enhancement" (the UGC blur/noise cut
  to 40 % plus unsharp-mask sharpening).

The MOS is a smooth monotone function of the severity of these knobs plus a per-source bias (see
:func:`synthetic_mos`); ``score`` is rounded to 0.5 like KVQ's labels. The output is in the layout that
``kvq_jax.data.kvq_layout`` reads for the real KVQ download (see that module), plus a ``metadata.csv``::

    OUT/train/0001.mp4 ...           7 consecutive numbers per source (numbered over train, val, test)
    OUT/{train,val,test}_data.csv    header ``filename,score``; filename relative to OUT ("train/0001.mp4")
    OUT/rank-pair-{split}.xlsx       sheets ``source``, ``nonsource``: video1, video2, rank (1 = first better)
    OUT/metadata.csv                 filename, split, source_id, variant, scenario, process, qp, blur, noise,
                                     scale, sharpen, mos_cont, score
    OUT/.kvq_synthetic.json          completion marker with the generation parameters (written last)

Generation is deterministic for a seed, byte for byte: x264 runs with ``threads=1`` (its output depends on the
thread count) and the .xlsx zip entries carry a fixed timestamp.

CLI: ``python -m kvq_jax.data.synthetic --out data/kvq_synthetic [--sources 16] [--seed 0] [--size 180x320]
[--frames 64]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

MARKER = ".kvq_synthetic.json"
FORMAT_VERSION = 1
VIDEOS_PER_SOURCE = 7
SPLITS = ("train", "val", "test")
SCENARIOS = ("landscape", "crowd", "cg", "caption", "stage")
QP_GROUPS = ((16, 21), (22, 27), (28, 32), (33, 37), (38, 42), (43, 47))
PROCESSES = ("none", "blur", "noise", "scale", "enhance")
EXTRA_BLUR = (0.8, 1.5, 2.5)
EXTRA_NOISE = (6.0, 12.0, 20.0)
SCALES = (0.75, 0.5, 0.33)
SHARPEN = (0.5, 1.0, 2.0)
FPS = 30
GOP = 32
# Logistic mapping severity -> MOS. A slope of 2 with centre 1 spreads the labels over 1.0-4.5 roughly
# uniformly (a steeper slope piles them up at the two ends).
MOS_SLOPE = 2.0
MOS_CENTRE = 1.0
SOURCE_BIAS_STD = 0.25


@dataclass(frozen=True)
class Knobs:
    """The processing applied to one video (effective values, UGC part included)."""

    process: str
    qp: int
    blur: float  # Gaussian sigma in pixels
    noise: float  # additive Gaussian noise sigma in 8-bit levels
    scale: float  # downscale factor before upscaling back (1 = none)
    sharpen: float  # unsharp-mask amount (0 = none)


@dataclass(frozen=True)
class VideoRow:
    """One line of metadata.csv."""

    filename: str
    split: str
    source_id: int
    variant: int
    scenario: str
    process: str
    qp: int
    blur: float
    noise: float
    scale: float
    sharpen: float
    mos_cont: float
    score: float


# ------------------------------------------------------------------------------------------------ labels


def severity(k: Knobs) -> float:
    """Distortion severity, monotone in every knob; QP dominates as it does in KVQ's workflows."""
    return (
        1.6 * max(0.0, (k.qp - 20) / 27) ** 1.5
        + 0.45 * k.blur
        + k.noise / 20.0
        + 0.4 * (1.0 / k.scale - 1.0)
        + 0.5 * max(0.0, k.sharpen - 0.8)
    )


def synthetic_mos(k: Knobs, source_bias: float) -> float:
    """Continuous MOS in (1, 5): a logistic of (centre + source bias - severity)."""
    return 1.0 + 4.0 / (1.0 + math.exp(-MOS_SLOPE * (MOS_CENTRE + source_bias - severity(k))))


def round_score(mos: float) -> float:
    """KVQ-style label: nearest 0.5 step, clipped to [1, 5]."""
    return float(min(5.0, max(1.0, round(mos * 2.0) / 2.0)))


def sample_knobs(rng: np.random.Generator) -> list[Knobs]:
    """The 7 processing recipes of one source: the upload, then one version per QP group."""
    ugc_blur, ugc_noise = 0.0, 0.0
    if rng.random() < 0.5:
        ugc_blur = round(float(rng.uniform(0.3, 1.0)), 4)
    else:
        ugc_noise = round(float(rng.uniform(2.0, 6.0)), 4)
    out = [Knobs("none", int(rng.integers(16, 22)), ugc_blur, ugc_noise, 1.0, 0.0)]
    groups = list(QP_GROUPS)
    order = rng.permutation(len(groups))
    for gi in order:
        lo, hi = groups[gi]
        qp = int(rng.integers(lo, hi + 1))
        process = PROCESSES[int(rng.integers(len(PROCESSES)))]
        blur, noise, scale, sharpen = ugc_blur, ugc_noise, 1.0, 0.0
        if process == "blur":
            blur = math.hypot(ugc_blur, EXTRA_BLUR[int(rng.integers(3))])
        elif process == "noise":
            noise = math.hypot(ugc_noise, EXTRA_NOISE[int(rng.integers(3))])
        elif process == "scale":
            scale = SCALES[int(rng.integers(3))]
        elif process == "enhance":
            blur, noise = 0.4 * ugc_blur, 0.4 * ugc_noise
            sharpen = SHARPEN[int(rng.integers(3))]
        out.append(Knobs(process, qp, round(blur, 4), round(noise, 4), scale, sharpen))
    return out


# --------------------------------------------------------------------------------------------- rendering


def _fractal(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Zero-mean unit-std noise field with a 1/f^beta amplitude spectrum (natural-image-like texture)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**beta
    spec[0, 0] = 0.0
    field = np.fft.irfft2(spec, s=(h, w))
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _colourise(rng: np.random.Generator, lum: np.ndarray, spread: float) -> np.ndarray:
    """Map a luminance field to RGB with a random palette and low-frequency chroma."""
    h, w = lum.shape
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    chroma = np.stack([_fractal(rng, h, w, 2.5) for _ in range(3)], axis=-1) * 18.0
    return base + lum[..., None] * spread + chroma


def _render_canvas(rng: np.random.Generator, scenario: str, h: int, w: int) -> np.ndarray:
    """A float32 RGB canvas (0-255) larger than a frame, to pan over."""
    if scenario == "landscape":
        img = _colourise(rng, _fractal(rng, h, w, 2.0), 45.0)
        sky = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None, None] ** 2
        sky_rgb = np.array([150, 190, 240], np.float32) * rng.uniform(0.8, 1.05)
        horizon = rng.uniform(0.25, 0.45)
        mask = np.clip((np.linspace(0, 1, h)[:, None, None] < horizon) * 1.0, 0, 1) * sky
        img = img * (1 - mask) + sky_rgb * mask
    elif scenario == "crowd":
        img = _colourise(rng, _fractal(rng, h, w, 0.9), 55.0)
    elif scenario == "cg":
        img = np.empty((h, w, 3), np.float32)
        img[:] = rng.uniform(30, 220, size=3)
        for _ in range(int(rng.integers(12, 24))):
            colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            if rng.random() < 0.5:
                x1, y1 = x0 + int(rng.integers(w // 10, w // 2)), y0 + int(rng.integers(h // 10, h // 3))
                cv2.rectangle(img, (x0, y0), (x1, y1), colour, thickness=-1)
            else:
                cv2.circle(img, (x0, y0), int(rng.integers(w // 20, w // 5)), colour, thickness=-1)
    elif scenario == "caption":
        img = _colourise(rng, _fractal(rng, h, w, 1.6), 35.0)
        letters = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"))
        scale = max(0.35, w / 500.0)
        outline, fill = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)  # putText wants 8-bit images
        for row in range(int(rng.integers(3, 7))):
            text = "".join(rng.choice(letters, size=int(rng.integers(6, 14))))
            y = int(h * (0.15 + 0.13 * row))
            x = int(rng.integers(0, max(1, w // 4)))
            cv2.putText(outline, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 3, cv2.LINE_AA)
            cv2.putText(fill, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 1, cv2.LINE_AA)
        img = img * (1.0 - outline[..., None] / 255.0)
        img = img + (255.0 - img) * (fill[..., None] / 255.0)
    elif scenario == "stage":
        img = 25.0 + _colourise(rng, _fractal(rng, h, w, 1.8), 10.0) * 0.15
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.05, 0.2) * w
            colour = rng.uniform(120, 255, size=3).astype(np.float32)
            img = img + colour * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    else:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")
    return np.clip(img, 0, 255).astype(np.float32)


def render_source(rng: np.random.Generator, scenario: str, height: int, width: int, frames: int) -> np.ndarray:
    """A clean clip uint8 [T, H, W, 3]: a sinusoidal camera pan over a canvas plus a bouncing sprite."""
    pad_y, pad_x = max(4, height // 4), max(4, width // 4)
    canvas = _render_canvas(rng, scenario, height + 2 * pad_y, width + 2 * pad_x)
    sprite_h, sprite_w = max(8, height // 6), max(8, width // 4)
    sprite = _colourise(rng, _fractal(rng, sprite_h, sprite_w, 1.2), 60.0)
    sprite_mask = np.zeros((sprite_h, sprite_w), np.float32)
    cv2.ellipse(sprite_mask, (sprite_w // 2, sprite_h // 2), (sprite_w // 2 - 1, sprite_h // 2 - 1), 0, 0, 360, 1, -1)
    sprite_mask = sprite_mask[..., None]
    amp_y, amp_x = rng.uniform(0.3, 1.0) * pad_y, rng.uniform(0.3, 1.0) * pad_x
    per_y, per_x = rng.uniform(40, 120), rng.uniform(40, 120)
    ph_y, ph_x = rng.uniform(0, 2 * np.pi, size=2)
    pos = np.array([rng.uniform(0, height - sprite_h), rng.uniform(0, width - sprite_w)])
    vel = rng.uniform(-1, 1, size=2) * np.array([height, width]) / 40.0
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        oy = round(pad_y + amp_y * math.sin(2 * math.pi * t / per_y + ph_y))
        ox = round(pad_x + amp_x * math.sin(2 * math.pi * t / per_x + ph_x))
        frame = canvas[oy : oy + height, ox : ox + width].copy()
        y, x = int(pos[0]), int(pos[1])
        region = frame[y : y + sprite_h, x : x + sprite_w]
        frame[y : y + sprite_h, x : x + sprite_w] = region * (1 - sprite_mask) + sprite * sprite_mask
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
        pos += vel
        for d, limit in enumerate((height - sprite_h, width - sprite_w)):
            if pos[d] < 0 or pos[d] > limit:
                vel[d] = -vel[d]
                pos[d] = min(max(pos[d], 0), limit)
    return out


# -------------------------------------------------------------------------------------------- processing


def process_clip(clip: np.ndarray, k: Knobs, rng: np.random.Generator) -> np.ndarray:
    """Apply blur -> noise -> downscale/upscale -> unsharp mask per frame (OpenCV; scipy is ~10x slower)."""
    t, h, w, _ = clip.shape
    noise_pool = None
    if k.noise > 0:
        noise_pool = rng.normal(0.0, k.noise, size=(4, h, w, 3)).astype(np.float32)
    out = np.empty_like(clip)
    for i in range(t):
        f = clip[i].astype(np.float32)
        if k.blur > 0:
            f = cv2.GaussianBlur(f, (0, 0), k.blur)
        if noise_pool is not None:
            f = f + np.roll(noise_pool[i % 4], shift=(i // 4) * 7, axis=(0, 1))
        if k.scale < 1.0:
            small = cv2.resize(
                f, (max(2, round(w * k.scale)), max(2, round(h * k.scale))), interpolation=cv2.INTER_AREA
            )
            f = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        if k.sharpen > 0:
            f = cv2.addWeighted(f, 1.0 + k.sharpen, cv2.GaussianBlur(f, (0, 0), 1.0), -k.sharpen, 0.0)
        out[i] = np.clip(f + 0.5, 0, 255).astype(np.uint8)
    return out


def encode_h264(clip: np.ndarray, qp: int, preset: str = "veryfast") -> bytes:
    """Encode uint8 RGB [T,H,W,3] to an H.264 mp4 at constant QP; threads=1 keeps the bytes reproducible."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": preset, "qp": str(qp), "g": str(GOP), "threads": "1"}
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ the data set


@dataclass(frozen=True)
class Params:
    """Everything that determines the generated bytes (stored in the marker file)."""

    sources: int
    seed: int
    width: int
    height: int
    frames: int
    preset: str = "veryfast"
    format_version: int = FORMAT_VERSION


def split_sources(n: int) -> dict[str, int]:
    """Sources per split, about 70/15/15; from 6 sources on, val and test get at least two each so that
    their ``nonsource`` rank sheets are not empty."""
    if n < 3:
        raise ValueError(f"need at least 3 sources (one per split), got {n}")
    least = 2 if n >= 6 else 1
    n_val = max(least, round(0.15 * n))
    n_test = max(least, round(0.15 * n))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def video_filename(split: str, source_id: int, variant: int) -> str:
    """KVQ-style name: 4-digit, 1-based, the 7 versions of a source are consecutive."""
    return f"{split}/{source_id * VIDEOS_PER_SOURCE + variant + 1:04d}.mp4"


def _make_source(args: tuple[Params, int, str, Path]) -> list[VideoRow]:
    """Render, process, encode and write the 7 videos of one source (a worker task)."""
    params, source_id, split, out_dir = args
    rng = np.random.default_rng([params.seed, source_id])
    scenario = SCENARIOS[int(rng.integers(len(SCENARIOS)))]
    bias = float(rng.normal(0.0, SOURCE_BIAS_STD))
    clean = render_source(rng, scenario, params.height, params.width, params.frames)
    rows = []
    for variant, k in enumerate(sample_knobs(rng)):
        data = encode_h264(process_clip(clean, k, rng), k.qp, params.preset)
        name = video_filename(split, source_id, variant)
        path = out_dir / name
        tmp = path.with_suffix(".mp4.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        mos = synthetic_mos(k, bias)
        rows.append(
            VideoRow(
                name,
                split,
                source_id,
                variant,
                scenario,
                k.process,
                k.qp,
                k.blur,
                k.noise,
                k.scale,
                k.sharpen,
                round(mos, 4),
                round_score(mos),
            )
        )
    return rows


def make_pairs(rows: Sequence[VideoRow], rng: np.random.Generator, same_source: bool) -> list[tuple[str, str, int]]:
    """Close-but-distinct rank pairs (0.05 < |dMOS| < 0.75), about one per video; rank 1 = video1 better.

    ``same_source`` picks the challenge's ``source`` sheet (homologous pairs) or ``nonsource``."""
    distinct = [
        (a, b)
        for i, a in enumerate(rows)
        for b in rows[i + 1 :]
        if (a.source_id == b.source_id) == same_source and abs(a.mos_cont - b.mos_cont) > 0.05
    ]
    close = [(a, b) for a, b in distinct if abs(a.mos_cont - b.mos_cont) < 0.75]
    candidates = close or distinct  # tiny splits may have no close pair at all
    take = min(len(candidates), len(rows))
    chosen = sorted(rng.choice(len(candidates), size=take, replace=False)) if take else []
    pairs = []
    for ci in chosen:
        a, b = candidates[ci]
        if rng.random() < 0.5:
            a, b = b, a
        pairs.append((a.filename, b.filename, 1 if a.mos_cont > b.mos_cont else 2))
    return pairs


def write_rank_xlsx(path: Path, sheets: dict[str, list[tuple[str, str, int]]]) -> None:
    """The challenge's rank-pair workbook, with fixed zip timestamps so the bytes are reproducible."""
    import datetime

    from openpyxl import Workbook

    wb = Workbook()
    wb.remove(wb.active)
    for title, pairs in sheets.items():
        ws = wb.create_sheet(title)
        ws.append(["video1", "video2", "rank"])
        for row in pairs:
            ws.append(list(row))
    stamp = datetime.datetime(2024, 1, 1)
    wb.properties.created = stamp
    raw = io.BytesIO()
    wb.save(raw)
    fixed = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(fixed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":  # openpyxl stamps "modified" with the time of saving
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>2024-01-01T00:00:00Z", data)
            entry = zipfile.ZipInfo(info.filename, date_time=(2024, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, data)
    path.write_bytes(fixed.getvalue())


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def is_complete(out_dir: str | os.PathLike, params: Params | None = None) -> bool:
    """True if ``out_dir`` holds a finished set (with exactly ``params``, when given)."""
    marker = Path(out_dir) / MARKER
    if not marker.is_file():
        return False
    return params is None or json.loads(marker.read_text()) == asdict(params)


def generate(
    out_dir: str | os.PathLike,
    sources: int = 16,
    seed: int = 0,
    size: tuple[int, int] = (180, 320),
    frames: int = 64,
    workers: int | None = None,
    preset: str = "veryfast",
    progress: bool = True,
) -> Path:
    """Generate the synthetic set into ``out_dir`` and return it; a no-op if a complete set is already there.

    ``size`` is (width, height), portrait by default. ``workers`` processes render and encode sources in
    parallel (default: one per CPU); ``workers <= 1`` runs in this process. Raises ``FileExistsError`` if
    ``out_dir`` holds a complete set made with different parameters (it never deletes existing data).
    """
    out = Path(out_dir)
    width, height = size
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"size must be even and at least 16x16 (yuv420p), got {width}x{height}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    params = Params(sources, seed, width, height, frames, preset)
    if is_complete(out, params):
        return out
    if is_complete(out):
        raise FileExistsError(
            f"{out} already holds a synthetic set made with {json.loads((out / MARKER).read_text())}; "
            f"choose another directory for {asdict(params)}"
        )
    per_split = split_sources(sources)
    tasks = []
    sid = 0
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        for _ in range(per_split[split]):
            tasks.append((params, sid, split, out))
            sid += 1
    workers = min(os.cpu_count() or 1, len(tasks)) if workers is None else workers
    bar = tqdm(total=len(tasks) * VIDEOS_PER_SOURCE, desc="synthetic KVQ", unit="video", disable=not progress)
    results: list[list[VideoRow]] = []
    if workers <= 1:
        for task in tasks:
            results.append(_make_source(task))
            bar.update(VIDEOS_PER_SOURCE)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for rows in pool.map(_make_source, tasks):
                results.append(rows)
                bar.update(VIDEOS_PER_SOURCE)
    bar.close()
    all_rows = [r for rows in results for r in rows]
    pair_rng = np.random.default_rng([seed, 1_000_003])
    for split in SPLITS:
        rows = [r for r in all_rows if r.split == split]
        _write_csv(out / f"{split}_data.csv", ("filename", "score"), [(r.filename, r.score) for r in rows])
        sheets = {"source": make_pairs(rows, pair_rng, True), "nonsource": make_pairs(rows, pair_rng, False)}
        write_rank_xlsx(out / f"rank-pair-{split}.xlsx", sheets)
    fields = list(VideoRow.__dataclass_fields__)
    _write_csv(out / "metadata.csv", fields, [[getattr(r, f) for f in fields] for r in all_rows])
    (out / MARKER).write_text(json.dumps(asdict(params), indent=1) + "\n")
    return out


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--size must look like 180x320 (WxH), got {text!r}") from e
    return w, h


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--sources", type=int, default=16, help="number of source clips (x7 videos)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_parse_size, default=(180, 320), help="WxH, portrait (default 180x320)")
    parser.add_argument("--frames", type=int, default=64, help="frames per clip at 30 fps")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    parser.add_argument("--preset", default="veryfast", help="x264 preset")
    args = parser.parse_args(argv)
    out = generate(args.out, args.sources, args.seed, args.size, args.frames, args.workers, args.preset)
    counts = {s: sum(1 for _ in (out / s).glob("*.mp4")) for s in SPLITS}
    print(f"synthetic KVQ set in {out}: {counts}")


if __name__ == "__main__":
    main()
