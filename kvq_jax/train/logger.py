"""Training metrics as JSON lines and TensorBoard scalars, written by process 0 only."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import jax


class MetricLogger:
    """JSONL + TensorBoard scalars, written by process 0 only."""

    def __init__(self, workdir: Path):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.jsonl = open(workdir / "metrics.jsonl", "a")
            self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """A metric that is undefined for this run (NaN: e.g. the challenge score of a split without rank pairs) is
        null in the JSON lines (strict JSON) and left out of TensorBoard (which would warn on every write)."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        self.jsonl.write(json.dumps({"step": step, **{k: v if math.isfinite(v) else None for k, v in values.items()}}))
        self.jsonl.write("\n")
        self.jsonl.flush()
        for k, v in values.items():
            if math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
