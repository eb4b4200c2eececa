"""A model family of our own, defined and registered in this one file, then used by every tool unchanged.

The family is deliberately unlike DOVER: each branch is a 2-D conv with BatchNorm applied frame by frame, and one
head scores the *concatenated* branch features (a single ``quality`` score, not one per branch); the aesthetic
branch wants CLIP-style pixels on the 0–1 scale. Nothing outside this file knows it exists: the trainer trains and
evaluates it, the scoring CLI scores a video with it, export serialises it, and its checkpoint (BatchNorm
statistics included) round-trips through orbax, converted weights and the PyTorch layout.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from kvq_jax import export, predict
from kvq_jax.convert import convert_state_dict, to_state_dict
from kvq_jax.data.views import PixelNorm, ViewSpec, sample_views
from kvq_jax.models import Branch, ModelSpec, abstract_model, model_names, with_state
from kvq_jax.models.registry import register
from kvq_jax.scoring import score_views
from kvq_jax.train import checkpoints, trainer
from kvq_jax.train.defaults import base_config
from kvq_jax.weights import load_model, save_weights, weights_allclose

NAME = "toy_concat"


@dataclasses.dataclass(frozen=True)
class ToyArch:
    width: int = 8


class FrameEncoder(nnx.Module):
    """Conv 4×4/4 → BatchNorm → ReLU on every frame, pooled over space and time: (N, T, H, W, 3) → (N, width)."""

    def __init__(self, width: int, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, width, (4, 4), strides=(4, 4), padding="VALID", dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t = x.shape[:2]
        y = nnx.relu(self.bn(self.conv(x.reshape(n * t, *x.shape[2:]))))
        return y.mean(axis=(1, 2)).reshape(n, t, -1).mean(axis=1)


class ToyVQA(nnx.Module):
    def __init__(self, spec: ModelSpec, *, dtype=jnp.float32, rngs: nnx.Rngs, drop_path_rate: float | None = None):
        self.spec = spec
        for b in spec.branch_names:
            setattr(self, f"{b}_backbone", FrameEncoder(spec.arch.width, dtype, rngs))
        self.head = nnx.Linear(spec.arch.width * len(spec.branches), 1, dtype=dtype, rngs=rngs)

    def __call__(self, views, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        feats = [getattr(self, f"{b}_backbone")(views[b]) for b in self.spec.branch_names]
        return {"quality": self.head(jnp.concatenate(feats, axis=-1))[..., 0].astype(jnp.float32)}


SPEC = ModelSpec(
    name=NAME,
    family="toy",
    branches=(
        Branch("technical", ViewSpec("fragments", clip_len=4, fragments_h=2, fragments_w=2, aligned=4)),
        Branch(
            "aesthetic",
            ViewSpec("resize", clip_len=4, t_frag=4, size_h=32, size_w=32),
            PixelNorm((0.48, 0.46, 0.41), (0.27, 0.26, 0.28), scale=1 / 255),
        ),
    ),
    build=ToyVQA,
    arch=ToyArch(),
    outputs=("quality",),
)
if NAME not in model_names():
    register(SPEC)


def _config(data_dir: Path):
    c = base_config(NAME)
    c.data.name = "kvq_synthetic"
    c.data.data_dir = str(data_dir)
    c.data.num_workers = 0
    c.data.synthetic.update({"sources": 6, "frames": 16, "size": (96, 160)})
    c.train.batch_size = 4
    c.train.num_steps = 6
    c.train.log_every = 1
    c.train.eval_every = 6
    c.eval.batch_size = 4
    c.checkpoint.every = 3
    c.checkpoint.keep_latest = 2  # steps 3 and 6: the checkpoint ensemble below
    c.checkpoint["async"] = False
    c.optim.warmup_steps = 1
    c.optim.lr = 1e-2
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the toy model for 6 steps on the synthetic set (evaluating val at the end)."""
    root = tmp_path_factory.mktemp("toy")
    cfg = _config(root / "tfds")
    results = trainer.train_and_evaluate(cfg, root / "run")
    return cfg, root, results


def _restored_model(root: Path, step: int) -> nnx.Module:
    """The toy model with the params and BatchNorm statistics of a train checkpoint."""
    abstract = abstract_model(NAME)
    _, params, stats = nnx.split(abstract, nnx.Param, ...)
    target = {"params": params, "stats": stats}
    current = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), target)
    mngr = ocp.CheckpointManager((root / "run" / "checkpoints").absolute(), item_names=("state", "data_iter"))
    got = checkpoints.restore_model_state(mngr, step, current)
    return nnx.merge(nnx.graphdef(abstract), got["params"], got["stats"])


def test_trains_and_evaluates_with_its_own_score_and_statistics(trained):
    _, root, results = trained
    val = results["val"]
    assert val["step"] == 6 and val["n"] == 14 and "ema" in val
    assert np.isfinite(val["srocc"]) and np.isfinite(val["quality_srocc"])
    losses = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in losses if "train/loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6] and all(
        np.isfinite(row["train/quality/plcc"]) for row in losses if row.get("train/loss")
    )
    header = (root / "run" / "predictions" / "val_raw_step6.csv").read_text().splitlines()[0]
    assert header == "filename,quality,score"
    # BatchNorm statistics were updated by the train-mode forward passes and saved with the params.
    model = _restored_model(root, 6)
    mean = np.asarray(model.technical_backbone.bn.mean[...])
    var = np.asarray(model.technical_backbone.bn.var[...])
    assert np.abs(mean).max() > 1e-3 and not np.allclose(var, 1.0)


def test_eval_mode_restores_the_trained_checkpoint(trained):
    cfg, root, results = trained
    again = trainer.evaluate_only(cfg, root / "run")["val"]
    assert again["step"] == 6 and "ema" in again
    assert again["srocc"] == pytest.approx(results["val"]["srocc"], abs=1e-12)
    assert again["ema"]["plcc"] == pytest.approx(results["val"]["ema"]["plcc"], abs=1e-6)


def test_checkpoint_round_trips_through_weights_and_pytorch_layout(trained, tmp_path):
    _, root, _ = trained
    model = _restored_model(root, 6)
    out = save_weights(model, tmp_path / "weights")
    assert weights_allclose(load_model(NAME, out), model)
    layout = to_state_dict(model)
    # PyTorch's BatchNorm names, and its integer counter, which carries no weight.
    assert {"technical_backbone.bn.running_mean", "technical_backbone.bn.running_var"} <= set(layout)
    assert layout["aesthetic_backbone.bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(layout["technical_backbone.conv.weight"].shape, (8, 3, 4, 4))
    back = with_state(abstract_model(NAME), convert_state_dict(layout, abstract_model(NAME)))
    assert weights_allclose(back, model)


def _video(root: Path) -> Path:
    return sorted((root / "tfds" / "kvq_synthetic_raw" / "val").glob("*.mp4"))[0]


def _direct_score(model: nnx.Module, video: Path) -> float:
    """The model's score of centred views sampled here, without the CLI."""
    model.eval()
    views = sample_views(video, SPEC.views, None)
    scores, _ = score_views(model, {b: jnp.asarray(v[None]) for b, v in views.items()})
    return float(scores["quality"][0])


def test_score_cli_scores_a_video(trained, tmp_path):
    _, root, _ = trained
    model = _restored_model(root, 6)
    weights = save_weights(model, tmp_path / "weights")
    video, out = _video(root), tmp_path / "scores.csv"
    argv = [str(video), "--weights", str(weights), "--out", str(out), "--no-progress", "--compile-cache", "none"]
    assert predict.main([*argv, "--challenge-csv", str(tmp_path / "c.csv"), "--challenge-score", "quality"]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert set(row) == {"filename", "quality", "fused", "error"} and row["fused"] == "" and row["error"] == ""
    assert float(row["quality"]) == pytest.approx(_direct_score(model, video), rel=1e-5, abs=1e-6)
    # The toy model has no normalised score, so a challenge CSV of "fused" is refused with a clear error.
    assert predict.main([*argv, "--challenge-csv", str(tmp_path / "d.csv")]) == 2


def test_export_runs_without_the_model_code(trained, tmp_path):
    _, root, _ = trained
    model = _restored_model(root, 6)
    exported, meta = export.export_model(model, SPEC.views)
    path, _ = export.save(exported, meta, tmp_path / "toy.jaxexport")
    scorer = export.load(path)
    assert set(scorer.meta["outputs"]) == {"quality"} and scorer.meta["fused"] is None
    assert scorer.meta["inputs"]["aesthetic"]["pixel_normalization"]["scale"] == pytest.approx(1 / 255)
    video = _video(root)
    views = sample_views(video, SPEC.views, None)
    got = scorer({b: v[None] for b, v in views.items()})
    assert float(got["quality"][0]) == pytest.approx(_direct_score(model, video), rel=1e-5, abs=1e-6)


def _predictions(path: Path) -> dict[str, float]:
    return {row["filename"]: float(row["score"]) for row in csv.DictReader(path.open())}


def test_checkpoint_ensembles_and_test_time_augmentation(trained):
    cfg, root, _ = trained
    run, raw = root / "run", root / "tfds" / "kvq_synthetic_raw"
    latest = _predictions(run / "predictions" / "val_raw_step6.csv")
    result = trainer.evaluate_only(_with(cfg, {"eval.checkpoints": 2}), run)["val"]
    assert result["step"] == 6 and result["averaged_checkpoints"] == 2
    averaged = _predictions(run / "predictions" / "val_raw_avg2_step6.csv")
    # The average of the two checkpoints' predictions, the step-3 ones computed here from its restored weights.
    step3 = _restored_model(root, 3)
    for name, score in averaged.items():
        assert score == pytest.approx((latest[name] + _direct_score(step3, raw / name)) / 2, rel=1e-5, abs=1e-6)
    # A uniform soup of the two checkpoints' weights, evaluated once.
    trainer.evaluate_only(_with(cfg, {"eval.checkpoints": 2, "eval.average": "params"}), run)
    assert set(_predictions(run / "predictions" / "val_raw_soup2_step6.csv")) == set(latest)
    # Test-time augmentation: 3 random samplings per video, averaged; drawn per video, so reproducible.
    tta = trainer.evaluate_only(_with(cfg, {"eval.tta": 3}), run)["val"]
    first = _predictions(run / "predictions" / "val_raw_step6.csv")
    assert np.isfinite(tta["srocc"]) and first != latest
    trainer.evaluate_only(_with(cfg, {"eval.tta": 3}), run)
    assert _predictions(run / "predictions" / "val_raw_step6.csv") == first


def _with(cfg, overrides):
    c = cfg.copy_and_resolve_references()
    c.update_from_flattened_dict(overrides)
    return c
