"""kvq_jax.export: the jax.export round trip agrees with the live scorer, at several batch sizes.

FAST-VQA-M with 8-frame single-clip views and seeded weights (saved with `save_weights`) keeps it small. The
fused score is checked against FAST-VQA-M's published sigmoid-rescale constants (the ``mean_stds`` table of vqa.py
in VQAssessment/FAST-VQA-and-FasterVQA).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvq_jax import export
from kvq_jax.data.views import ViewSpec
from kvq_jax.models import get_model, get_spec, model_names
from kvq_jax.models.fusion import SigmoidRescale
from kvq_jax.predict import Scorer
from kvq_jax.weights import save_weights

MODEL, WEIGHT_SEED = "fastvqa_m", 7
FASTVQA_M_MEAN, FASTVQA_M_STD = 0.023889644, 0.030781006
SMALL = ["--view", "clip_len=8", "--clips", "1"]


def small_views() -> dict[str, ViewSpec]:
    return {"fragments": dataclasses.replace(get_spec(MODEL).views["fragments"], clip_len=8, num_clips=1)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory):
    model = get_model(MODEL, seed=WEIGHT_SEED)
    return model, save_weights(model, tmp_path_factory.mktemp("weights") / MODEL)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.getbasetemp() / "kvq_jax_xla")


@pytest.mark.slow
def test_symbolic_export_matches_the_live_scorer(weights, compile_cache, tmp_path, capsys):
    model, weights_dir = weights
    out = tmp_path / "fastvqa_m.jaxexport"
    args = ["--weights", str(weights_dir), "--out", str(out), *SMALL, "--compile-cache", compile_cache]
    assert export.main(args) == 0
    assert "batch symbolic" in capsys.readouterr().out

    meta = json.loads(export.meta_path(out).read_text())
    assert meta["format"] == export.FORMAT == "kvq_jax.export/2"
    assert meta["model"] == MODEL and meta["batch"] == "symbolic" and meta["batch_note"] is None
    fragments = meta["inputs"]["fragments"]
    assert fragments["shape"] == ["b", 1, 8, 128, 128, 3]
    assert fragments["dtype"] == "uint8"
    assert fragments["view"] == dataclasses.asdict(small_views()["fragments"])
    # each input states its pixel normalisation (ImageNet statistics on 0-255), applied inside the function
    assert fragments["pixel_normalization"] == {
        "mean": [123.675, 116.28, 103.53],
        "std": [58.395, 57.12, 57.375],
        "scale": 1.0,
        "applied": "inside",
    }
    assert "pixel_normalization" not in meta
    assert set(meta["outputs"]) == {"fragments", "fused"}
    assert meta["fused"]["form"] == "sigmoid(sum(weight[b] * (score[b] - mean[b]) / std[b]))"
    assert meta["fused"]["terms"] == {"fragments": {"mean": FASTVQA_M_MEAN, "std": FASTVQA_M_STD, "weight": 1.0}}

    scorer = export.load(out)
    assert scorer.batch is None
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 128, 128, 3), dtype=np.uint8)
    for batch in (x[:2], x[2:]):  # two batch sizes through one exported function
        # the live scorer at the same batch size (these compilations are shared with test_predict's runs)
        expected = Scorer(model, small_views(), batch_size=len(batch))({"fragments": batch})[0]["fragments"]
        fused = 1 / (1 + np.exp(-(expected.astype(np.float64) - FASTVQA_M_MEAN) / FASTVQA_M_STD))
        assert len(set(np.round(expected, 6))) == len(batch)  # different inputs, different scores
        got = scorer({"fragments": batch})
        assert set(got) == {"fragments", "fused"} and got["fragments"].shape == (len(batch),)
        np.testing.assert_allclose(got["fragments"], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["fused"], fused, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="view 'fragments': expected uint8"):
        scorer({"fragments": x.astype(np.float32)})
    with pytest.raises(ValueError, match="expected views"):
        scorer({"technical": x})


def fragment_mean(views):
    """A stand-in scoring function whose answer is easy to compute with NumPy."""
    v = views["fragments"].astype(jnp.float32)
    return {"fragments": v.mean(axis=(1, 2, 3, 4, 5))}


def needs_concrete_batch(views):
    """Like fragment_mean, but turns the batch size into a NumPy array: impossible with a symbolic batch."""
    v = views["fragments"]
    return {"fragments": v.astype(jnp.float32).mean(axis=(1, 2, 3, 4, 5)) + 0 * np.arange(v.shape[0])}


def test_symbolic_failure_falls_back_to_a_fixed_batch_and_the_loader_chunks(tmp_path):
    views = {"fragments": ViewSpec("fragments", clip_len=2, num_clips=1, fragments_h=1, fragments_w=1, aligned=2)}
    x = np.random.default_rng(1).integers(0, 256, (5, 1, 2, 32, 32, 3), dtype=np.uint8)
    want = x.reshape(5, -1).astype(np.float64).mean(axis=1)

    exported, batch, note = export.export_function(fragment_mean, views)
    assert batch is None and note is None
    np.testing.assert_allclose(export.ExportedScorer(exported)({"fragments": x})["fragments"], want, rtol=1e-6)

    exported, batch, note = export.export_function(needs_concrete_batch, views, fallback_batch=2)
    assert batch == 2 and "symbolic batch failed" in note
    scorer = export.ExportedScorer(exported)
    assert scorer.batch == 2
    np.testing.assert_allclose(scorer({"fragments": x})["fragments"], want, rtol=1e-6)  # chunks 2 + 2 + 1 padded


# (mean, std) of each FAST-VQA-family model's sigmoid rescale: the ``mean_stds`` table of the official vqa.py
FASTVQA_RESCALE = {
    "fastvqa_b": (-0.110198185, 0.04178565),
    "fastervqa": (0.14759505, 0.03613452),
    "fastervqa_mt": (0.14699507, 0.036453716),
    "fastervqa_ms": (0.15218826, 0.03230298),
    "fastvqa_m": (FASTVQA_M_MEAN, FASTVQA_M_STD),
}


def dover_formula(t: np.ndarray, a: np.ndarray) -> np.ndarray:
    """DOVER's overall score as ``fuse_results`` of evaluate_a_set_of_videos.py (VQAssessment/DOVER) writes it."""
    return 1 / (1 + np.exp(-(0.6104 * (t - 0.1107) / 0.07355 + 0.3896 * (a + 0.08285) / 0.03774)))


def test_fusions_are_the_official_formulas():
    """The registered fusions hold the published constants and evaluate DOVER's fusion and FAST-VQA's rescale
    exactly (float64), and inside a traced function in float32 as the export runs them (to float32 precision,
    the tolerance of the exported ``fused`` above)."""
    rng = np.random.default_rng(0)
    t, a = rng.uniform(-0.3, 0.3, size=(2, 16))
    for model in model_names("dover"):
        fusion = get_spec(model).fusion
        assert fusion == SigmoidRescale(
            (("technical", 0.1107, 0.07355, 0.6104), ("aesthetic", -0.08285, 0.03774, 0.3896))
        )
        with jax.enable_x64(True):
            got = fusion({"technical": t, "aesthetic": a})
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(got), dover_formula(t, a), rtol=1e-12, atol=0)
        t32, a32 = t.astype(np.float32), a.astype(np.float32)
        traced = jax.jit(lambda s, f=fusion: f(s))({"technical": t32, "aesthetic": a32})
        assert traced.dtype == jnp.float32 and traced.shape == (16,)
        np.testing.assert_allclose(
            np.asarray(traced), dover_formula(t32.astype(np.float64), a32.astype(np.float64)), rtol=1e-5
        )
    assert json.loads(json.dumps(get_spec("dover").fusion.to_json())) == {
        "form": "sigmoid(sum(weight[b] * (score[b] - mean[b]) / std[b]))",
        "terms": {
            "technical": {"mean": 0.1107, "std": 0.07355, "weight": 0.6104},
            "aesthetic": {"mean": -0.08285, "std": 0.03774, "weight": 0.3896},
        },
    }

    assert set(model_names("fastvqa")) == set(FASTVQA_RESCALE)
    for model, (mean, std) in FASTVQA_RESCALE.items():
        fusion = get_spec(model).fusion
        assert fusion == SigmoidRescale((("fragments", mean, std, 1.0),)) and fusion.branches == ("fragments",)
        with jax.enable_x64(True):
            got = fusion({"fragments": t})
            np.testing.assert_allclose(np.asarray(got), 1 / (1 + np.exp(-(t - mean) / std)), rtol=1e-12, atol=0)
        t32 = t.astype(np.float32)
        traced = jax.jit(lambda s, f=fusion: f(s))({"fragments": t32})
        want = 1 / (1 + np.exp(-(t32.astype(np.float64) - mean) / std))
        np.testing.assert_allclose(np.asarray(traced), want, rtol=1e-5)
        assert fusion.to_json()["terms"] == {"fragments": {"mean": mean, "std": std, "weight": 1.0}}


def test_loading_needs_no_model_code():
    code = "import sys, kvq_jax.export; assert not any(m.startswith('kvq_jax.models') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True, timeout=120)


def test_export_without_weights_explains(capsys, tmp_path):
    assert export.main(["--model", "dover_mobile", "--out", str(tmp_path / "x")]) == 2
    assert "v0.5.0/DOVER-Mobile.pth" in capsys.readouterr().err
