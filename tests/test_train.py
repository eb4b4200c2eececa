"""The training entry point: data-parallel and FSDP equivalence, learning on a fixed batch, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _steps(devices: int, n: int, out: Path, fsdp: int = 1) -> dict[str, np.ndarray]:
    r = subprocess.run(
        [sys.executable, str(TESTS / "tiny.py"), "step", str(n), str(out), str(fsdp)],
        env=_env(devices),
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


def test_data_parallel_step_equals_single_device(tmp_path):
    """Same global batch, same dropout keys: 1, 2 and 8 fake CPU devices give the same losses, gradient norms
    and params after two AdamW steps.

    Only the summation order of the gradient all-reduce differs. Adam's first steps move each param by about
    ±lr whatever the gradient's size, so a gradient that is zero up to rounding may flip sign between the two
    orders: such params may differ by up to 2·lr (2e-3 here); everything else must agree to float tolerance.
    """
    ref = _steps(1, 2, tmp_path / "d1.npz")
    assert int(ref["devices"]) == 1
    runs = {n: _steps(n, 2, tmp_path / f"d{n}.npz") for n in (2, 8)}
    assert [int(r["devices"]) for r in runs.values()] == [2, 8]
    _assert_same_training(ref, runs)


def test_fsdp_step_equals_data_parallel(tmp_path):
    """Params and Adam moments split 4 ways (mesh data=2 × fsdp=4 and data=1 × fsdp=8) train exactly like pure
    data parallelism over the same 8 devices (same tolerance as above: only reduction orders differ)."""
    ref = _steps(8, 2, tmp_path / "dp.npz")
    assert int(ref["split"]) == 0
    runs = {f: _steps(8, 2, tmp_path / f"fsdp{f}.npz", fsdp=f) for f in (4, 8)}
    for f, got in runs.items():
        print(f"fsdp={f}: {int(got['split'])} state leaves split")
        assert int(got["split"]) > 50  # most weights, their EMA and both Adam moments are really split
    _assert_same_training(ref, runs)


def _assert_same_training(ref: dict[str, np.ndarray], runs: dict, steps: int = 2, lr: float = 1e-3) -> None:
    """Equal losses; params equal to float tolerance but for a few whose near-zero gradient flipped sign
    between reduction orders: each such step moves them at most about ±lr, so they may differ by 2·lr·steps."""
    leaves = sorted(k for k in ref if k.startswith("arr_"))
    for n, got in runs.items():
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
        if "grad_norm" in ref:
            np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=1e-4)
        assert leaves and leaves == sorted(k for k in got if k.startswith("arr_"))
        a = np.concatenate([got[k].ravel() for k in leaves])
        b = np.concatenate([ref[k].ravel() for k in leaves])
        close = np.isclose(a, b, rtol=1e-4, atol=1e-6)
        print(f"{n}: {close.mean():.5%} of {a.size} params equal to float tolerance")
        assert close.mean() > 0.999
        assert np.abs(a - b).max() <= 2 * lr * steps + 1e-6


def test_loss_decreases_on_a_fixed_batch():
    sys.path.insert(0, str(TESTS))
    import tiny

    loss = tiny.run_steps(15)["loss"]
    print("loss on a fixed batch:", [round(x, 4) for x in loss])
    assert all(np.isfinite(loss))
    assert min(loss[-3:]) < 0.7 * loss[0]


def _metrics(workdir: Path) -> dict[int, float]:
    """Last logged loss per step (a killed run may have logged steps that the resumed run repeats)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train/loss" in row:
            out[row["step"]] = row["train/loss"]
    return out


def _train_cmd(data_dir: Path, workdir: Path, **overrides) -> list[str]:
    overrides = {"data.data_dir": str(data_dir), **overrides}
    return [sys.executable, str(TESTS / "tiny.py"), "train", json.dumps(overrides), str(workdir)]


def test_kill_and_resume_gives_identical_losses(tmp_path):
    """SIGKILL after the step-3 checkpoint, rerun: the steps after the last checkpoint repeat the uninterrupted run's
    losses exactly (same batches from the restored iterator, dropout keys from the step). 24 steps, so the kill lands
    before the end however fast the tiny steps run."""
    data, steps = tmp_path / "tfds", {"train.num_steps": 24}
    full = tmp_path / "full"
    r = subprocess.run(_train_cmd(data, full, **steps), env=_env(1), capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = _metrics(full)
    assert sorted(ref) == list(range(1, 25))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(data, killed, **steps), env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "3" / "_CHECKPOINT_METADATA").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 3"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _metrics(killed)
    assert 3 in before and 24 not in before, "the run must die between the checkpoint and the end"
    kept = max(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())

    r = subprocess.run(_train_cmd(data, killed, **steps), env=_env(1), capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = _metrics(killed)
    print("uninterrupted:", ref, "\nkilled+resumed:", resumed, "\nresumed after step", kept)
    assert sorted(resumed) == list(range(1, 25))
    for step in range(kept + 1, 25):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-6), step


def _main_cmd(tmp_path: Path, data_dir: Path, workdir: Path, **overrides) -> list[str]:
    """`python -m kvq_jax.main` on the tiny model: a config file of the user's kind, importing tests/tiny.py."""
    cfg = tmp_path / "tiny_config.py"
    cfg.write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport tiny\n\n\n"
        f"def get_config():\n    return tiny.config({str(data_dir)!r}, **{overrides!r})\n"
    )
    return [sys.executable, "-m", "kvq_jax.main", f"--config={cfg}", f"--workdir={workdir}"]


def _damage(checkpoint: Path) -> None:
    """Truncate the largest file of a checkpoint's train state to half its size."""
    biggest = max((p for p in (checkpoint / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = biggest.read_bytes()
    biggest.write_bytes(data[: len(data) // 2])


def test_a_damaged_checkpoint_is_set_aside_and_training_continues_from_the_previous_one(tmp_path):
    data, work = tmp_path / "tfds", tmp_path / "run"
    keep2 = {"checkpoint.keep_latest": 2}
    r = subprocess.run(_main_cmd(tmp_path, data, work, **keep2), env=_env(1), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    first = _metrics(work)
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    _damage(work / "checkpoints" / "6")

    r = subprocess.run(_main_cmd(tmp_path, data, work, **keep2), env=_env(1), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "checkpoint 6 cannot be read" in r.stderr and "resumed from the checkpoint of step 3" in r.stderr
    assert (work / "damaged_checkpoints" / "6" / "state").is_dir()  # kept aside, not deleted
    resumed = _metrics(work)
    assert sorted(resumed) == list(range(1, 7))
    for step in (4, 5, 6):  # steps 4-6 were trained again from step 3: same batches, dropout and schedule
        assert resumed[step] == pytest.approx(first[step], rel=1e-6), step

    # Nothing readable left: one line, status 1, and the damaged checkpoints are still kept.
    for step in (3, 6):
        _damage(work / "checkpoints" / str(step))
    r = subprocess.run(_main_cmd(tmp_path, data, work, **keep2), env=_env(1), capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no checkpoint in") and "can be read" in last
    assert {p.name for p in (work / "damaged_checkpoints").iterdir()} == {"3", "6", "6-2"}
