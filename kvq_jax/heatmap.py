"""Quality maps as pictures: the per-position score map drawn over the frames it was computed from.

The head of every model scores each position of the backbone's output, a (T', H', W') map per clip. For
the fragment view (DOVER's technical branch, FAST-VQA's fragments) each map cell covers one 32x32 fragment
of the grid (the Swin/ConvNeXt backbones downsample space by 32, so a 7x7 grid gives a 7x7 map) and two
frames (time is downsampled by 2). So the natural canvas is the fragment view itself: the map is aligned to
it cell for cell, whereas a full frame would need the fragments' sampled positions.

One PNG per video: a few frames spread over the clips, each with the map of its time step laid over it,
then the mean map over clips and time with its values written in the cells, and one shared colour bar.
Red is low, green high; the scale is the video's own raw map range.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from kvq_jax.data.views import ViewSpec

CMAP = "RdYlGn"
_MAX_ANNOTATED_CELLS = 100  # write values into the mean map up to a 10x10 grid


def heatmap_branch(views: Mapping[str, ViewSpec]) -> str:
    """The branch whose map is drawn: the first fragment view (technical / fragments)."""
    for branch, spec in views.items():
        if spec.kind == "fragments":
            return branch
    raise ValueError(f"no fragment view to draw a quality map on (views: {sorted(views)})")


def heatmap_path(out_dir: str | os.PathLike, name: str) -> Path:
    """``out_dir/<name with '/' as '__'>.png``, e.g. ``test/0001.mp4`` -> ``test__0001.mp4.png``."""
    flat = name.replace("\\", "/").strip("/").replace("/", "__").replace(":", "_") or "video"
    return Path(out_dir) / f"{flat}.png"


def frame_picks(clips: int, frames: int, count: int) -> list[tuple[int, int]]:
    """(clip, frame) at the centres of ``count`` equal parts of all ``clips * frames`` frames."""
    total = clips * frames
    count = min(count, total)
    flat = ((np.arange(count) + 0.5) * total / count).astype(int)
    return [divmod(int(f), frames) for f in flat]


def cell_decimals(values: np.ndarray) -> int:
    """Decimals that tell the cells apart: two more than the order of magnitude of their spread (2 to 5)."""
    spread = float(np.ptp(values))
    if spread <= 0:
        return 2
    return int(np.clip(1 - np.floor(np.log10(spread)), 2, 5))


def cell_text(value: float, decimals: int) -> str:
    """The value with ``decimals`` decimals, without the sign of a value that rounds to zero."""
    text = f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0 else text


def render_heatmap(
    view: np.ndarray,
    score_map: np.ndarray,
    out_path: str | os.PathLike,
    *,
    title: str,
    num_frames: int = 4,
    dpi: int = 110,
) -> Path:
    """Write the PNG for one video and return its path.

    ``view``: uint8 (clips, T, H, W, 3), the fragment view as the model saw it; ``score_map``: float
    (clips, T', H', W'), the head's map for it. Frame t of a clip shows map step ``t * T' // T``.
    """
    if view.ndim != 5 or view.shape[-1] != 3 or view.dtype != np.uint8:
        raise ValueError(f"view must be uint8 (clips, T, H, W, 3), got {view.dtype} {view.shape}")
    if score_map.ndim != 4 or score_map.shape[0] != view.shape[0]:
        raise ValueError(f"score map {score_map.shape} does not match the view's {view.shape[0]} clips")
    if not np.all(np.isfinite(score_map)):
        raise ValueError("score map has non-finite values")
    clips, frames, height, width, _ = view.shape
    steps, rows, cols = score_map.shape[1:]
    picks = frame_picks(clips, frames, num_frames)
    lo, hi = float(score_map.min()), float(score_map.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 1e-6, hi + 1e-6
    norm = colors.Normalize(lo, hi)
    extent = (0, width, height, 0)

    panels = len(picks) + 1
    fig = Figure(figsize=(2.5 * panels + 1.0, 3.4), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no GUI backend, no pyplot state
    axes = fig.subplots(1, panels)
    for ax, (c, t) in zip(axes, picks, strict=False):
        ax.imshow(view[c, t], extent=extent)
        ax.imshow(
            score_map[c, min(t * steps // frames, steps - 1)],
            cmap=CMAP,
            norm=norm,
            alpha=0.45,
            extent=extent,
            interpolation="nearest",
        )
        _draw_grid(ax, width, height, rows, cols)
        ax.set_title(f"clip {c + 1}, frame {t + 1}/{frames}", fontsize=8)
    mean = score_map.mean(axis=(0, 1))
    ax = axes[-1]
    ax.imshow(mean, cmap=CMAP, norm=norm, extent=extent, interpolation="nearest")
    _draw_grid(ax, width, height, rows, cols)
    if rows * cols <= _MAX_ANNOTATED_CELLS:
        size = max(4.0, min(8.0, 40.0 / max(rows, cols)))
        decimals = cell_decimals(mean)
        for i in range(rows):
            for j in range(cols):
                value = mean[i, j]
                ax.text(
                    (j + 0.5) * width / cols,
                    (i + 0.5) * height / rows,
                    cell_text(value, decimals),
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="black" if 0.2 < norm(value) < 0.85 else "white",
                )
    ax.set_title("mean over clips and time", fontsize=8)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    bar = fig.colorbar(ScalarMappable(norm, CMAP), ax=list(axes), shrink=0.85, pad=0.01)
    bar.set_label("local quality (raw, higher = better)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _draw_grid(ax, width: int, height: int, rows: int, cols: int) -> None:
    """Thin lines between map cells (= fragment boundaries on the fragment view)."""
    for k in range(1, cols):
        ax.axvline(k * width / cols, color="white", linewidth=0.4, alpha=0.5)
    for k in range(1, rows):
        ax.axhline(k * height / rows, color="white", linewidth=0.4, alpha=0.5)
