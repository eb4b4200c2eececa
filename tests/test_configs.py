"""Config files: every variant loads through absl/ml_collections flags, overrides work, views follow branches."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from kvq_jax.models import get_spec
from kvq_jax.train import data

ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "configs"
VARIANTS = [
    "cover.py",
    "cover.py:head",
    "cover.py:quick",
    "dover.py",
    "dover.py:head",
    "dover.py:quick",
    "dover_mobile.py",
    "dover_mobile.py:quick",
    "fastvqa.py",
    "fastvqa.py:fastervqa",
    "fastvqa.py:fastvqa_m,quick",
    "ksvqe.py",
    "ksvqe.py:quick",
    "simplevqa.py",
    "simplevqa.py:e2e",
    "simplevqa.py:original",
    "simplevqa.py:quick",
]


def _parse(*argv: str) -> ml_collections.ConfigDict:
    """Parse `--config=...` and overrides with `python -m kvq_jax.main`'s own flags, in a fresh process (the
    override flags register on absl's global FLAGS, which this test process has already parsed)."""
    code = (
        "import sys; from absl import flags; import kvq_jax.main; "
        "flags.FLAGS(['main', '--workdir=unused', *sys.argv[1:]]); print(flags.FLAGS.config.to_json())"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False, cwd=ROOT)
    if r.returncode:
        raise ValueError(r.stderr.strip().splitlines()[-1])
    return ml_collections.ConfigDict(json.loads(r.stdout.strip().splitlines()[-1]))


def _load(variant: str) -> ml_collections.ConfigDict:
    file, _, arg = variant.partition(":")
    spec = importlib.util.spec_from_file_location(file.removesuffix(".py"), CONFIGS / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_loads_and_its_views_cover_its_branches(variant):
    cfg = _load(variant)
    specs = data.view_specs(cfg)
    assert tuple(specs) == data.model_branches(cfg)
    assert set(specs) <= set(get_spec(cfg.model).branch_names)
    assert cfg.train.batch_size % 8 == 0 or cfg.train.batch_size in (1, 2, 4)


def test_overrides_reach_tuples_and_nested_fields():
    cfg = _parse(
        f"--config={CONFIGS / 'dover.py:quick'}",
        "--config.optim.freeze=()",
        "--config.sharding.fsdp=4",
        "--config.data.view_overrides.technical.clip_len=8",
    )
    assert tuple(cfg.optim.freeze) == () and cfg.sharding.fsdp == 4
    assert data.view_specs(cfg)["technical"].clip_len == 8


def test_branch_subset_selects_views_and_rejects_unknown_branches():
    cfg = _parse(f"--config={CONFIGS / 'dover.py'}", "--config.branches=('technical',)")
    assert data.model_branches(cfg) == ("technical",)
    assert list(data.view_specs(cfg)) == ["technical"]
    cfg.branches = ("fragments",)
    with pytest.raises(ValueError, match="dover has"):
        data.model_branches(cfg)
    cfg.branches = ()
    cfg.data.view_overrides = {"nope": {"clip_len": 4}}
    with pytest.raises(ValueError, match="names branch 'nope'"):
        data.view_specs(cfg)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        _load("dover.py:fast")
