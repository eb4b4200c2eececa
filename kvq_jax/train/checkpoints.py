"""The checkpoint policy: orbax saves the train state and the grain iterator together, keeps the latest and the
best by validation score, and restores across process counts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def checkpoint_manager(workdir: Path, cfg) -> ocp.CheckpointManager:
    """Keeps the latest checkpoint and the best by validation final score; async saves."""
    policies = ocp.checkpoint_managers
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(cfg.checkpoint.keep_latest),
            policies.BestN(get_metric_fn=lambda m: m["final"], n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation, enable_async_checkpointing=cfg.checkpoint.get("async", True)
    )
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(), item_names=("state", "data_iter"), options=options
    )


def iterator_checkpoint_fits(mngr: ocp.CheckpointManager, step: int) -> bool:
    """Whether this process's grain iterator state is in the checkpoint (grain names it per process and
    process count); if not, the data position follows from the step (see `pipeline.train_iterator`)."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return (mngr.directory / str(step) / "data_iter" / name).exists()  # an epath: local or gs://


def selection_metric(result: Mapping[str, Any]) -> float:
    """What "best" checkpoints are chosen by: the challenge final score, or SROCC where a split has no pairs."""
    final = float(result["final"])
    return final if math.isfinite(final) else float(result["srocc"])


def restore_model_state(mngr: ocp.CheckpointManager, step: int, current: dict, *, ema: bool) -> dict:
    """The model part of a train checkpoint (params, statistics and EMA params; not the optimiser state), laid
    out like `current` ({"params", "stats"}), restored onto `current`'s shardings."""
    abstract = {k: jax.tree.map(ocp.utils.to_shape_dtype_struct, v) for k, v in current.items() if jax.tree.leaves(v)}
    if ema:
        abstract["ema"] = abstract["params"]
    restore = ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True
    )
    return dict(mngr.restore(step, args=ocp.args.Composite(state=restore))["state"])
