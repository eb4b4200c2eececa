"""SimpleVQA: official checkpoint layouts, the views the baseline samples, the pooling and the Lite0 variant."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from videos import clip, encode_video

from kvq_jax.convert import convert_state_dict, read_state_dicts
from kvq_jax.data.decode import decode_frames, open_video
from kvq_jax.data.views import ViewSpec, make_view, sample_frame_indices, sample_views, second_clip_indices
from kvq_jax.models import abstract_model, get_model, get_spec
from kvq_jax.models.simplevqa import MOTION_VIEW, SPATIAL_VIEW, mean_std_pool
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
