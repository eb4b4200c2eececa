"""kvq_jax.export: the jax.export round trip agrees with the live scorer, at several batch sizes.

FAST-VQA-M with 8-frame single-clip views and seeded weights (saved with `save_weights`) keeps it small. The
fused score is checked against FAST-VQA-M's published sigmoid constants (models.md §2.5).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from kvq_jax import export
from kvq_jax.data.views import VIEW_PRESETS, ViewSpec
from kvq_jax.models import get_model, get_spec
from kvq_jax.predict import Scorer
from kvq_jax.weights import save_weights

MODEL, WEIGHT_SEED = "fastvqa_m", 7
FASTVQA_M_MEAN, FASTVQA_M_STD = 0.023889644, 0.030781006
SMALL = ["--view", "clip_len=8", "--clips", "1"]


def small_views() -> dict[str, ViewSpec]:
    return {"fragments": dataclasses.replace(VIEW_PRESETS[MODEL]["fragments"], clip_len=8, num_clips=1)}


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
    assert meta["model"] == MODEL and meta["batch"] == "symbolic" and meta["batch_note"] is None
    assert meta["inputs"]["fragments"]["shape"] == ["b", 1, 8, 128, 128, 3]
    assert meta["inputs"]["fragments"]["dtype"] == "uint8"
    assert set(meta["outputs"]) == {"fragments", "fused"}
    assert meta["fused"]["coef"]["fragments"] == pytest.approx(1 / FASTVQA_M_STD, rel=1e-6)
    assert meta["fused"]["bias"] == pytest.approx(-FASTVQA_M_MEAN / FASTVQA_M_STD, rel=1e-6)

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


def test_normalisations_are_recovered_exactly():
    """DOVER's fusion and FAST-VQA's rescale as sigmoid(bias + coef·scores), constants from models.md."""
    coef, bias = export.sigmoid_affine(get_spec("dover"))
    assert coef["technical"] == pytest.approx(0.6104 / 0.07355, rel=1e-7)
    assert coef["aesthetic"] == pytest.approx(0.3896 / 0.03774, rel=1e-7)
    assert bias == pytest.approx(-0.6104 * 0.1107 / 0.07355 + 0.3896 * 0.08285 / 0.03774, rel=1e-7)
    coef, bias = export.sigmoid_affine(get_spec("fastvqa_b"))
    assert coef == {"fragments": pytest.approx(1 / 0.04178565, rel=1e-7)}
    assert bias == pytest.approx(0.110198185 / 0.04178565, rel=1e-7)
    not_affine = dataclasses.replace(get_spec("fastvqa_m"), normalize=lambda m: min(0.9, max(0.1, m["fragments"])))
    assert export.sigmoid_affine(not_affine) is None


def test_loading_needs_no_model_code():
    code = "import sys, kvq_jax.export; assert not any(m.startswith('kvq_jax.models') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True, timeout=120)


def test_export_without_weights_explains(capsys, tmp_path):
    assert export.main(["--model", "dover_mobile", "--out", str(tmp_path / "x")]) == 2
    assert "v0.5.0/DOVER-Mobile.pth" in capsys.readouterr().err
