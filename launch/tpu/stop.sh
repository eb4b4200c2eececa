#!/usr/bin/env bash
# Stop the training processes on all workers (SIGTERM to each run's process group, SIGKILL after 30 s) but
# keep the TPU. Needed before starting another run: a TPU chip can be held by one process only.
#
# Usage: ZONE=... TPU_NAME=... bash launch/tpu/stop.sh [--run-name=NAME] [--dry-run]
# Knobs: PROJECT ZONE TPU_NAME REMOTE_DIR, and RUN_NAME (default: stop every run started by run.sh).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
kvq_no_rest
name_flag=()
[[ -z "${RUN_NAME}" ]] || name_flag=("--name=${RUN_NAME}")

kvq_tpu_ssh all "cd $(kvq_quote "${REMOTE_DIR}") && bash launch/worker/stop.sh $(kvq_quote "${name_flag[@]}")"
