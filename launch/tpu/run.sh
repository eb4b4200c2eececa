#!/usr/bin/env bash
# Start training on ALL workers of the slice at once (multi-controller JAX: every host runs the same
# command; kvq_jax.main calls jax.distributed.initialize() because KVQ_JAX_DISTRIBUTED=1, and it finds the
# coordinator itself on Cloud TPU). Each worker runs it detached (launch/worker/start.sh) with its log in
# ~/REMOTE_DIR/runs/logs/RUN_NAME.HOSTNAME.log, so the ssh session may drop. Checkpoints and metrics go to the
# gs:// WORKDIR; re-running with the same RUN_NAME/WORKDIR lets kvq_jax.main resume from its latest checkpoint.
#
# Usage: ZONE=... TPU_NAME=... BUCKET=... bash launch/tpu/run.sh [--dry-run] [--knob=value ...] [-- TRAINER FLAGS]
#   e.g. ... run.sh --run-name=dover-a -- --config.train.num_epochs=30
# Knobs: PROJECT ZONE TPU_NAME REMOTE_DIR BUCKET CONFIG RUN_NAME WORKDIR DATA_DIR EXTRA_ARGS EXTRA_ENV
#        (see launch/tpu/common.sh). Follow the logs with launch/tpu/logs.sh; stop with launch/tpu/stop.sh.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
kvq_tpu_workdir
kvq_tpu_data_dir

env_words=()
kvq_split_words env_words "${EXTRA_ENV}"
kvq_check_env_words "${env_words[@]}"
extra=()
kvq_split_words extra "${EXTRA_ARGS}"

train=(env KVQ_JAX_DISTRIBUTED=1)
data_flag=()
if [[ "${DATA_DIR}" != none ]]; then
  train+=("TFDS_DATA_DIR=${DATA_DIR}")
  data_flag=("--config.data.data_dir=${DATA_DIR}")
fi
train+=("${env_words[@]}" .venv/bin/python -m kvq_jax.main --config "${CONFIG}" --workdir "${WORKDIR}"
  "${data_flag[@]}" "${extra[@]}" "${KVQ_REST[@]}")

kvq_tpu_ssh all "cd $(kvq_quote "${REMOTE_DIR}") && bash launch/worker/start.sh $(kvq_quote "--name=${RUN_NAME}") -- $(kvq_quote "${train[@]}")"
kvq_note "run ${RUN_NAME}: workdir ${WORKDIR}; logs: bash launch/tpu/logs.sh --run-name=${RUN_NAME} (--worker=all)"
