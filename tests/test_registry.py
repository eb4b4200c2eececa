"""The registry is the one place a model's identity lives: specs are complete, and no other code names a model."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kvq_jax.models import get_spec, model_names, spec_for_official_config
from kvq_jax.models.registry import ModelSpec, register

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = [n for n in model_names() if get_spec(n).family in ("dover", "fastvqa", "cover", "zoomvqa")]


def _named_in_code(path: Path, names: list[str]) -> set[str]:
    """Model names that occur as whole words in the string literals of a file (docstrings not counted)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found |= {n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", node.value)}
    return found


def test_a_model_is_named_only_in_its_family_module_and_its_config():
    offenders = []
    files = [*(ROOT / "kvq_jax").rglob("*.py"), *(ROOT / "configs").glob("*.py")]
    for path in files:
        for name in _named_in_code(path, BUILT_IN):
            family = get_spec(name).family
            allowed = {ROOT / "kvq_jax" / "models" / f"{family}.py", ROOT / "configs" / f"{family}.py"}
            allowed.add(ROOT / "configs" / f"{name}.py")
            if path not in allowed:
                offenders.append(f"{path.relative_to(ROOT)} names {name!r}")
    assert not offenders, offenders
    # The scan sees names where they are: the family modules do name their models.
    assert _named_in_code(ROOT / "kvq_jax/models/fastvqa.py", BUILT_IN) == set(model_names("fastvqa"))


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_specs_are_complete(name):
    spec = get_spec(name)
    assert spec.weights is not None and spec.weights.url.startswith("https://")
    assert spec.weights.file.endswith((".pth", ".pth.tar"))
    assert spec.official is not None and spec_for_official_config(spec.official.config) is spec
    assert spec.fusion is not None and set(spec.fusion.branches) == set(spec.branch_names)
    assert spec.score_names == spec.branch_names and hash(spec)  # hashable: static data of jitted models


def test_register_refuses_duplicates_and_unknown_names_are_listed():
    spec = get_spec(BUILT_IN[0])
    with pytest.raises(ValueError, match="already registered"):
        register(spec)
    with pytest.raises(ValueError, match="official config"):
        register(
            ModelSpec(
                name="copy_of_first", family="x", branches=spec.branches, build=spec.build, official=spec.official
            )
        )
    with pytest.raises(ValueError, match="choose one of"):
        get_spec("no_such_model")
    with pytest.raises(ValueError, match="no registered model"):
        spec_for_official_config("nope.yml")
    with pytest.raises(ValueError, match="scores"):  # a model with its own outputs needs all of its branches
        ModelSpec(name="t", family="x", branches=spec.branches, build=spec.build, outputs=("q",)).scores_of(
            spec.branch_names[:1]
        )
