#!/usr/bin/env bash
# Show the training log of one worker (default 0) or of all workers ("all": each line prefixed with the
# worker's hostname). Follows the log (tail -F) unless FOLLOW=0; Ctrl-C stops following, not the training.
#
# Usage: ZONE=... TPU_NAME=... bash launch/tpu/logs.sh [--worker=N|all] [--run-name=NAME] [--dry-run]
# Knobs: PROJECT ZONE TPU_NAME REMOTE_DIR, and
#   WORKER    worker index or "all" (default: 0)
#   RUN_NAME  which run's log (default: the latest run started on that worker)
#   LINES     how many lines to show first (default: 100)
#   FOLLOW    1: keep following (default), 0: print and exit
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
kvq_no_rest
: "${WORKER:=0}" "${LINES:=100}" "${FOLLOW:=1}"
[[ "${WORKER}" =~ ^([0-9]+|all)$ ]] || kvq_die "WORKER must be a worker index or 'all', got '${WORKER}'"
[[ "${LINES}" =~ ^[0-9]+$ ]] || kvq_die "LINES must be a whole number, got '${LINES}'"
kvq_require_bool FOLLOW

if [[ -n "${RUN_NAME}" ]]; then
  [[ "${RUN_NAME}" =~ ^[A-Za-z0-9_.-]+$ ]] || kvq_die "RUN_NAME may only use letters, digits, '_', '.', '-': '${RUN_NAME}'"
  log="runs/logs/${RUN_NAME}.\$(hostname).log"
else
  log="runs/logs/latest.\$(hostname).log"
fi
tail_cmd="tail -n ${LINES}"
[[ "${FOLLOW}" == 0 ]] || tail_cmd+=" -F"
remote="cd $(kvq_quote "${REMOTE_DIR}") && ${tail_cmd} ${log}"
[[ "${WORKER}" != all ]] || remote+=" | sed -u \"s/^/[\$(hostname)] /\""
kvq_tpu_ssh "${WORKER}" "${remote}"
