"""Zoom-VQA: conversion from the two official files, the branch contract, CPNet's pooling, the VQA branch's windows
at another size, the set-level fusion (by hand, in `kvq-jax score` over a folder and in export) and the configs.
Parity with the official code: tests/test_parity.py (zoomvqa_small; zoomvqa_full in the slow list)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from videos import clip, encode_video

from kvq_jax import predict
from kvq_jax.convert import ConversionError, convert_state_dict, read_state_dicts
from kvq_jax.export import export_model, load
from kvq_jax.models import abstract_model, get_model, get_spec, model_names
from kvq_jax.models.convnext3d import ConvNeXtConfig
from kvq_jax.models.fusion import SetSigmoidRescale
from kvq_jax.models.registry import register
from kvq_jax.models.swin3d import (
    SwinConfig,
    adaptive_window,
    clamp_window,
    relative_position_index,
    shift_regions,
    sliced_position_index,
)
from kvq_jax.models.zoomvqa import ZoomConfig, adaptive_avg_pool
from kvq_jax.train import data, optim

ROOT = Path(__file__).parent.parent
MANIFEST = ROOT / "tests/fixtures/parity/zoomvqa/manifest_zoom-vqa.json"

# The same model at a fraction of the size, for the CLI and export runs.
TINY = "tiny_zoomvqa"
if TINY not in model_names():
    register(
        dataclasses.replace(
            get_spec("zoomvqa"),
            name=TINY,
            family="tests",
            arch=ZoomConfig(
                iqa_backbone=ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), inflate="1", stem_t=1,
                                            final_norm=False),
                iqa_hidden=16,
                vqa_backbone=SwinConfig(patch_size=(2, 6, 6), embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                                        frag_biases=(True, False), adaptive_window=True, base_x_size=(32, 336, 336)),
                vqa_hidden=8,
            ),
            official=None,
            parity=None,
        )
    )  # fmt: skip
SMALL_VIEWS = ["--view", "iqa.num_clips=2", "--view", "vqa.clip_len=4", "--view", "vqa.aligned=4"]
SMALL_VIEWS += ["--view", "vqa.num_clips=1"]


# ------------------------------------------------------------------------------------------------ conversion


def _official_files(tmp_path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[Path]]:
    """The two released files as the official code saves them, with the manifest's keys and shapes: CPNet's
    state_dict under ``module.`` (DataParallel) and ``state_dict``, the evaluator's under ``state_dict`` with its
    integer ``relative_position_index`` buffers. Tensors up to 2¹⁸ values are random, larger ones zeros."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    iqa, vqa = {}, {}
    for e in json.loads(MANIFEST.read_text()):
        shape = tuple(e["shape"])
        if "index" not in e:
            value = relative_position_index((8, 7, 7)).astype(np.int64)
        elif np.prod(shape) <= 1 << 18:
            value = rng.standard_normal(shape).astype(np.float32)
        else:
            value = np.zeros(shape, np.float32)
        prefix, key = e["key"].split(".", 1)
        (iqa if prefix == "iqa" else vqa)[key] = value
    files = [tmp_path / "iqa_best_29epoch_checkpoint.pth.tar", tmp_path / "vqa_best_29e_val-vqpve_s.pth"]
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in iqa.items()}, "epoch": 29}, files[0])
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in vqa.items()}}, files[1])
    return iqa, vqa, files


@pytest.fixture(scope="module")
def zoom():
    model = abstract_model("zoomvqa")
    model.eval()
    return model


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def test_two_official_files_convert_onto_the_model(zoom, tmp_path):
    iqa, vqa, files = _official_files(tmp_path)
    assert [f.name for f in files] == list(get_spec("zoomvqa").weights.files)
    merged = read_state_dicts(files)  # `module.` and the wrappers go; the keys of the two files do not collide
    flat = _flat(convert_state_dict(merged, zoom))
    conv = (2, 3, 1, 0)  # torch (O, I, kh, kw) → (kh, kw, I, O); our 2-D convs have a leading depth of 1
    pairs = {
        "backbone.downsample_layers.0.0.kernel": iqa["backbone.stem_0.weight"].transpose(conv)[None],
        "backbone.downsample_layers.0.1.scale": iqa["backbone.stem_1.weight"],
        "backbone.downsample_layers.2.0.bias": iqa["backbone.stages_2.downsample.0.bias"],
        "backbone.downsample_layers.3.1.kernel": iqa["backbone.stages_3.downsample.1.weight"].transpose(conv)[None],
        "backbone.stages.2.4.dwconv.kernel": iqa["backbone.stages_2.blocks.4.conv_dw.weight"].transpose(conv)[None],
        "backbone.stages.1.2.pwconv2.kernel": iqa["backbone.stages_1.blocks.2.mlp.fc2.weight"].T,
        "backbone.stages.3.1.gamma": iqa["backbone.stages_3.blocks.1.gamma"],
        "head_score.fc1.kernel": iqa["head_score.0.weight"].T,
        "head_weight.fc2.bias": iqa["head_weight.3.bias"],
        "fragments_backbone.patch_embed.proj.kernel": vqa["fragments_backbone.patch_embed.proj.weight"].transpose(
            2, 3, 4, 1, 0
        ),
        "vqa_head.fc_last.kernel": vqa["vqa_head.fc_last.weight"][:, :, 0, 0, 0].T,
    }
    for key, want in pairs.items():
        np.testing.assert_array_equal(flat[key], want, err_msg=key)
    assert "backbone.norm.scale" not in flat  # features_only: no final LayerNorm
    # The parity manifest's form (`iqa.` / `vqa.` prefixes, no buffers) gives the same variables.
    prefixed = {f"iqa.{k}": v for k, v in iqa.items()} | {f"vqa.{k}": v for k, v in vqa.items() if v.dtype != np.int64}
    manifest_form = _flat(convert_state_dict(prefixed, zoom))
    assert manifest_form.keys() == flat.keys()
    for key in pairs:
        np.testing.assert_array_equal(manifest_form[key], flat[key])


def test_conversion_names_missing_misshaped_and_unknown_keys(zoom, tmp_path):
    _, _, files = _official_files(tmp_path)
    merged = read_state_dicts(files)
    del merged["backbone.stages_2.blocks.5.mlp.fc1.bias"]
    merged["head_score.0.weight"] = np.zeros((384, 1000), np.float32)
    merged["backbone.norm_pre.weight"] = np.zeros(768, np.float32)  # not of the features_only network
    with pytest.raises(ConversionError) as e:
        convert_state_dict(merged, zoom)
    msg = str(e.value)
    assert "1 missing keys:\n  backbone.stages.2.5.pwconv1.bias" in msg
    assert "head_score.fc1.weight: checkpoint (384, 1000), model expects (384, 1440)" in msg
    assert "1 unexpected keys:\n  backbone.norm_pre.weight" in msg
    with pytest.raises(ConversionError, match=r"missing keys:(.|\n)*fragments_backbone\.patch_embed\.proj\.weight"):
        convert_state_dict(read_state_dicts(files[:1]), zoom)  # the VQA file forgotten
    twice = {**read_state_dicts(files), "iqa.head_score.0.bias": np.zeros(384, np.float32)}
    with pytest.raises(ConversionError, match=r"head_score\.fc1\.bias is given twice"):
        convert_state_dict(twice, zoom)


# ------------------------------------------------------------------------------------------------ the model


def _shapes(model, views: dict[str, tuple]) -> dict[str, tuple]:
    graph, state = nnx.split(model)
    args = {b: jax.ShapeDtypeStruct(s, jnp.float32) for b, s in views.items()}
    out = jax.eval_shape(lambda st, v: nnx.merge(graph, st)(v), state, args)
    return {b: m.shape for b, m in out.items()}


def test_branches_alone_and_together(zoom):
    spec = get_spec("zoomvqa")
    assert spec.branch_names == ("iqa", "vqa") and spec.score_names == ("iqa", "vqa")
    assert spec.views["iqa"].shape == (16, 1, 320, 320, 3) and spec.views["vqa"].shape == (4, 32, 336, 336, 3)
    assert spec.branch("iqa").pixels.scale == 1 / 255 and spec.branch("iqa").pixels.std == (0.229, 0.224, 0.225)
    both = {"iqa": (3, 2, 320, 320, 3), "vqa": (3, 8, 336, 336, 3)}
    assert _shapes(zoom, both) == {"iqa": (3, 2), "vqa": (3, 4, 7, 7)}  # frame scores; the VQA head's map
    assert _shapes(zoom, {"iqa": (2, 1, 96, 128, 3)}) == {"iqa": (2, 1)}  # 3×4 tokens: pool = size // 32
    assert _shapes(zoom, {"vqa": (1, 16, 240, 240, 3)}) == {"vqa": (1, 8, 5, 5)}
    with pytest.raises(ValueError, match="too small"):
        _shapes(zoom, {"iqa": (1, 1, 16, 64, 3)})
    with pytest.raises(ValueError, match="takes views"):
        _shapes(zoom, {"fragments": (1, 8, 336, 336, 3)})


@pytest.mark.parametrize(("size", "out"), [((13, 10), (4, 3)), ((56, 28), (7, 7)), ((9, 9), (2, 4))])
def test_pooling_is_torch_adaptive_avg_pool(size, out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(size[0]).standard_normal((2, *size, 5)).astype(np.float32)
    ours = np.asarray(adaptive_avg_pool(jnp.asarray(x), out))
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out)
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


def test_vqa_windows_keep_the_base_shift(zoom):
    """The fixtures have no 240² case: its geometry by hand. Windows scale with the input (8·16/32, 7·240/336,
    7·240/336) = (4,5,5); the shift stays the base window's (4,3,3) and drops only where the tokens fit a window."""
    swin = zoom.fragments_backbone
    cfg = swin.cfg
    assert adaptive_window(cfg.window_size, (16, 240, 240), cfg.base_x_size) == (4, 5, 5)
    assert [layer.shift for layer in swin.layers] == [(4, 3, 3)] * 4
    tokens = [(8, 40, 40), (8, 20, 20), (8, 10, 10), (8, 5, 5)]  # patches of 2×6×6, then H, W halved per stage
    geometry = [clamp_window(t, (4, 5, 5), layer.shift) for t, layer in zip(tokens, swin.layers, strict=True)]
    assert geometry == [((4, 5, 5), (4, 3, 3))] * 3 + [((4, 5, 5), (4, 0, 0))]
    # The bias index is the base 8×7×7 one sliced [:4, :5, :5, :4, :5, :5], strides (169, 13) kept:
    # token (0,0,0) to (3,4,4) is row (0−3+7)·169 + (0−4+6)·13 + (0−4+6) = 704 of the 2535-row table.
    index = sliced_position_index(cfg.window_size, (4, 5, 5), True)
    assert index.shape == (100, 100) and index[0, 3 * 25 + 4 * 5 + 4] == 704
    # zoomvqa_small (8×336²): window (2,7,7) on 4×56×56 tokens keeps the temporal shift 4 — a roll by the whole
    # axis — and its mask is then spatial only, the same as without a temporal shift.
    win, shift = clamp_window((4, 56, 56), adaptive_window(cfg.window_size, (8, 336, 336), cfg.base_x_size), (4, 3, 3))
    assert (win, shift) == ((2, 7, 7), (4, 3, 3))
    spatial = shift_regions((4, 56, 56), win, (0, 3, 3))
    same = shift_regions((4, 56, 56), win, shift)
    assert np.array_equal(same[:, :, None] == same[:, None], spatial[:, :, None] == spatial[:, None])


# ------------------------------------------------------------------------------------------------ fusion


def _by_hand(iqa: list[float], vqa: list[float]) -> list[float]:
    """ensemble.py: 100 / (1 + exp(−(s − mean) / std)) per branch (population std), then 0.5·IQA + 0.5·VQA."""

    def rescale(s):
        mean = sum(s) / len(s)
        std = math.sqrt(sum((x - mean) ** 2 for x in s) / len(s))
        return [100 / (1 + math.exp(-(x - mean) / std)) for x in s]

    return [0.5 * a + 0.5 * b for a, b in zip(rescale(iqa), rescale(vqa), strict=True)]


def test_set_fusion_by_hand():
    fusion = get_spec("zoomvqa").fusion
    assert fusion == SetSigmoidRescale((("iqa", 0.5), ("vqa", 0.5))) and fusion.set_level
    iqa, vqa = [0.2, 0.5, 0.3, 0.9], [1.1, 0.7, 1.3, 0.2]
    got = fusion({"iqa": np.array(iqa), "vqa": np.array(vqa)})
    np.testing.assert_allclose(got, _by_hand(iqa, vqa), rtol=1e-12)
    # z = ±1 for two videos: 100·sigmoid(±1) = 73.1059 / 26.8941 for both branches, crossed.
    np.testing.assert_allclose(fusion({"iqa": np.array([1.0, 3.0]), "vqa": np.array([5.0, 2.0])}), [50.0, 50.0])
    traced = jax.jit(fusion)({"iqa": jnp.asarray(iqa, jnp.float32), "vqa": jnp.asarray(vqa, jnp.float32)})
    np.testing.assert_allclose(np.asarray(traced), got, rtol=1e-5)
    assert "needs 2 or more (1 scored)" in fusion.undefined({"iqa": [0.4], "vqa": [0.1]})
    assert "branch vqa gives every video the same score" in fusion.undefined({"iqa": [0.4, 0.5], "vqa": [0.1, 0.1]})
    assert fusion.undefined({"iqa": iqa, "vqa": vqa}) is None
    assert json.loads(json.dumps(fusion.to_json()))["weights"] == {"iqa": 0.5, "vqa": 0.5}
    assert predict.normalised_score(get_spec("zoomvqa"), {"iqa": 0.2, "vqa": 0.4}) is None  # not per video


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoom_videos")
    (root / "sub").mkdir()
    frames = clip(40, 96, 128)
    encode_video(root / "ramp.mp4", frames)
    encode_video(root / "sub" / "dark.mp4", (frames // 3).astype(np.uint8))
    encode_video(root / "noise.mp4", np.random.default_rng(1).integers(0, 256, frames.shape, dtype=np.uint8))
    (root / "broken.mp4").write_bytes(b"not a video")
    return root


def test_score_folder_fuses_over_the_set(folder, tmp_path, capsys):
    cache = str(tmp_path / "xla")
    common = ["--model", TINY, "--random-weights", *SMALL_VIEWS, "--compile-cache", cache, "--no-progress"]
    out, challenge = tmp_path / "scores.csv", tmp_path / "challenge.csv"
    assert predict.main([str(folder), *common, "--out", str(out), "--challenge-csv", str(challenge)]) == 0
    with open(out, newline="") as f:
        rows = {r["filename"].removeprefix(f"{folder}/"): r for r in csv.DictReader(f)}
    assert set(rows) == {"ramp.mp4", "sub/dark.mp4", "noise.mp4", "broken.mp4"}
    assert rows["broken.mp4"]["error"] and rows["broken.mp4"]["fused"] == ""
    scored = [rows[n] for n in ("noise.mp4", "ramp.mp4", "sub/dark.mp4")]
    iqa, vqa = ([float(r[b]) for r in scored] for b in ("iqa", "vqa"))
    assert len(set(iqa)) == 3 and len(set(vqa)) == 3
    np.testing.assert_allclose([float(r["fused"]) for r in scored], _by_hand(iqa, vqa), rtol=1e-9)
    with open(challenge, newline="") as f:
        written = {r["filename"].removeprefix(f"{folder}/"): float(r["score"]) for r in csv.DictReader(f)}
    assert written == {n: float(rows[n]["fused"]) for n in ("noise.mp4", "ramp.mp4", "sub/dark.mp4")}
    capsys.readouterr()
    # One video: both branch scores, and why there is no fused one; a fused challenge CSV cannot be written.
    single = str(folder / "ramp.mp4")
    assert predict.main([single, *common]) == 0
    text = capsys.readouterr().out
    for b in ("iqa", "vqa"):  # the video's scores do not depend on the set
        assert f"{float(rows['ramp.mp4'][b]):+.6f}  (raw branch score)" in text
    assert "fused  none: the fusion z-scores each branch over the videos scored together" in text
    assert predict.main([single, *common, "--challenge-csv", str(tmp_path / "one.csv")]) == 1
    assert "use --challenge-score mean or a branch" in capsys.readouterr().err
    assert not (tmp_path / "one.csv").exists()


def test_export_states_the_set_fusion_without_computing_it(tmp_path):
    model = get_model(TINY, seed=3)
    views = predict.resolve_views(model.spec.views, overrides=[v for v in SMALL_VIEWS if v != "--view"])
    exported, meta = export_model(model, views, batch=2)
    assert set(meta["outputs"]) == {"iqa", "vqa"}  # no per-video "fused"
    assert meta["fused"]["scope"].startswith("set") and meta["fused"]["weights"] == {"iqa": 0.5, "vqa": 0.5}
    assert meta["inputs"]["vqa"]["view"]["short_side"] == 480
    path = tmp_path / "tiny.jaxexport"
    path.write_bytes(exported.serialize())
    (tmp_path / "tiny.jaxexport.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    batch = {b: rng.integers(0, 256, (2, *v.shape), dtype=np.uint8) for b, v in views.items()}
    assert set(load(path)(batch)) == {"iqa", "vqa"}


# ------------------------------------------------------------------------------------------------ configs


def _config(arg: str | None):
    module_spec = importlib.util.spec_from_file_location("zoomvqa_config", ROOT / "configs/zoomvqa.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("variant", [None, "vqa", "iqa,quick", "vqa,quick"])
def test_configs_train_one_branch_with_its_recipe(zoom, variant):
    cfg = _config(variant)
    branch = (variant or "iqa").split(",")[0]
    assert data.model_branches(cfg) == (branch,) and data.score_names(cfg) == (branch,)
    recipe = {
        "iqa": (32, 4e-4, 1e-2, 0.2, {"plcc": 0.0, "rank": 0.0, "smooth_l1": 1.0}),
        "vqa": (16, 1e-3, 0.01, 0.1, {"plcc": 1.0, "rank": 0.3}),
    }[branch]
    if "quick" not in (variant or ""):
        assert (cfg.train.batch_size, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.backbone_lr_mult) == recipe[:4]
        assert cfg.train.num_epochs == 30.0
    assert {k: v for k, v in cfg.loss.weights.items() if v or k in recipe[4]} == recipe[4]
    params = nnx.state(zoom, nnx.Param)
    labels = {
        optim.path_str(p): label
        for p, label in jax.tree_util.tree_flatten_with_path(optim.param_labels(params, freeze=cfg.optim.freeze))[0]
    }
    other = ("fragments_backbone/", "vqa_head/") if branch == "iqa" else ("backbone/", "head_score/", "head_weight/")
    mine_backbone = "backbone/" if branch == "iqa" else "fragments_backbone/"
    assert {v for k, v in labels.items() if k.startswith(other)} == {optim.FROZEN}
    assert {v for k, v in labels.items() if k.startswith(mine_backbone)} == (
        {optim.FROZEN} if variant and "quick" in variant else {"backbone"}
    )
    heads = ("head_score/", "head_weight/") if branch == "iqa" else ("vqa_head/",)
    assert {v for k, v in labels.items() if k.startswith(heads)} == {"other"}
    views = data.train_view_specs(cfg)
    assert set(views) == {branch} and views[branch].num_clips == 1
    with pytest.raises(ValueError, match="unknown variant"):
        _config("both")
