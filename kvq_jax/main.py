"""Main entry: `python -m kvq_jax.main --config configs/dover.py[:quick] --workdir DIR [--config.a.b=v]`.

Modes (`--config.mode` or `--mode`): `train` (train + periodic evaluation, resumes from the workdir),
`eval` (evaluate the workdir's latest checkpoint, or `init_weights`). The console shows progress bars, one line
per checkpoint and the results table; `--verbosity=0` (absl's INFO) adds the libraries' logs (orbax, grain, TFDS).
Errors the user can act on (an unreadable workdir, a non-finite loss) end the run with one line and status 1.
Multi-host: set KVQ_JAX_DISTRIBUTED=1
to call `jax.distributed.initialize()` (auto-detects Cloud TPU, SLURM, Open MPI); KVQ_JAX_COORDINATOR,
KVQ_JAX_NUM_PROCESSES and KVQ_JAX_PROCESS_ID give an explicit cluster.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from kvq_jax.distributed import maybe_initialize_distributed
from kvq_jax.train import trainer
from kvq_jax.train.checkpoints import CheckpointError

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and results go")
_MODE = flags.DEFINE_enum("mode", None, ["train", "eval"], "overrides config.mode")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # absl's default is INFO: hundreds of orbax lines per run
        logging.set_verbosity(logging.WARNING)
    maybe_initialize_distributed()
    logging.info(
        "process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
    )
    cfg = _CONFIG.value
    mode = _MODE.value or cfg.mode
    try:
        if mode == "train" and cfg.get("protocol") and cfg.protocol.splits:
            trainer.run_protocol(cfg, _WORKDIR.value)
        elif mode == "train":
            trainer.train_and_evaluate(cfg, _WORKDIR.value)
        else:
            trainer.evaluate_only(cfg, _WORKDIR.value)
    except (CheckpointError, trainer.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
