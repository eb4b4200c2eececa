"""Joining a multi-process JAX run (TPU pod slices, multi-GPU hosts, SLURM) when the environment asks for it."""

from __future__ import annotations

import os

import jax


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize` when ``KVQ_JAX_DISTRIBUTED=1``; explicit coordinator variables
    (``KVQ_JAX_COORDINATOR``, ``KVQ_JAX_NUM_PROCESSES``, ``KVQ_JAX_PROCESS_ID``) win over auto-detection."""
    if os.environ.get("KVQ_JAX_DISTRIBUTED", "0") in ("", "0"):
        return
    coordinator = os.environ.get("KVQ_JAX_COORDINATOR")
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["KVQ_JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["KVQ_JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()
