"""Training metrics as JSON lines and TensorBoard scalars, written by process 0 only."""

from __future__ import annotations

import json
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
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self.jsonl.flush()
        for k, v in scalars.items():
            self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
