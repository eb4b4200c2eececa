"""SimpleVQA: official checkpoint layouts, the views the baseline and the original sample, the pooling, the original's
normalisation and the Lite0 variant."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from videos import clip, encode_video

from kvq_jax.convert import convert_state_dict, read_state_dicts
from kvq_jax.data.decode import decode_frames, open_video
from kvq_jax.data.views import (
    ViewSpec,
    make_view,
    sample_frame_indices,
    sample_views,
    second_clip_indices,
    short_side_resize,
    short_side_size,
)
from kvq_jax.models import abstract_model, get_model, get_spec
from kvq_jax.models.simplevqa import MOTION_VIEW, ORIGINAL_SPATIAL_VIEW, SPATIAL_VIEW, mean_std_pool
from kvq_jax.parity import manifest_weights
from kvq_jax.train import optim, state, steps
from kvq_jax.train.defaults import base_config

torch = pytest.importorskip("torch")

SLOWFAST = "slowfast/.*"
MANIFEST = Path(__file__).parent / "fixtures" / "parity" / "simplevqa" / "manifest_kwai_simpleVQA.json"


@pytest.fixture(scope="module")
def official() -> dict[str, np.ndarray]:
    """The parity rule's weights of both official models, in the wrapper's layout (`vqa.`, `slowfast.`)."""
    return manifest_weights(json.loads(MANIFEST.read_text()), seed=0)


def _flat(state: nnx.State) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _tensors(sd: dict[str, np.ndarray]) -> dict:
    return {k: torch.from_numpy(v) for k, v in sd.items()}


def test_official_files_convert_to_the_same_model(official, tmp_path):
    """The KVQ trainer's DataParallel checkpoint plus pytorchvideo's model-zoo file convert exactly like the
    fixture's wrapper layout; the backbone's unused quality MLP and pytorchvideo's classifier are dropped."""
    abstract = abstract_model("simplevqa")
    reference = _flat(convert_state_dict(official, abstract))

    kvq = {f"module.{k[len('vqa.') :]}": v for k, v in official.items() if k.startswith("vqa.")}
    assert "module.simpleVQA_backbone.quality.0.weight" in kvq  # in the real checkpoint too; never run
    kvq_file = _save(tmp_path / "kvq.pth", {"state_dict": _tensors(kvq), "validation_results": {"srocc": 0.5}})
    pyvideo = {k.replace("slowfast.feature_extraction.", "blocks."): v for k, v in official.items() if "slowfast" in k}
    pyvideo["blocks.6.proj.weight"] = np.zeros((400, 2304), np.float32)  # Kinetics classifier: not an extractor part
    pyvideo["blocks.6.proj.bias"] = np.zeros((400,), np.float32)
    pyth = _save(tmp_path / "SLOWFAST_8x8_R50.pyth", {"epoch": 196, "model_state": _tensors(pyvideo)})

    got = _flat(convert_state_dict(read_state_dicts([kvq_file, pyth]), abstract))
    assert got.keys() == reference.keys()
    assert all(np.array_equal(got[k], reference[k]) for k in got)


def test_imagenet_and_kinetics_files_fill_everything_but_the_head(official, tmp_path):
    abstract = abstract_model("simplevqa")
    backbone = "vqa.simpleVQA_backbone."
    torchvision = {k[len(backbone) :]: v for k, v in official.items() if k.startswith(backbone)}
    torchvision = {k: v for k, v in torchvision.items() if not k.startswith("quality.")}
    torchvision["fc.weight"], torchvision["fc.bias"] = np.zeros((1000, 2048), np.float32), np.zeros(1000, np.float32)
    pyvideo = {k.replace("slowfast.feature_extraction.", "blocks."): v for k, v in official.items() if "slowfast" in k}
    files = [_save(tmp_path / "resnet50.pth", _tensors(torchvision)), _save(tmp_path / "sf.pyth", _tensors(pyvideo))]
    filled = _flat(convert_state_dict(read_state_dicts(files), abstract, allow_missing=True))
    everything = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(abstract))}
    assert sorted(set(everything) - set(filled)) == [
        f"vqa/simpleVQA_head/quality/{i}/{leaf}" for i in (0, 1) for leaf in ("bias", "kernel")
    ]


def test_mean_std_pool_is_numpys_mean_and_unbiased_std():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    flat = x.reshape(2, 15, 4)
    want = np.concatenate([flat.mean(1), flat.std(1, ddof=1)], axis=-1)
    np.testing.assert_allclose(np.asarray(mean_std_pool(jnp.asarray(x))), want, rtol=1e-6, atol=1e-7)


def test_second_clips_follow_the_official_extractor():
    # 100 frames at 29.97 fps: rate 30, 3 whole seconds; clip 2 runs past the end (frames 60-99, then 99s);
    # clips 3-7 repeat clip 2 (the extractor appends copies of its last clip up to 8).
    idx = second_clip_indices(100, 29.97, 32, 8).reshape(8, 32)
    np.testing.assert_array_equal(idx[0], np.arange(32))
    np.testing.assert_array_equal(idx[1], np.arange(30, 62))
    np.testing.assert_array_equal(idx[2], np.minimum(np.arange(60, 92), 99))
    assert all(np.array_equal(idx[i], idx[2]) for i in range(3, 8))
    np.testing.assert_array_equal(second_clip_indices(40, 0.0, 32, 2), np.tile(np.arange(32), 2))  # fps unknown
    np.testing.assert_array_equal(second_clip_indices(20, 30.0, 32, 1), np.minimum(np.arange(32), 19))
    # The motion view holds the 8 clips back to back in one model clip.
    assert MOTION_VIEW.shape == (1, 256, 224, 224, 3)
    np.testing.assert_array_equal(sample_frame_indices(100, MOTION_VIEW, None, 29.97), idx.reshape(-1))


def test_seconds_view_reads_the_videos_frame_rate(tmp_path):
    """A 25-fps file of 60 frames (2 whole seconds): both decoders report 25, and clip 1 starts at frame 25."""
    path = encode_video(tmp_path / "25fps.mp4", clip(60, 32, 48), rate=25)
    assert open_video(path).fps == open_video(path, decoder="pyav").fps == 25.0
    view = ViewSpec("seconds", clip_len=8, t_frag=2, size_h=16, size_w=16)
    got = sample_views(path, {"motion": view}, None)["motion"]
    frames = np.concatenate([np.arange(8), np.arange(25, 33)])
    np.testing.assert_array_equal(got, make_view(decode_frames(path, frames), view, None))


def test_spatial_view_samples_an_eighth_each_and_crops_448():
    # One frame per eighth (Sampler(1, 8, 10)): segments of 300 // 8 = 37 frames, offset in [0, 27), centre 13.
    np.testing.assert_array_equal(sample_frame_indices(300, SPATIAL_VIEW, None), 37 * np.arange(8) + 13)
    video = np.random.default_rng(1).integers(0, 256, (8, 60, 80, 3), dtype=np.uint8)
    small = ViewSpec("resize", clip_len=8, t_frag=8, size_h=26, size_w=26, crop_h=22, crop_w=20)
    resized = make_view(video, ViewSpec("resize", clip_len=8, t_frag=8, size_h=26, size_w=26), None)[0]
    centre = make_view(video, small, None)[0]
    np.testing.assert_array_equal(centre, resized[:, 2:24, 3:23])  # 26 // 2 − 22 // 2 = 2, 13 − 10 = 3
    draw = np.random.default_rng(5)  # the offsets: randrange(26 − 22) rows, then randrange(26 − 20) columns
    y, x = int(draw.integers(0, 4)), int(draw.integers(0, 6))
    random = make_view(video, small, np.random.default_rng(5))[0]
    np.testing.assert_array_equal(random, resized[:, y : y + 22, x : x + 20])


def test_lite0_variant_scores_frames_from_pretrained_features():
    spec = get_spec("simplevqa_lite0")
    assert spec.branch_names == ("spatial",) and spec.score_names == ("quality",)
    model = get_model(spec)
    model.eval()
    frames = jax.random.normal(jax.random.key(0), (2, 3, 64, 64, 3))
    out = nnx.jit(lambda m, v: m(v))(model, {"spatial": frames})
    assert out["quality"].shape == (2, 3)
    feats = model.vqa.frame_features(frames, None)
    assert feats.shape == (2, 3, spec.arch.in_features) and spec.arch.in_features == 2 * (40 + 112 + 320 + 1280)


@pytest.mark.parametrize("variant", ["baseline", pytest.param("e2e", marks=pytest.mark.slow)])
def test_train_step_trains_resnet_and_batchnorm_and_slowfast_only_end_to_end(variant):
    """One real train step on tiny views. Baseline: SlowFast frozen (params and BatchNorm statistics unchanged,
    as the official offline features are), the ResNet and head trained, the ResNet's running statistics moved;
    e2e: SlowFast trains too."""
    cfg = base_config("simplevqa")
    cfg.optim.freeze = (SLOWFAST,) if variant == "baseline" else ()
    graph, _, params, stats = state.build_model(cfg)
    tx = optim.make_optimizer({"lr": 1e-3, "schedule": "constant", "freeze": cfg.optim.freeze}, params)
    frozen = state.frozen_mask(cfg, params)
    step = jax.jit(
        steps.make_train_step(graph, tx, branches=("spatial", "motion"), loss_weights={"plcc": 1.0}, frozen=frozen)
    )
    rng = np.random.default_rng(0)
    batch = {
        "spatial": rng.integers(0, 256, (4, 1, 2, 64, 64, 3), dtype=np.uint8),  # layer4: 2×2, so a std
        "motion": rng.integers(0, 256, (4, 1, 2 * 32, 32, 32, 3), dtype=np.uint8),
        "mos": np.asarray([1.0, 2.0, 3.5, 4.0], np.float32),
        "source_id": np.arange(4, dtype=np.int32),
    }
    before = {"params": _flat(params), "stats": _flat(stats)}
    new, aux = step(state.init_state(params, stats, tx, ema=False), batch)
    assert np.isfinite(float(aux["loss"]))
    after = {"params": _flat(new["params"]), "stats": _flat(new["stats"])}

    def changed(kind: str, prefix: str) -> bool:
        return any(not np.array_equal(after[kind][k], v) for k, v in before[kind].items() if k.startswith(prefix))

    assert changed("params", "vqa/simpleVQA_head/") and changed("params", "vqa/simpleVQA_backbone/layer4/")
    assert changed("stats", "vqa/simpleVQA_backbone/")
    assert changed("params", "slowfast/") == changed("stats", "slowfast/") == (variant == "e2e")


def test_original_release_converts_with_its_head_inside_the_resnet(official, tmp_path):
    """The authors' ``UGC_BVQA_model.pth`` (a DataParallel ResNet whose ``quality`` MLP is the head that runs) plus
    pytorchvideo's file convert exactly like the fixture's wrapper layout."""
    abstract = abstract_model("simplevqa_original")
    reference = _flat(convert_state_dict(official, abstract))
    backbone, head = "vqa.simpleVQA_backbone.", "vqa.simpleVQA_head."
    release = {
        f"module.{k[len(backbone) :]}": v
        for k, v in official.items()
        if k.startswith(backbone) and not k.startswith(f"{backbone}quality.")
    }
    release |= {f"module.{k[len(head) :]}": v for k, v in official.items() if k.startswith(head)}
    assert "module.quality.0.weight" in release and "module.layer4.2.bn3.running_var" in release
    pyvideo = {k.replace("slowfast.feature_extraction.", "blocks."): v for k, v in official.items() if "slowfast" in k}
    files = [_save(tmp_path / "UGC_BVQA_model.pth", _tensors(release)), _save(tmp_path / "sf.pyth", _tensors(pyvideo))]
    got = _flat(convert_state_dict(read_state_dicts(files), abstract))
    assert got.keys() == reference.keys()
    assert all(np.array_equal(got[k], reference[k]) for k in got)


def _extracted_frames(num_frames: int, fps: float, keep: int = 8) -> list[int]:
    """extract_frame_LSVQ.py's loop (frames whose index is a multiple of round(fps)), then the dataset's first
    ``keep``, the last repeated when fewer were saved."""
    rate = round(fps)
    saved = [i for i in range(num_frames) if i % rate == 0]
    return (saved + [saved[-1]] * keep)[:keep]


def test_original_takes_one_frame_per_second_a_partial_last_second_included():
    view = ORIGINAL_SPATIAL_VIEW
    assert view.shape == (1, 8, 448, 448, 3)
    # 239 frames at 29.97 fps: rate 30, 7 whole seconds and a partial one, whose frame 210 the extractor keeps.
    np.testing.assert_array_equal(sample_frame_indices(239, view, None, 29.97), [0, 30, 60, 90, 120, 150, 180, 210])
    # 90 frames at 25 fps: frames 0, 25, 50, 75, the last repeated; a random draw changes nothing.
    draw = np.random.default_rng(0)
    np.testing.assert_array_equal(sample_frame_indices(90, view, draw, 25.0), [0, 25, 50, 75, 75, 75, 75, 75])
    # ... where the SlowFast clips start at whole seconds only (int(90 / 25) = 3): 0, 25, 50, then 50.
    np.testing.assert_array_equal(sample_frame_indices(90, MOTION_VIEW, None, 25.0)[::32], [0, 25, 50] + [50] * 5)
    for frames, fps in [(288, 24.0), (241, 30.0), (240, 30.0), (59, 59.94), (61, 60.0), (10, 30.0), (3000, 29.97)]:
        np.testing.assert_array_equal(sample_frame_indices(frames, view, None, fps), _extracted_frames(frames, fps))
    with pytest.raises(ValueError, match="partial_seconds"):
        ViewSpec("resize", clip_len=1, partial_seconds=True)
    with pytest.raises(ValueError, match="resize or seconds view"):
        ViewSpec("fragments", clip_len=32, crop_h=32, crop_w=32)


def test_original_resizes_the_short_side_keeping_the_aspect_ratio_then_crops():
    view = ORIGINAL_SPATIAL_VIEW
    # extract_frame: the short side 520, the long side int(520 / short · long), landscape or portrait.
    assert short_side_size(1080, 1920, view) == (520, 924) and short_side_size(1280, 720, view) == (924, 520)
    assert short_side_size(102, 357, view) == (520, 1819)  # torchvision's int(520 · 357 / 102) would give 1820
    # Small frames: short side 26 (40 × 70 → 26 × 45), then the centre 24² (rows from 13 − 12 = 1, columns from
    # 22 − 12 = 10); cv2.resize, the official extractor's, agrees within a grey level.
    small = dataclasses.replace(view, t_frag=2, short_side=26, crop_h=24, crop_w=24)
    video = np.random.default_rng(3).integers(0, 256, (2, 40, 70, 3), dtype=np.uint8)
    official = np.stack([cv2.resize(f, (45, 26), interpolation=cv2.INTER_LINEAR) for f in video])
    resized = short_side_resize(video, small, np.arange(2))
    assert resized.shape == (2, 26, 45, 3)
    assert np.abs(resized.astype(int) - official).max() <= 1
    np.testing.assert_array_equal(make_view(video, small, None)[0], resized[:, 1:25, 10:34])
    draw = np.random.default_rng(5)  # training: randrange(26 − 24) rows, then randrange(45 − 24) columns
    y, x = int(draw.integers(0, 2)), int(draw.integers(0, 21))
    np.testing.assert_array_equal(
        make_view(video, small, np.random.default_rng(5))[0], resized[:, y : y + 24, x : x + 24]
    )


def test_original_normalises_on_0_1_values_and_shares_the_baselines_network():
    original, baseline = get_spec("simplevqa_original"), get_spec("simplevqa")
    pixel = np.array([[[0, 128, 255]]], np.uint8)
    # ToTensor, then Normalize: (0 − 0.485) / 0.229, (128 / 255 − 0.456) / 0.224, (1 − 0.406) / 0.225.
    got = original.branch("spatial").pixels(pixel).reshape(-1)
    np.testing.assert_allclose(got, [-2.1179039, 0.2051821, 2.64], rtol=1e-6)
    # The baseline subtracts the same statistics from 0–255 values: (128 − 0.456) / 0.224.
    np.testing.assert_allclose(baseline.branch("spatial").pixels(pixel).reshape(-1)[1], 569.392857, rtol=1e-6)
    assert original.arch == baseline.arch and original.branch("motion") == baseline.branch("motion")
