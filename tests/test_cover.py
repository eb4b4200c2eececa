"""COVER: the CLIP image tower against an independent PyTorch transcription, the model's branch contract, the
two-file conversion (COVER.pth + ViT-L-14.pt) and the training config. Parity with the official code:
tests/test_parity.py (cover_small)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export as jax_export

from kvq_jax.convert import ConversionError, convert_state_dict, to_state_dict
from kvq_jax.models import abstract_model, get_spec, vit
from kvq_jax.models.cover import DEAD_KEYS
from kvq_jax.scoring import score_views
from kvq_jax.train import data, optim
from kvq_jax.train.sharding import fsdp_spec

ROOT = Path(__file__).parent.parent
MANIFEST = ROOT / "tests/fixtures/parity/cover/manifest_cover.json"
TINY = vit.ViTConfig(width=32, layers=2, heads=4, patch_size=4, output_dim=8)


def _random_tower(cfg: vit.ViTConfig, seed: int = 0) -> vit.VisionTransformer:
    """A tower whose every variable (LayerNorms and biases included) is random, so each one matters."""
    abstract = nnx.eval_shape(lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    flat = [
        (p, v.replace(rng.standard_normal(v.shape).astype(np.float32) * 0.3 + (str(p[-1]) == "scale")))
        for p, v in nnx.to_flat_state(nnx.state(abstract))
    ]
    return nnx.merge(nnx.graphdef(abstract), nnx.from_flat_state(flat))


def _torch_tower(sd: dict[str, np.ndarray], cfg: vit.ViTConfig, images: np.ndarray) -> np.ndarray:
    """OpenAI CLIP's VisionTransformer.forward written out with torch ops, from an official-layout state_dict."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}

    def ln(x, name):
        return f.layer_norm(x, (cfg.width,), t[f"{name}.weight"], t[f"{name}.bias"], 1e-5)

    x = f.conv2d(torch.from_numpy(images).permute(0, 3, 1, 2), t["conv1.weight"], stride=cfg.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([t["class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    if "positional_embedding" in t:
        x = x + t["positional_embedding"]
    x = ln(x, "ln_pre")
    for i in range(cfg.layers):
        b = f"transformer.resblocks.{i}"
        attn = torch.nn.MultiheadAttention(cfg.width, cfg.heads, batch_first=True)
        attn.load_state_dict({k.removeprefix(f"{b}.attn."): v for k, v in t.items() if k.startswith(f"{b}.attn.")})
        h = ln(x, f"{b}.ln_1")
        x = x + attn(h, h, h, need_weights=False)[0]
        h = f.linear(ln(x, f"{b}.ln_2"), t[f"{b}.mlp.c_fc.weight"], t[f"{b}.mlp.c_fc.bias"])
        x = x + f.linear(h * torch.sigmoid(1.702 * h), t[f"{b}.mlp.c_proj.weight"], t[f"{b}.mlp.c_proj.bias"])
    with torch.no_grad():
        return (ln(x[:, 0], "ln_post") @ t["proj"]).numpy()


@pytest.mark.parametrize("positional", [False, True])
def test_clip_tower_matches_a_pytorch_transcription(positional):
    # 30 px: a 7×7 grid of 4-px patches, the last 2 rows and columns unused (as COVER's 512² frames on 14-px ones).
    cfg = vit.ViTConfig(**{**TINY.__dict__, "positional_tokens": TINY.tokens(30, 30) if positional else 0})
    tower = _random_tower(cfg)
    sd = to_state_dict(tower)
    assert ("positional_embedding" in sd) == positional
    assert sd["transformer.resblocks.1.attn.in_proj_weight"].shape == (3 * 32, 32)  # torch's packed (3d, d)
    images = np.random.default_rng(1).standard_normal((3, 30, 30, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(tower(jnp.asarray(images))), _torch_tower(sd, cfg, images), atol=2e-5)


def test_clip_tower_in_steps_equals_one_pass(monkeypatch):
    tower = _random_tower(TINY)
    images = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 16, 16, 3)).astype(np.float32))
    whole = tower(images.reshape(12, 16, 16, 3)).reshape(2, 6, -1)
    assert vit.images_per_step(6, TINY, 16, 16) == 6
    monkeypatch.setattr(vit, "_STEP_LOGITS", 2 * TINY.heads * TINY.tokens(16, 16) ** 2)  # two images per step
    assert vit.images_per_step(6, TINY, 16, 16) == 2
    np.testing.assert_allclose(vit.encode_in_steps(tower, images), whole, rtol=1e-5, atol=1e-6)


def test_positional_table_must_fit_the_tokens():
    tower = _random_tower(vit.ViTConfig(**{**TINY.__dict__, "positional_tokens": 17}))
    tower(jnp.zeros((1, 16, 16, 3)))  # 4×4 patches + CLS = 17 tokens
    with pytest.raises(ValueError, match="17 rows for 50 tokens"):
        tower(jnp.zeros((1, 28, 28, 3)))


# ------------------------------------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def cover():
    model = abstract_model("cover")
    model.eval()
    return model


def _shapes(model, views: dict[str, tuple]) -> dict[str, tuple]:
    graph, state = nnx.split(model)
    args = {b: jax.ShapeDtypeStruct(s, jnp.float32) for b, s in views.items()}
    out = jax.eval_shape(lambda st, v: nnx.merge(graph, st)(v), state, args)
    return {b: m.shape for b, m in out.items()}


def test_branches_gates_and_time_steps(cover):
    quick = {"semantic": (2, 2, 96, 96, 3), "technical": (2, 4, 96, 96, 3), "aesthetic": (2, 4, 96, 96, 3)}
    # The semantic map is the official 7×7 broadcast; the gated maps keep their backbone's grid (3×3 at 96 px).
    assert _shapes(cover, quick) == {"semantic": (2, 2, 7, 7), "technical": (2, 2, 3, 3), "aesthetic": (2, 2, 3, 3)}
    assert _shapes(cover, {"semantic": quick["semantic"]}) == {"semantic": (2, 2, 7, 7)}
    with pytest.raises(ValueError, match="gated by the semantic features"):
        _shapes(cover, {"technical": quick["technical"]})
    with pytest.raises(ValueError, match=r"4 time steps .* 2 frames"):
        _shapes(cover, {**quick, "technical": (2, 8, 96, 96, 3)})
    with pytest.raises(ValueError, match="6 technical clips, 2 semantic"):
        _shapes(cover, {**quick, "technical": (6, 4, 96, 96, 3)})
    # A symbolic batch (jax.export) traces: the CLIP steps are a divisor of the static frame count.
    (b,) = jax_export.symbolic_shape("b")
    symbolic = {k: jax.ShapeDtypeStruct((b, 1, *s[1:]), jnp.uint8) for k, s in quick.items()}
    graph, state = nnx.split(cover)
    scores, _ = jax.eval_shape(lambda st, v: score_views(nnx.merge(graph, st), v), state, symbolic)
    assert {k: s.shape for k, s in scores.items()} == dict.fromkeys(quick, (b,))
    spec = get_spec("cover")
    assert spec.branch_names == ("semantic", "technical", "aesthetic")
    views = spec.views
    assert views["semantic"].shape == (1, 20, 512, 512, 3) and views["technical"].shape == (1, 40, 224, 224, 3)
    assert spec.branch("semantic").pixels.mean == (122.77, 116.75, 104.09)
    assert spec.fusion({"semantic": 0.5, "technical": 0.25, "aesthetic": -0.125}) == 0.625
    assert spec.weights.files == ("COVER.pth", "ViT-L-14.pt")


# ------------------------------------------------------------------------------------------------ conversion


def _official_files() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """COVER.pth's state_dict and ViT-L-14.pt's, with the manifest's real shapes. Tensors up to 2²⁰ values are
    random; larger ones are lazily allocated zeros (the 300 M-value tower is never written), which the converter
    only views and transposes."""
    rng = np.random.default_rng(0)
    cover, clip = {}, {}
    for e in json.loads(MANIFEST.read_text()):
        shape = tuple(e["shape"])
        if "index" not in e:
            value = np.zeros(shape, np.int64)  # relative_position_index: checked against the recomputed one below
        elif np.prod(shape) <= 1 << 20:
            value = rng.standard_normal(shape).astype(np.float32)
        else:
            value = np.zeros(shape, np.float32)
        if e["key"].startswith("clip."):
            clip[e["key"].removeprefix("clip.")] = value
        elif "index" in e:
            cover[e["key"]] = value
    # ViT-L-14.pt also holds the text tower and scalars.
    clip |= {
        "positional_embedding": np.zeros((77, 768), np.float32),
        "text_projection": np.zeros((768, 768), np.float32),
        "logit_scale": np.float32(4.6),
        "token_embedding.weight": np.zeros((49408, 768), np.float32),
        "transformer.resblocks.0.attn.in_proj_weight": np.zeros((2304, 768), np.float32),
        "ln_final.weight": np.ones(768, np.float32),
        "input_resolution": np.int64(224),
        "context_length": np.int64(77),
        "vocab_size": np.int64(49408),
    }
    return cover, clip


@pytest.fixture(scope="module")
def official():
    return _official_files()


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def test_two_files_merge_onto_the_model(cover, official):
    cover_sd, clip_sd = official
    assert set(DEAD_KEYS) <= set(cover_sd) and "visual.positional_embedding" in clip_sd
    flat = _flat(convert_state_dict({**cover_sd, **clip_sd}, cover))  # strict: every other key is used
    np.testing.assert_array_equal(flat["clip.visual.class_embedding"], clip_sd["visual.class_embedding"])
    np.testing.assert_array_equal(flat["clip.visual.proj"], clip_sd["visual.proj"])  # (width, 768) as held
    np.testing.assert_array_equal(
        flat["clip.visual.conv1.kernel"], np.transpose(clip_sd["visual.conv1.weight"], (2, 3, 1, 0))
    )
    gate, head = cover_sd["smtc_gate_aesc.in_project_x.weight"], cover_sd["semantic_head.fc_hid.weight"]
    np.testing.assert_array_equal(flat["smtc_gate_aesc.in_project_x.kernel"], gate.T)
    np.testing.assert_array_equal(flat["semantic_head.fc_hid.kernel"], head[:, :, 0, 0, 0].T)
    assert not any("prompt_learner" in p or "positional" in p for p in flat)
    # The parity manifest's form (the image tower's keys already under `clip.`) converts to the same values.
    visual = {f"clip.{k}": v for k, v in clip_sd.items() if k.startswith("visual.")}
    manifest_form = _flat(convert_state_dict({**cover_sd, **visual}, cover))
    assert manifest_form.keys() == flat.keys()
    np.testing.assert_array_equal(manifest_form["clip.visual.ln_post.bias"], flat["clip.visual.ln_post.bias"])


def test_conversion_names_missing_misshaped_and_unknown_keys(cover, official):
    cover_sd, clip_sd = official
    merged = {**cover_sd, **clip_sd}
    del merged["smtc_gate_tech.out_project_y.weight"]
    merged["visual.proj"] = np.zeros((1024, 512), np.float32)
    merged["semantic_backbone.prompt_learner.meta_net"] = np.zeros(3, np.float32)  # only the three known keys drop
    with pytest.raises(ConversionError) as e:
        convert_state_dict(merged, cover)
    msg = str(e.value)
    assert "1 missing keys:\n  smtc_gate_tech.out_project_y.weight" in msg
    assert "clip.visual.proj: checkpoint (1024, 512), model expects (1024, 768)" in msg
    assert "1 unexpected keys:\n  semantic_backbone.prompt_learner.meta_net" in msg


def test_conversion_without_the_clip_file_says_so(cover, official):
    cover_sd, clip_sd = official
    with pytest.raises(ConversionError, match=r"pass OpenAI.s ViT-L-14\.pt as well"):
        convert_state_dict(cover_sd, cover)
    both = {**cover_sd, **clip_sd, "clip.visual.ln_pre.bias": clip_sd["visual.ln_pre.bias"]}
    with pytest.raises(ConversionError, match=r"clip\.visual\.ln_pre\.bias is given twice"):
        convert_state_dict(both, cover)


# ------------------------------------------------------------------------------------------------ config


def _config(arg: str | None):
    module_spec = importlib.util.spec_from_file_location("cover_config", ROOT / "configs/cover.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("variant", [None, "head", "quick"])
def test_config_freezes_clip_and_keeps_views_consistent(cover, variant):
    cfg = _config(variant)
    views = data.view_specs(cfg)
    tech = views["technical"].frames_per_clip
    assert tech == views["aesthetic"].frames_per_clip == 2 * views["semantic"].frames_per_clip
    assert tech == (4 if variant == "quick" else 40)
    params = nnx.state(cover, nnx.Param)
    labels = {
        optim.path_str(p): label
        for p, label in jax.tree_util.tree_flatten_with_path(optim.param_labels(params, freeze=cfg.optim.freeze))[0]
    }
    assert {v for k, v in labels.items() if k.startswith("clip/")} == {optim.FROZEN}
    video = {v for k, v in labels.items() if "_backbone/" in k}
    assert video == ({optim.FROZEN} if variant else {"backbone"})
    assert {v for k, v in labels.items() if k.startswith(("smtc_gate", "semantic_head"))} == {"other"}
    # FSDP splits every large CLIP and backbone leaf; heads and gates stay whole.
    rules = [re.compile(r) for r in cfg.sharding.rules]
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = optim.path_str(path)
        split = any(r.fullmatch(f"params/{name}") for r in rules)
        assert split == ("clip/" in name or "_backbone/" in name), name
        if split and np.prod(leaf.shape) >= cfg.sharding.min_size:
            assert "fsdp" in fsdp_spec(leaf.shape, 8, cfg.sharding.min_size), name


def test_official_model_build_names_what_it_lacks(tmp_path):
    """COVER's official constructor needs pyiqa, OpenAI's clip package and downloads: said plainly, not faked."""
    from kvq_jax import torch_reference as tr

    lacking = tr.missing_modules(get_spec("cover").official.requires)
    if not lacking:
        pytest.skip("pyiqa and clip are installed here")
    (tmp_path / "cover/models").mkdir(parents=True)
    (tmp_path / "cover/models/__init__.py").write_text("")
    (tmp_path / "cover.yml").write_text("model:\n  type: COVER\n  args: {}\n")
    with pytest.raises(tr.TorchReferenceError, match=re.escape(f"needs the packages {lacking}") + ".*ViT-L-14.pt"):
        tr.build_official_model(tmp_path, "cover")


def test_reports_say_the_fused_score_is_a_sum():
    from kvq_jax import predict

    spec = get_spec("cover")
    scores = {"semantic": 0.25, "technical": -0.5, "aesthetic": 0.125}
    fused = predict.normalised_score(spec, scores)
    assert fused == -0.125
    text = predict.format_single(predict.VideoScore("v.mp4", Path("v.mp4"), scores, fused), spec)
    assert "-0.125000  (sum of the raw branch scores)" in text and "[0, 1]" not in text
    assert "[0, 1]" in predict.format_single(
        predict.VideoScore("v.mp4", Path("v.mp4"), {"fragments": 0.1}, 0.5), get_spec("fastvqa_m")
    )
