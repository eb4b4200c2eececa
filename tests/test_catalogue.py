"""Catalogue scoring: sharded over JAX processes, resumable after SIGKILL, every video exactly once."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from videos import encode_video

ROOT = Path(__file__).resolve().parents[1]
MODEL_ARGS = ["--model", "fastvqa_m", "--random-weights", "--view", "clip_len=8", "--clips", "1", "--no-progress"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> tuple[Path, Path]:
    """40 small clips of different content (in two folders) and 3 broken files; a manifest lists one folder."""
    root = tmp_path_factory.mktemp("catalogue")
    rng = np.random.default_rng(0)
    for k in range(40):
        folder = root / ("a" if k < 24 else "b")
        folder.mkdir(exist_ok=True)
        t = np.arange(12)[:, None, None, None]
        base = rng.integers(0, 256, (1, 64, 96, 3))
        frames = ((base + (3 + k) * t) % 256).astype(np.uint8)
        encode_video(folder / f"clip_{k:02d}.mp4", frames)
    for k in range(3):
        (root / "a" / f"broken_{k}.mp4").write_bytes(rng.bytes(3000))
    manifest = root / "list.txt"
    manifest.write_text("".join(f"b/{p.name}\n" for p in sorted((root / "b").glob("*.mp4"))))
    return root, manifest


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")
    return {**env, **extra}


def _cmd(root: Path, manifest: Path, out: Path, cache: Path, chunk: int) -> list[str]:
    args = [str(root / "a"), str(manifest), "--out", str(out), "--chunk-size", str(chunk), "--workers", "2"]
    return [sys.executable, "-m", "kvq_jax.catalogue", *args, *MODEL_ARGS, "--compile-cache", str(cache)]


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [r["filename"] for r in rows]
    assert len(names) == len(set(names)), "a video was written twice"
    return {r["filename"]: r for r in rows}


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name, row in a.items():
        assert row["error"] == b[name]["error"]
        if not row["error"]:
            assert float(row["fragments"]) == pytest.approx(float(b[name]["fragments"]), abs=1e-6, rel=1e-6)


@pytest.fixture(scope="module")
def single(catalogue, tmp_path_factory) -> tuple[dict, Path, Path]:
    root, manifest = catalogue
    base = tmp_path_factory.mktemp("single")
    out, cache = base / "out", base / "xla"
    r = subprocess.run(_cmd(root, manifest, out, cache, 8), env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return _rows(out), cache, out


def test_one_process_scores_every_video_once_and_reports(single, catalogue):
    rows, _, out = single
    assert len(rows) == 43
    broken = [n for n, r in rows.items() if r["error"]]
    assert sorted(Path(n).name for n in broken) == ["broken_0.mp4", "broken_1.mp4", "broken_2.mp4"]
    scores = [float(r["fragments"]) for r in rows.values() if not r["error"]]
    assert len(set(scores)) == 40  # 40 different clips, 40 different scores
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 1 and summary["scored_now"] == 40 and summary["errored_now"] == 3
    assert summary["videos_per_s"] > 0 and 0 <= summary["model_wait_share"] <= 1


def test_two_processes_give_the_one_process_output(single, catalogue, tmp_path):
    root, manifest = catalogue
    ref, cache, _ = single
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            _cmd(root, manifest, out, cache, 8),
            env=_env(
                KVQ_JAX_DISTRIBUTED="1",
                KVQ_JAX_COORDINATOR=f"127.0.0.1:{port}",
                KVQ_JAX_NUM_PROCESSES="2",
                KVQ_JAX_PROCESS_ID=str(p),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(2)
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    _assert_same(_rows(out), ref)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["rows"] == 43 and summary["error_rows"] == 3
    assert summary["scored_now"] == 40 and 0 <= summary["model_wait_share"] <= 1


def test_a_killed_run_resumes_without_losing_or_repeating_videos(single, catalogue, tmp_path):
    root, manifest = catalogue
    ref, cache, _ = single
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cmd(root, manifest, out, cache, 4), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 600
    while len(list((out / "chunks").glob("chunk-*.csv"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no chunks written"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "chunks").glob("chunk-*.csv")))
    assert 3 <= done < 11 and not (out / "scores.csv").exists()
    r = subprocess.run(_cmd(root, manifest, out, cache, 4), env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same(_rows(out), ref)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks_skipped_as_done"] == done and summary["rows"] == 43
    # The same folder with another chunking is another run: refused, nothing overwritten.
    r = subprocess.run(_cmd(root, manifest, out, cache, 8), env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 2 and "holds another run" in r.stderr
