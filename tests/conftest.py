"""Shared pytest setup: absl flags parsed (grain workers read them) and fixture paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from absl import flags

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return PARITY
