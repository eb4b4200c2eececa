"""The checkpoint policy: orbax saves the train state and the grain iterator together, keeps the latest and the
best by validation score, restores across process counts, and never trips over a damaged checkpoint: one that
cannot be read is moved aside (never deleted) and the newest readable one is used."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm


class CheckpointError(RuntimeError):
    """No checkpoint of a workdir can be read; the message names them and where they were moved."""


def notice(message: str) -> None:
    """One line for the user (process 0), on stderr between the progress bars."""
    if jax.process_index() == 0:
        tqdm.write(message, file=sys.stderr)


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


def restore_model_state(mngr: ocp.CheckpointManager, step: int, current: dict, ema: Any = None) -> dict:
    """The model part of a train checkpoint (params, statistics and, given its layout ``ema``, the EMA; not the
    optimiser state), laid out like `current` ({"params", "stats"}), restored onto `current`'s shardings."""
    targets = {k: v for k, v in current.items() if jax.tree.leaves(v)}
    if ema is not None:
        targets["ema"] = ema
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, targets)
    restore = ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True
    )
    return dict(mngr.restore(step, args=ocp.args.Composite(state=restore))["state"])


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def set_aside(workdir: Path, mngr: ocp.CheckpointManager, step: int) -> epath.Path:
    """Move checkpoint `step` to ``workdir/damaged_checkpoints/`` (process 0), out of the manager's sight."""
    src = epath.Path(mngr.directory) / str(step)
    dest = epath.Path(workdir) / "damaged_checkpoints" / str(step)
    k = 1
    while dest.exists():
        k += 1
        dest = dest.parent / f"{step}-{k}"
    if jax.process_index() == 0:
        dest.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dest)
    multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    return dest


def resume(
    workdir: Path, cfg, target: Any, make_iterator: Callable[[int], Any]
) -> tuple[ocp.CheckpointManager, int, Any, Any]:
    """(manager, step, restored train state or None, data iterator): the newest checkpoint that can be read.

    `target` is the abstract train state; `make_iterator(start_batch)` builds the data iterator, whose own state
    is restored where the checkpoint holds one for this process count (else it starts at the step's batch).
    A checkpoint that fails to restore is moved aside with a one-line notice; if none can be read, CheckpointError.
    """
    mngr = checkpoint_manager(workdir, cfg)
    damaged = []
    for step in sorted(mngr.all_steps(), reverse=True):
        fits = iterator_checkpoint_fits(mngr, step)
        data_iter = make_iterator(0 if fits else step)
        items = {"state": ocp.args.StandardRestore(target)}
        if fits:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(**items))["state"]
        except Exception as err:  # orbax and tensorstore raise many types for a truncated or missing file
            mngr.close()
            aside = set_aside(workdir, mngr, step)
            damaged.append(str(aside))
            notice(f"checkpoint {step} cannot be read ({_reason(err)}); moved to {aside}")
            mngr = checkpoint_manager(workdir, cfg)
            continue
        if not fits:
            logging.info("data iterator saved for another process count: data resume at batch %d", step)
        notice(f"resumed from the checkpoint of step {step} in {mngr.directory}")
        return mngr, step, restored, data_iter
    if damaged:
        raise CheckpointError(
            f"no checkpoint in {workdir / 'checkpoints'} can be read (moved aside: {', '.join(damaged)}); "
            "run again to start from step 0"
        )
    return mngr, 0, None, make_iterator(0)
