"""Multi-controller training for real: 2 local processes (jax.distributed over 127.0.0.1, 2 CPU devices each)
train like 1 process with 4 devices, and their orbax checkpoints restore across the two topologies."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import TESTS, _assert_same_training, _env, _metrics, _train_cmd

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], processes: int, devices: int) -> None:
    """`cmd` as `processes` JAX processes of `devices` CPU devices each (one coordinator on localhost)."""
    env = _env(devices)
    if processes > 1:
        env.update(
            KVQ_JAX_DISTRIBUTED="1",
            KVQ_JAX_COORDINATOR=f"127.0.0.1:{_free_port()}",
            KVQ_JAX_NUM_PROCESSES=str(processes),
        )
    procs = [
        subprocess.Popen(
            cmd,
            env={**env, "KVQ_JAX_PROCESS_ID": str(i)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for i, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, f"process {i}/{processes}: {err[-3000:]}"


def _params(workdir: Path, step: int, out: Path) -> dict[str, np.ndarray]:
    r = subprocess.run(
        [sys.executable, str(TESTS / "tiny.py"), "dump", str(workdir), str(step), str(out)],
        env=_env(1),
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


def _run_result(workdir: Path, step: int, tmp: Path) -> dict[str, np.ndarray]:
    """Params at `step` plus the logged losses (in the form `_assert_same_training` compares)."""
    rows = _metrics(workdir)
    out = _params(workdir, step, tmp / f"{workdir.name}_{step}.npz")
    out["loss"] = np.array([rows[s] for s in sorted(rows)])
    return out


def _read_csv(path: Path) -> np.ndarray:
    return np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding=None)


def _assert_same_predictions(ref: Path, other: Path, truth: Path) -> None:
    """Every video of the split once, in the same order in both runs, with the same branch scores up to one
    shift per branch: the losses are shift-invariant, so the head's last bias has a ~0 gradient that Adam
    turns into ±lr steps of either sign (the sign flips `_assert_same_training` bounds)."""
    a, b, t = _read_csv(ref), _read_csv(other), _read_csv(truth)
    assert sorted(a["filename"]) == sorted(t["filename"]) and len(set(a["filename"])) == len(t)
    assert list(b["filename"]) == list(a["filename"])
    for branch in ("technical", "aesthetic"):
        x, y = a[branch] - a[branch].mean(), b[branch] - b[branch].mean()
        assert x.std() > 0
        np.testing.assert_allclose(y, x, atol=1e-3 * x.std(), err_msg=branch)


def test_two_processes_train_like_one_and_checkpoints_cross_restore(tmp_path):
    data = tmp_path / "tfds"
    one, two = tmp_path / "one", tmp_path / "two"
    cmd = lambda w, n, **kw: _train_cmd(data, w, **{"train.num_steps": n, "checkpoint.every": 2, **kw})

    # 4 steps: 1 process × 4 devices, then 2 processes × 2 devices, on the same global batches; both evaluate
    # val at the end (14 videos in batches of 4: the last batch is padded, each process predicts its slice).
    _run(cmd(one, 4, **{"eval.splits": ["val"]}), processes=1, devices=4)
    _run(cmd(two, 4, **{"eval.splits": ["val"]}), processes=2, devices=2)
    preds = [w / "predictions" / "val_raw_step4.csv" for w in (one, two)]
    _assert_same_predictions(*preds, truth=data / "kvq_synthetic_raw" / "val_data.csv")
    assert sorted(_metrics(two)) == [1, 2, 3, 4]
    iterators = sorted(f for f in os.listdir(two / "checkpoints" / "4" / "data_iter") if f.endswith(".json"))
    assert iterators == ["process_0-of-2.json", "process_1-of-2.json"]  # so resuming on 1 process cannot use them
    _assert_same_training(_run_result(one, 4, tmp_path), {"2 processes": _run_result(two, 4, tmp_path)}, steps=4)

    # Resume to step 6: in place (same topology, grain iterator restored) as the reference, and across
    # topologies: the 1-process checkpoint in 2 processes and the 2-process checkpoint in 1 process.
    to_two, to_one = tmp_path / "one_to_two", tmp_path / "two_to_one"
    shutil.copytree(one, to_two)
    shutil.copytree(two, to_one)
    _run(cmd(one, 6), processes=1, devices=4)
    _run(cmd(to_two, 6), processes=2, devices=2)
    _run(cmd(to_one, 6), processes=1, devices=4)
    ref = _run_result(one, 6, tmp_path)
    runs = {w.name: _run_result(w, 6, tmp_path) for w in (to_two, to_one)}
    print({k: [round(float(x), 6) for x in v["loss"]] for k, v in {"in place": ref, **runs}.items()})
    for r in runs.values():
        assert len(r["loss"]) == 6
    _assert_same_training(ref, runs, steps=6)
