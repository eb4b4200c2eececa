"""kvq_jax.data.views against hand-computed cases and, where torch is installed, the official torch ops."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvq_jax.data.decode import VideoDecodeError, decode_frames, num_frames
from kvq_jax.data.views import (
    IMAGENET_255,
    PixelNorm,
    ViewSpec,
    fragment_grid,
    make_view,
    resize_view,
    sample_frame_indices,
    sample_view_indices,
    sample_views,
    short_side_size,
    spatial_fragments,
)
from kvq_jax.models import get_spec, model_names

DOVER_VIEWS = get_spec("dover").views  # test-time views: technical 3x32 fragment frames, aesthetic 32 resized

# ------------------------------------------------------------------------------------------ temporal sampler


def test_sampler_centred_segments():
    # N=100, 3 segments of L=33, span 4*2=8: centred offset (33-8)//2 = 12.
    spec = ViewSpec("fragments", clip_len=4, frame_interval=2, num_clips=3, aligned=4)
    expected = [12, 14, 16, 18, 45, 47, 49, 51, 78, 80, 82, 84]
    np.testing.assert_array_equal(sample_frame_indices(100, spec, None), expected)
    assert sample_frame_indices(100, spec, None).dtype == np.int64


def test_sampler_seeded_segments():
    spec = ViewSpec("fragments", clip_len=4, frame_interval=2, num_clips=3, aligned=4)
    offsets = np.random.default_rng(7).integers(0, 25, size=3)  # one offset per segment in [0, 33 - 8)
    expected = [33 * s + int(offsets[s]) + 2 * k for s in range(3) for k in range(4)]
    np.testing.assert_array_equal(sample_frame_indices(100, spec, np.random.default_rng(7)), expected)


def test_sampler_seeded_offsets_cover_their_range_and_stay_inside():
    spec = ViewSpec("fragments", clip_len=4, frame_interval=2, num_clips=3, aligned=4)
    rng = np.random.default_rng(0)
    firsts = np.stack([sample_frame_indices(100, spec, rng)[::4] for _ in range(400)])
    offsets = firsts - np.array([0, 33, 66])
    assert offsets.min() == 0 and offsets.max() == 24  # [0, L - span) exclusive, as np.random.randint
    assert len(np.unique(offsets)) == 25


def test_sampler_dover_technical_three_clips():
    # DOVER technical at test: Sampler(32, 3, 2) on 300 frames: L=100, span 64, centred offset 18.
    spec = DOVER_VIEWS["technical"]
    idx = sample_frame_indices(300, spec, None).reshape(3, 32)
    for clip, start in enumerate([18, 118, 218]):
        np.testing.assert_array_equal(idx[clip], start + 2 * np.arange(32))


def test_sampler_t_frag_form():
    # clip_len 8, t_frag 4 -> Sampler(2, 4, 2): 4 segments of L=16, 2 frames each, centred (16-4)//2 = 6.
    spec = ViewSpec("fragments", clip_len=8, frame_interval=2, t_frag=4, aligned=8)
    np.testing.assert_array_equal(sample_frame_indices(64, spec, None), [6, 8, 22, 24, 38, 40, 54, 56])


def test_sampler_t_frag_fresh_offsets_per_clip():
    spec = ViewSpec("fragments", clip_len=8, frame_interval=2, t_frag=4, num_clips=2, aligned=8)
    offsets = np.random.default_rng(3).integers(0, 12, size=(2, 4))  # (clip, segment), each in [0, 16 - 4)
    expected = [16 * s + int(offsets[c, s]) + 2 * k for c in range(2) for s in range(4) for k in range(2)]
    got = sample_frame_indices(64, spec, np.random.default_rng(3))
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got[:8], got[8:])


def test_sampler_dover_aesthetic_one_frame_per_segment():
    # Sampler(1, 32, 2): 300 frames -> L=9, span 2, centred offset (9-2)//2 = 3.
    spec = DOVER_VIEWS["aesthetic"]
    np.testing.assert_array_equal(sample_frame_indices(300, spec, None), 9 * np.arange(32) + 3)


def test_sampler_wraps_short_videos():
    spec = ViewSpec("fragments", clip_len=8, frame_interval=2, aligned=8)
    np.testing.assert_array_equal(sample_frame_indices(10, spec, None), [0, 2, 4, 6, 8, 0, 2, 4])
    np.testing.assert_array_equal(sample_frame_indices(10, spec, np.random.default_rng(0)), [0, 2, 4, 6, 8, 0, 2, 4])
    # 5 frames, 32 segments: every segment is empty (L=0), so all 32 samples are frame 0.
    np.testing.assert_array_equal(sample_frame_indices(5, DOVER_VIEWS["aesthetic"], None), [0] * 32)
    # 3 segments over 40 frames: L=13 < 64, offsets 0, wrap mod 40.
    idx = sample_frame_indices(40, DOVER_VIEWS["technical"], None).reshape(3, 32)
    np.testing.assert_array_equal(idx[1, :16], (13 + 2 * np.arange(16)) % 40)


def test_sampler_rejects_empty_video():
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(0, DOVER_VIEWS["technical"], None)


# ------------------------------------------------------------------------------------------ fragments


def coordinate_video(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 video whose pixel (t, y, x) is (y, x, 10 t): every output pixel says where it came from."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([y, x, 10 * t], axis=-1).astype(np.uint8)


def patch_origins(view: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """(T, fh, fw, 2) source (row, col) of the top-left pixel of each patch of a coordinate video's view."""
    return view[:, :: spec.fsize_h, :: spec.fsize_w, :2].astype(np.int64)


def assert_patches_are_contiguous(view: np.ndarray, spec: ViewSpec) -> None:
    """Every patch is an unbroken fsize_h x fsize_w window of the source starting at its origin."""
    ph, pw = spec.fsize_h, spec.fsize_w
    for t, origins in enumerate(patch_origins(view, spec)):
        for i in range(spec.fragments_h):
            for j in range(spec.fragments_w):
                patch = view[t, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw]
                rows, cols = np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij")
                np.testing.assert_array_equal(patch[..., 0], origins[i, j, 0] + rows)
                np.testing.assert_array_equal(patch[..., 1], origins[i, j, 1] + cols)


FRAG_SPEC = ViewSpec("fragments", clip_len=4, frame_interval=1, aligned=2)


def test_fragment_grid_hand_computed():
    # 250 rows: cells of 35, origins 35 i (min with 250-32=218 never binds); 240 cols: cells of 34.
    grid_h, grid_w, cell_h, cell_w = fragment_grid(250, 240, FRAG_SPEC)
    np.testing.assert_array_equal(grid_h, [0, 35, 70, 105, 140, 175, 210])
    np.testing.assert_array_equal(grid_w, [0, 34, 68, 102, 136, 170, 204])
    assert (cell_h, cell_w) == (35, 34)
    # A 64-row video: cells of 9, origins clamped at 64 - 32 = 32.
    np.testing.assert_array_equal(fragment_grid(64, 96, FRAG_SPEC)[0], [0, 9, 18, 27, 32, 32, 32])


def test_fragments_centred_offsets():
    video = coordinate_video(4, 250, 240)
    view = spatial_fragments(video, FRAG_SPEC, None)
    assert view.shape == (4, 224, 224, 3) and view.dtype == np.uint8
    origins = patch_origins(view, FRAG_SPEC)
    # centred offsets: (35-32)//2 = 1 and (34-32)//2 = 1
    np.testing.assert_array_equal(origins[0, :, 0, 0], [1, 36, 71, 106, 141, 176, 211])
    np.testing.assert_array_equal(origins[0, 0, :, 1], [1, 35, 69, 103, 137, 171, 205])
    assert (origins == origins[:1]).all()
    assert_patches_are_contiguous(view, FRAG_SPEC)
    np.testing.assert_array_equal(view[..., 2], (10 * np.arange(4))[:, None, None] * np.ones((1, 224, 224)))


def test_fragments_seeded_offsets_in_bounds_and_shared_within_aligned_chunks():
    video = coordinate_video(4, 250, 240)
    view = spatial_fragments(video, FRAG_SPEC, np.random.default_rng(11))
    assert_patches_are_contiguous(view, FRAG_SPEC)
    grid = np.meshgrid([0, 35, 70, 105, 140, 175, 210], [0, 34, 68, 102, 136, 170, 204], indexing="ij")
    off = patch_origins(view, FRAG_SPEC) - np.stack(grid, axis=-1)  # (T, 7, 7, 2) offsets inside the cells
    assert off[..., 0].min() >= 0 and off[..., 0].max() <= 2  # [0, 35 - 32)
    assert off[..., 1].min() >= 0 and off[..., 1].max() <= 1  # [0, 34 - 32)
    # aligned=2: frames 0,1 share offsets, frames 2,3 share offsets, the two chunks differ somewhere.
    np.testing.assert_array_equal(off[0], off[1])
    np.testing.assert_array_equal(off[2], off[3])
    assert (off[0] != off[2]).any()
    # Draw order: row offsets (fh, fw, chunks), then column offsets.
    rng = np.random.default_rng(11)
    off_h, off_w = rng.integers(0, 3, size=(7, 7, 2)), rng.integers(0, 2, size=(7, 7, 2))
    np.testing.assert_array_equal(off[0, ..., 0], off_h[..., 0])
    np.testing.assert_array_equal(off[2, ..., 1], off_w[..., 1])


def test_fragments_single_frame_and_small_cells():
    video = coordinate_video(1, 230, 226)  # cells 32x32: no room for offsets even with an rng
    view = spatial_fragments(video, FRAG_SPEC, np.random.default_rng(0))
    np.testing.assert_array_equal(patch_origins(view, FRAG_SPEC)[0, :, 0, 0], 32 * np.arange(7))
    np.testing.assert_array_equal(patch_origins(view, FRAG_SPEC)[0, 0, :, 1], 32 * np.arange(7))


def test_fragments_upscale_uses_the_pre_upscale_grid():
    """64x96 video: upscaled x3.5 to 224x336, but sampled on the 64x96 grid (the official bug: DOVER's
    ``get_spatial_fragments`` in dover/datasets/basic_datasets.py lays out ``hgrids`` / ``wgrids`` and the cell
    sizes from ``res_h, res_w`` read before the upscale).

    Channel 0 is 3*row and channel 1 is 2*col, so after bilinear upscaling the pixel at upscaled (y, x) holds
    3*s(y) and 2*s(x) with s(u) = clip((u + 0.5)/3.5 - 0.5, 0, 63) (then truncated to uint8); channel 2 is a
    flat 200 that truncation may turn into 199.
    """
    frames, height, width = 2, 64, 96
    _, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    video = np.stack([3 * y, 2 * x, np.full_like(y, 200)], axis=-1).astype(np.uint8)
    spec = ViewSpec("fragments", clip_len=2, frame_interval=1, aligned=2)
    view = spatial_fragments(video, spec, np.random.default_rng(0)).astype(np.float64)
    rows = np.repeat([0, 9, 18, 27, 32, 32, 32], 32) + np.tile(np.arange(32), 7)  # pre-upscale grid, no offsets
    cols = np.repeat([0, 13, 26, 39, 52, 64, 64], 32) + np.tile(np.arange(32), 7)
    src_rows = np.clip((rows + 0.5) / 3.5 - 0.5, 0, height - 1)
    src_cols = np.clip((cols + 0.5) / 3.5 - 0.5, 0, width - 1)
    expected_c0 = np.broadcast_to(3 * src_rows[:, None], (224, 224))
    expected_c1 = np.broadcast_to(2 * src_cols[None, :], (224, 224))
    for t in range(frames):
        assert np.abs(view[t, ..., 0] - expected_c0).max() <= 1.0
        assert np.abs(view[t, ..., 1] - expected_c1).max() <= 1.0
        assert set(np.unique(view[t, ..., 2])) <= {199.0, 200.0}
    # Had the grid been laid out on the upscaled 224x336 frame, patch row 1 would start at upscaled row 32.
    assert abs(view[0, 32, 0, 0] - 3 * ((32 + 0.5) / 3.5 - 0.5)) > 10


def test_videos_smaller_than_a_fragment_are_fragmented_on_the_upscaled_frames():
    """20 rows < one 32-px fragment: the official pre-upscale grid would start at row 20 - 32 < 0, so the grid is
    laid out on the upscaled 224×1075 frames (factor 224/20 = 11.2): rows 32·i, columns 153·j + 60 (centred)."""
    height, width = 20, 96
    video = np.zeros((2, height, width, 3), np.uint8)
    video[..., 0] = 10 * np.arange(height)[:, None]
    video[..., 1] = 2 * np.arange(width)[None, :]
    view = spatial_fragments(video, FRAG_SPEC, None).astype(np.float64)
    assert view.shape == (2, 224, 224, 3)
    rows = np.repeat(32 * np.arange(7), 32) + np.tile(np.arange(32), 7)
    cols = np.repeat(153 * np.arange(7) + 60, 32) + np.tile(np.arange(32), 7)
    factor = 224 / height
    src_rows = np.clip((rows + 0.5) / factor - 0.5, 0, height - 1)
    src_cols = np.clip((cols + 0.5) / factor - 0.5, 0, width - 1)
    for t in range(2):
        assert np.abs(view[t, ..., 0] - 10 * src_rows[:, None]).max() <= 1.0
        assert np.abs(view[t, ..., 1] - 2 * src_cols[None, :]).max() <= 1.0


def test_fragments_reject_misaligned_clips():
    with pytest.raises(ValueError, match="aligned=2"):
        spatial_fragments(np.zeros((3, 64, 96, 3), np.uint8), FRAG_SPEC, None)


# ------------------------------------------------------------------------------------------ resize


def test_resize_hand_upsample():
    # 2x2 -> 4x4: source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (index clamped) on both axes.
    frame = np.array([[0, 100], [200, 44]], np.uint8)
    video = np.repeat(frame[None, :, :, None], 3, axis=-1)
    out = resize_view(video, ViewSpec("resize", size_h=4, size_w=4))
    expected = [[0, 25, 75, 100], [50, 59, 77, 86], [150, 127, 81, 58], [200, 161, 83, 44]]
    for c in range(3):
        np.testing.assert_array_equal(out[0, :, :, c], expected)


def test_resize_hand_downsample_no_antialias_round_half_even():
    # 8 -> 2: scale 4, sources 1.5 and 5.5 -> mean of pixels (1,2) and (5,6) only (no antialias filter).
    row = np.array([0, 10, 30, 60, 100, 150, 210, 255], np.uint8)
    video = np.repeat(row[None, None, :, None], 3, axis=-1)
    out = resize_view(video, ViewSpec("resize", size_h=1, size_w=2))
    np.testing.assert_array_equal(out[0, 0, :, 0], [20, 180])
    # 4 -> 2: (1+2)/2 = 1.5 -> 2 and (5+8)/2 = 6.5 -> 6 (ties to even, like torch.round).
    col = np.array([1, 2, 5, 8], np.uint8)
    video = np.repeat(col[None, :, None, None], 3, axis=-1)
    out = resize_view(video, ViewSpec("resize", size_h=2, size_w=1))
    np.testing.assert_array_equal(out[0, :, 0, 0], [2, 6])


RESIZE_SHAPES = [(4, 70, 130), (2, 300, 500), (2, 1280, 720), (3, 224, 300)]


@pytest.mark.parametrize("shape", RESIZE_SHAPES)
def test_resize_matches_torch_generic_kernel_exactly(shape):
    torch = pytest.importorskip("torch")
    frames, height, width = shape
    video = np.random.default_rng(height).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    # Channels folded into a contiguous [1, T*3, H, W] tensor selects torch's generic (channels-first) kernel.
    x = torch.from_numpy(video).permute(0, 3, 1, 2).contiguous().reshape(1, frames * 3, height, width).float()
    ref = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
    ref = ref.round().to(torch.uint8).reshape(frames, 3, 224, 224).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(resize_view(video, ViewSpec("resize")), ref)


def test_resize_vs_torch_channels_last_kernel_within_one():
    """torchvision's official layout ([T,3,H,W] channels-last) on one thread uses torch's channels-last
    kernel, which sums the four products in another order; a value within an ulp of .5 may round the other
    way, so a few pixels per million differ by 1."""
    torch = pytest.importorskip("torch")
    video = np.random.default_rng(0).integers(0, 256, (8, 300, 500, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.from_numpy(video).permute(0, 3, 1, 2).float()
        ref = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    finally:
        torch.set_num_threads(threads)
    ref = ref.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    diff = np.abs(resize_view(video, ViewSpec("resize")).astype(np.int64) - ref)
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-4


def official_fragments_torch(torch, video: np.ndarray, spec: ViewSpec, off_h, off_w) -> np.ndarray:
    """The official get_spatial_fragments, restated with torch ops on a [C,T,H,W] view, offsets injected."""
    fn = torch.nn.functional
    x = torch.from_numpy(video).permute(3, 0, 1, 2)
    fh, fw, ph, pw = spec.fragments_h, spec.fragments_w, spec.fsize_h, spec.fsize_w
    frames, res_h, res_w = x.shape[-3:]
    ratio = min(res_h / (fh * ph), res_w / (fw * pw))
    if ratio < 1:
        x = (fn.interpolate(x / 255.0, scale_factor=1 / ratio, mode="bilinear") * 255.0).type(torch.uint8)
    out = torch.zeros((*x.shape[:-2], fh * ph, fw * pw), dtype=torch.uint8)
    for i in range(fh):
        for j in range(fw):
            for c in range(frames // spec.aligned):
                hs = min(res_h // fh * i, res_h - ph) + int(off_h[i, j, c])
                ws = min(res_w // fw * j, res_w - pw) + int(off_w[i, j, c])
                t = slice(c * spec.aligned, (c + 1) * spec.aligned)
                out[:, t, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw] = x[:, t, hs : hs + ph, ws : ws + pw]
    return out.permute(1, 2, 3, 0).numpy()


@pytest.mark.parametrize("hw", [(64, 96), (100, 300), (223, 223), (150, 224), (230, 250)])
def test_fragments_match_official_torch_code(hw):
    torch = pytest.importorskip("torch")
    height, width = hw
    rng = np.random.default_rng(height * width)
    video = rng.integers(0, 256, (4, height, width, 3), dtype=np.uint8)
    video[:, : height // 2] = 200  # flat area: the x/255*255 truncation decides between 199 and 200
    spec = ViewSpec("fragments", clip_len=4, frame_interval=1, aligned=2)
    ours = spatial_fragments(video, spec, np.random.default_rng(5))
    replay = np.random.default_rng(5)
    cell_h, cell_w = height // 7, width // 7
    off_h = replay.integers(0, cell_h - 32, (7, 7, 2)) if cell_h > 32 else np.zeros((7, 7, 2), np.int64)
    off_w = replay.integers(0, cell_w - 32, (7, 7, 2)) if cell_w > 32 else np.zeros((7, 7, 2), np.int64)
    np.testing.assert_array_equal(ours, official_fragments_torch(torch, video, spec, off_h, off_w))


@pytest.mark.parametrize("hw", [(270, 360), (500, 500), (641, 480)])
def test_short_side_fragments_match_zoomvqa_vqa_mine(hw):
    """Zoom-VQA's VQA view against vqa_mine.py's torch ops: the long side ``int(long / (short / 480))`` (500² gives
    480×479), bilinear on x/255, ×255, truncated to uint8, then 7×7 centred fragments of 48 px."""
    torch = pytest.importorskip("torch")
    height, width = hw
    video = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    video[:, : height // 3] = 200  # flat: the ×255 truncation decides between 199 and 200
    spec = dataclasses.replace(get_spec("zoomvqa").views["vqa"], clip_len=2, aligned=2, num_clips=1)
    x = torch.from_numpy(video).permute(3, 0, 1, 2)
    t_h, t_w = (int(height / (width / 480)), 480) if height > width else (480, int(width / (height / 480)))
    assert short_side_size(height, width, spec) == (t_h, t_w)
    resized = (torch.nn.functional.interpolate(x / 255.0, size=(t_h, t_w), mode="bilinear") * 255.0).type_as(x)
    centred = (((t_h // 7) - 48) // 2, ((t_w // 7) - 48) // 2)
    off_h, off_w = (np.full((7, 7, 1), max(c, 0)) for c in centred)
    ours = make_view(video, spec, None)[0]
    assert ours.shape == (2, 336, 336, 3)
    np.testing.assert_array_equal(
        ours, official_fragments_torch(torch, resized.permute(1, 2, 3, 0).numpy(), spec, off_h, off_w)
    )
    assert short_side_size(500, 500, spec) == (480, 479)


@pytest.mark.parametrize("hw", [(270, 360), (600, 500), (512, 700)])
def test_short_side_crop_is_zoomvqa_iqa_frames_within_half_a_level(hw):
    """Zoom-VQA's IQA frames: torchvision's Resize(512) (long side ``int(512 · long / short)``, bilinear, no
    antialiasing, float) and the centre crop ``(size − 320) // 2``; ours are rounded to uint8, half a level apart."""
    torch = pytest.importorskip("torch")
    height, width = hw
    video = np.random.default_rng(width).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    spec = dataclasses.replace(get_spec("zoomvqa").views["iqa"], num_clips=2)
    short, long = sorted((height, width))
    size = (int(512 * long / short), 512) if width <= height else (512, int(512 * long / short))
    assert short_side_size(height, width, spec) == size
    x = torch.from_numpy(video).permute(0, 3, 1, 2) / 255.0
    resized = x if size == hw else torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=False)
    top, left = (size[0] - 320) // 2, (size[1] - 320) // 2
    want = resized[:, :, top : top + 320, left : left + 320].permute(0, 2, 3, 1).numpy() * 255
    ours = make_view(video, spec, None)[:, 0]
    assert ours.shape == (2, 320, 320, 3)
    assert np.abs(ours - want).max() <= 0.5 + 1e-4


# ------------------------------------------------------------------------------------------ views end to end


def level(k: int) -> int:
    return 4 * k + 8


@pytest.fixture(scope="module")
def ramp_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 flat-gray 64x96 frames, frame k at level(k): a view's frame means reveal which frames it holds."""
    path = tmp_path_factory.mktemp("views_media") / "ramp.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.height, stream.width, stream.pix_fmt = 64, 96, "yuv420p"
        stream.options = {"preset": "veryfast", "qp": "0", "g": "8"}
        for k in range(48):
            frame = np.full((64, 96, 3), level(k), np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_sample_views_dover_shapes_and_clip_split(ramp_clip):
    views = sample_views(ramp_clip, DOVER_VIEWS, None)
    assert views["technical"].shape == (3, 32, 224, 224, 3)
    assert views["aesthetic"].shape == (1, 32, 224, 224, 3)
    assert {k: v.shape for k, v in views.items()} == {k: v.shape for k, v in DOVER_VIEWS.items()}
    assert all(v.dtype == np.uint8 for v in views.values())
    # technical: 3 segments of L=16 frames (too short for 32 frames at stride 2: offset 0, wrap mod 48)
    means = views["technical"].reshape(3, 32, -1).mean(axis=-1)
    expected = [[level((16 * c + 2 * k) % 48) for k in range(32)] for c in range(3)]
    np.testing.assert_allclose(means, expected, atol=2.5)
    # aesthetic: one frame per 1/32 segment; 48 // 32 = 1 frame per segment, L=1 <= 2 -> offset 0
    means = views["aesthetic"].reshape(32, -1).mean(axis=-1)
    np.testing.assert_allclose(means, [level(k) for k in range(32)], atol=2.5)


def test_sample_views_equals_decode_then_make_view(ramp_clip):
    views = get_spec("dover").train_views
    got = sample_views(ramp_clip.read_bytes(), views, np.random.default_rng(4), name="ramp.mp4")
    rng = np.random.default_rng(4)
    total = num_frames(ramp_clip)
    indices = {branch: sample_frame_indices(total, spec, rng) for branch, spec in views.items()}
    for branch, spec in views.items():
        expected = make_view(decode_frames(ramp_clip, indices[branch]), spec, rng)
        np.testing.assert_array_equal(got[branch], expected)
        assert got[branch].shape == (1, 32, 224, 224, 3)


@pytest.mark.parametrize("hw", [(250, 240), (64, 96)])
def test_make_view_with_order_equals_gathered_frames(hw):
    video = np.random.default_rng(2).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    order = np.array([2, 0, 2, 1])
    for spec in (FRAG_SPEC, ViewSpec("resize", clip_len=2, num_clips=2, size_h=40, size_w=56)):
        direct = make_view(video[order], spec, np.random.default_rng(9))
        np.testing.assert_array_equal(make_view(video, spec, np.random.default_rng(9), order=order), direct)
    with pytest.raises(ValueError, match="outside"):
        make_view(video, FRAG_SPEC, None, order=np.array([0, 1, 2, 3]))


def test_sample_views_reports_unreadable_videos():
    with pytest.raises(VideoDecodeError, match=r"^clip_0042\.mp4: cannot open"):
        sample_views(np.random.default_rng(0).bytes(2048), DOVER_VIEWS, None, name="clip_0042.mp4")


def test_make_view_checks_frame_count():
    with pytest.raises(ValueError, match="needs 96 frames"):
        make_view(np.zeros((32, 64, 64, 3), np.uint8), DOVER_VIEWS["technical"], None)


# ------------------------------------------------------------------------------------ pixel normalisation


def test_imagenet_255_values_numpy_and_jax():
    pixels = np.array([[[0, 255, 128], [124, 116, 104]]], np.uint8)
    expected = np.array(
        [
            [
                [(0 - 123.675) / 58.395, (255 - 116.28) / 57.12, (128 - 103.53) / 57.375],
                [(124 - 123.675) / 58.395, (116 - 116.28) / 57.12, (104 - 103.53) / 57.375],
            ]
        ]
    )
    out = IMAGENET_255(pixels)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == pixels.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[0, 0], [-2.1179039, 2.4285714, 0.4264924], rtol=1e-6)
    # scale 1.0 is skipped: exactly the float32 (x - mean) / std
    mean, std = np.float32([123.675, 116.28, 103.53]), np.float32([58.395, 57.12, 57.375])
    np.testing.assert_array_equal(out, (pixels.astype(np.float32) - mean) / std)

    out_jax = IMAGENET_255(jnp.asarray(pixels))  # the same object normalises on device (scoring, export)
    assert isinstance(out_jax, jax.Array) and out_jax.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out_jax), expected, rtol=1e-6, atol=1e-6)
    # ImageNet statistics on the 0-255 scale: the mean / std both official repositories apply to every view
    assert IMAGENET_255 == PixelNorm((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), scale=1.0)
    assert IMAGENET_255.mean == (123.675, 116.28, 103.53) and IMAGENET_255.std == (58.395, 57.12, 57.375)
    assert IMAGENET_255.scale == 1.0


def test_pixel_norm_scale_applies_before_the_statistics():
    """``(x · scale − mean) / std`` per channel, computed in float32 (no uint8 wrap-around), on numpy and jax."""
    unit = PixelNorm(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0), scale=1 / 255)  # 0-1 statistics, 0-255 pixels
    pixels = np.array([[[255, 0, 51], [0, 255, 255]]], np.uint8)
    # (1 - 0.5) / 0.5 = 1, (0 - 0.25) / 0.25 = -1, (0.2 - 0) / 2 = 0.1; (0 - 0.5) / 0.5 = -1, (1 - 0.25) / 0.25 = 3,
    # (1 - 0) / 2 = 0.5
    expected = [[[1.0, -1.0, 0.1], [-1.0, 3.0, 0.5]]]
    for x in (pixels, jnp.asarray(pixels)):
        out = unit(x)
        assert out.dtype == np.float32 and out.shape == pixels.shape
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-7)
    doubled = PixelNorm((10.0, 20.0, 30.0), (2.0, 4.0, 5.0), scale=2.0)
    # [5, 10, 20] * 2 = [10, 20, 40] -> [0, 0, 2]; [0, 255, 1] * 2 = [0, 510, 2] -> [-5, 122.5, -5.6]
    pixels = np.array([[5, 10, 20], [0, 255, 1]], np.uint8)
    for x in (pixels, jnp.asarray(pixels)):
        out = doubled(x)
        assert out.dtype == np.float32
        np.testing.assert_allclose(np.asarray(out), [[0.0, 0.0, 2.0], [-5.0, 122.5, -5.6]], rtol=1e-6, atol=1e-7)
    # frozen, hashable data (a spec holding it is static data of the jitted model)
    with pytest.raises(dataclasses.FrozenInstanceError):
        doubled.scale = 1.0  # type: ignore[misc]
    assert hash(doubled) == hash(PixelNorm((10.0, 20.0, 30.0), (2.0, 4.0, 5.0), scale=2.0))


# ------------------------------------------------------------------------------ registered models' views

# (fragments_h, fsize, aligned, clip_len, frame_interval, num_clips, t_frag) of each model's fragment view, as its
# official yml's test-time data section sets them (VQAssessment/DOVER dover.yml and dover-mobile.yml, whose data
# sections are identical; VQAssessment/FAST-VQA-and-FasterVQA options/fast/*.yml)
FRAGMENT_VIEWS = {
    ("dover", "technical"): (7, 32, 32, 32, 2, 3, None),
    ("dover_mobile", "technical"): (7, 32, 32, 32, 2, 3, None),
    ("fastvqa_b", "fragments"): (7, 32, 32, 32, 2, 4, None),
    ("fastervqa", "fragments"): (7, 32, 8, 32, 2, 1, 8),
    ("fastervqa_mt", "fragments"): (7, 32, 8, 16, 2, 1, 4),
    ("fastervqa_ms", "fragments"): (5, 32, 8, 32, 2, 1, 8),
    ("fastvqa_m", "fragments"): (4, 32, 8, 16, 2, 4, None),
}
OFFICIAL_CONFIGS = {
    "dover": "dover.yml",
    "dover_mobile": "dover-mobile.yml",
    "fastvqa_b": "options/fast/fast-b.yml",
    "fastervqa": "options/fast/f3dvqa-b.yml",
    "fastervqa_mt": "options/fast/fastervqa-mt.yml",
    "fastervqa_ms": "options/fast/fastervqa-ms.yml",
    "fastvqa_m": "options/fast/fast-m.yml",
}


def test_registered_views_match_the_official_ymls():
    assert model_names("dover") == ("dover", "dover_mobile")
    assert model_names("fastvqa") == ("fastvqa_b", "fastervqa", "fastervqa_mt", "fastervqa_ms", "fastvqa_m")
    assert {m for m, _ in FRAGMENT_VIEWS} == set(OFFICIAL_CONFIGS) == {*model_names("dover"), *model_names("fastvqa")}
    for (model, branch), (grid, fsize, aligned, clip_len, interval, clips, t_frag) in FRAGMENT_VIEWS.items():
        spec = get_spec(model)
        view = spec.views[branch]
        assert spec.branch(branch).view == view
        assert view.kind == "fragments"
        assert (view.fragments_h, view.fragments_w, view.fsize_h, view.fsize_w) == (grid, grid, fsize, fsize)
        assert (view.aligned, view.clip_len, view.frame_interval, view.num_clips, view.t_frag) == (
            aligned,
            clip_len,
            interval,
            clips,
            t_frag,
        )
    for model in model_names("dover"):
        spec = get_spec(model)
        assert spec.branch_names == ("technical", "aesthetic") and list(spec.views) == list(spec.branch_names)
        aesthetic = spec.views["aesthetic"]
        assert aesthetic == ViewSpec("resize", clip_len=32, frame_interval=2, t_frag=32, num_clips=1)
        assert (aesthetic.size_h, aesthetic.size_w) == (224, 224)
    for model in model_names("fastvqa"):
        assert get_spec(model).branch_names == ("fragments",)
    for model, config in OFFICIAL_CONFIGS.items():
        spec = get_spec(model)
        assert spec.official is not None and spec.official.config == config
        # both official repositories normalise every view with the 0-255 ImageNet statistics
        assert all(b.pixels == IMAGENET_255 for b in spec.branches)
    assert get_spec("fastervqa_ms").views["fragments"].out_hw == (160, 160)
    assert get_spec("fastvqa_m").views["fragments"].out_hw == (128, 128)
    assert get_spec("fastvqa_m").views["fragments"].total_frames == 64


def test_viewspec_shape_is_one_videos_uint8_view():
    assert DOVER_VIEWS["technical"].shape == (3, 32, 224, 224, 3)
    assert DOVER_VIEWS["aesthetic"].shape == (1, 32, 224, 224, 3)
    assert get_spec("fastvqa_m").views["fragments"].shape == (4, 16, 128, 128, 3)
    assert get_spec("fastervqa_mt").views["fragments"].shape == (1, 16, 224, 224, 3)
    assert get_spec("fastervqa_ms").views["fragments"].shape == (1, 32, 160, 160, 3)
    # t_frag form: (clip_len // t_frag) * t_frag = (10 // 4) * 4 = 8 frames per clip
    assert ViewSpec("resize", clip_len=10, t_frag=4, num_clips=2, size_h=40, size_w=56).shape == (2, 8, 40, 56, 3)
    video = np.zeros((16, 40, 60, 3), np.uint8)
    for spec in (ViewSpec("resize", clip_len=10, t_frag=4, num_clips=2, size_h=40, size_w=56), FRAG_SPEC):
        assert make_view(video[: spec.total_frames], spec, None).shape == spec.shape


def test_train_views_force_one_clip():
    for model in model_names():
        spec = get_spec(model)
        train = spec.train_views
        assert list(train) == list(spec.branch_names)
        assert all(view.num_clips == 1 for view in train.values())
        for branch, view in train.items():
            assert dataclasses.replace(view, num_clips=spec.views[branch].num_clips) == spec.views[branch]
    spec = get_spec("dover")
    assert spec.train_views["technical"].total_frames == 32
    views = spec.views
    assert views == DOVER_VIEWS and views is not spec.views  # a fresh dict on every call
    views["technical"] = views["aesthetic"]
    assert spec.views["technical"].kind == "fragments"  # changing the copy leaves the spec alone
    with pytest.raises(ValueError, match="unknown model 'dover_plus_plus'"):
        get_spec("dover_plus_plus")


def test_viewspec_validation():
    with pytest.raises(ValueError, match="kind"):
        ViewSpec("crop")
    with pytest.raises(ValueError, match="aligned=32"):
        ViewSpec("fragments", clip_len=16, num_clips=1, aligned=32)
    with pytest.raises(ValueError, match="clip_len"):
        ViewSpec("resize", clip_len=0)
    with pytest.raises(ValueError, match="t_frag"):
        ViewSpec("resize", clip_len=4, t_frag=8)
    with pytest.raises(ValueError, match="short_side needs"):  # a short-side resize alone has no fixed shape
        ViewSpec("resize", clip_len=1, short_side=512)
    with pytest.raises(ValueError, match="crop 320×320 > short side 300"):
        ViewSpec("resize", clip_len=1, short_side=300, crop_h=320, crop_w=320)
    # with a short side the crop is checked against it, not against the (unused) square size
    assert ViewSpec("resize", clip_len=1, short_side=512, crop_h=320, crop_w=320).shape == (1, 1, 320, 320, 3)


def test_several_samplings_stack_on_the_clip_axis(ramp_clip):
    """Two samplings of a 4-frame view of the 48-frame ramp: 4 segments of 12 frames, offsets drawn in [0, 10)."""
    views = {
        "technical": DOVER_VIEWS["technical"],
        "short": ViewSpec("resize", clip_len=4, t_frag=4, size_h=32, size_w=32),
    }
    out = sample_views(ramp_clip, views, np.random.default_rng(3), samples=2)
    assert out["technical"].shape == (6, 32, 224, 224, 3) and out["short"].shape == (2, 4, 32, 32, 3)
    frames = np.rint((out["short"].mean(axis=(2, 3, 4)) - 8) / 4).astype(int)  # frame index of each view frame
    assert ((frames % 12) < 10).all() and (frames // 12 == np.arange(4)).all()  # one frame per segment
    assert not np.array_equal(frames[0], frames[1])  # two independent draws
    with pytest.raises(ValueError, match="an rng"):
        sample_views(ramp_clip, views, None, samples=2)


def test_ksvqe_views_stack_test_clips_and_share_their_frames(ramp_clip):
    """KSVQE: 3 clips of 32 fragment frames reach the model as one 96-frame clip at test (32 in training), and the
    resized CLIP view holds exactly the fragment view's frames, seeded draws included."""
    spec = get_spec("ksvqe")
    assert spec.views["fragment"].shape == (1, 96, 288, 288, 3)
    assert spec.views["resize_video"].shape == (1, 96, 112, 112, 3)
    assert {b: v.shape for b, v in spec.train_views.items()} == {
        "fragment": (1, 32, 288, 288, 3),
        "resize_video": (1, 32, 112, 112, 3),
    }
    small = {
        "fragment": dataclasses.replace(
            spec.views["fragment"], clip_len=4, frame_interval=1, aligned=4, fragments_h=2, fragments_w=2
        ),
        "resize_video": dataclasses.replace(
            spec.views["resize_video"], clip_len=4, frame_interval=1, size_h=16, size_w=24
        ),
    }
    out = sample_views(ramp_clip, small, np.random.default_rng(5))
    assert out["fragment"].shape == (1, 12, 64, 64, 3) and out["resize_video"].shape == (1, 12, 16, 24, 3)
    frag, resized = (out[b].mean(axis=(0, 2, 3, 4)) for b in small)
    np.testing.assert_allclose(frag, resized, atol=1.5)  # flat frames: the same frame has the same level
    # drawing its own frames, the resized view would not hold the same ones
    own = {**small, "resize_video": dataclasses.replace(small["resize_video"], frames_of=None)}
    drawn = sample_view_indices(48, own, np.random.default_rng(5))
    assert not np.array_equal(drawn["fragment"], drawn["resize_video"])
    shared = sample_view_indices(48, small, np.random.default_rng(5))
    np.testing.assert_array_equal(shared["fragment"], shared["resize_video"])
    np.testing.assert_array_equal(shared["fragment"], drawn["fragment"])  # the source's draw is unchanged
    with pytest.raises(ValueError, match="takes the frames of 'nope'"):
        sample_view_indices(48, {"r": dataclasses.replace(small["resize_video"], frames_of="nope")}, None)
    with pytest.raises(ValueError, match="expects 24"):
        longer = dataclasses.replace(small["resize_video"], clip_len=8)
        sample_view_indices(48, {"fragment": small["fragment"], "resize_video": longer}, None)
    with pytest.raises(ValueError, match="stack_clips must be a bool"):
        ViewSpec("resize", stack_clips=1)
