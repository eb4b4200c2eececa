#!/usr/bin/env bash
# Run ON a worker, from the kvq_jax checkout: stop what launch/worker/start.sh started on this host. Sends
# SIGTERM to each process group recorded in LOG_DIR/*.HOST.pid (or only NAME's), waits up to TIMEOUT seconds,
# then sends SIGKILL. Stale pid files (the process group is gone) are removed without signalling anything.
#
# Usage: bash launch/worker/stop.sh [--name=RUN] [--timeout=30] [--dry-run]
#
# Knobs (environment variables or --flags):
#   NAME     only stop this run (default: every run started on this host)
#   LOG_DIR  where start.sh put the pid files (default: runs/logs)
#   TIMEOUT  seconds to wait after SIGTERM before SIGKILL (default: 30)
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KVQ_KNOBS=(NAME LOG_DIR TIMEOUT DRY_RUN)
kvq_parse_args "$@"
kvq_init
kvq_no_rest
: "${NAME:=}" "${LOG_DIR:=runs/logs}" "${TIMEOUT:=30}"
[[ "${TIMEOUT}" =~ ^[0-9]+$ ]] || kvq_die "TIMEOUT must be a whole number of seconds, got '${TIMEOUT}'"

host=$(hostname)
shopt -s nullglob
if [[ -n "${NAME}" ]]; then
  pidfiles=("${LOG_DIR}/${NAME}.${host}.pid" "${LOG_DIR}/${NAME}".*."${host}.pid")
else
  pidfiles=("${LOG_DIR}"/*."${host}.pid")
fi

stopped=0
for f in "${pidfiles[@]}"; do
  [[ -f "$f" ]] || continue
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] || kvq_die "${f} does not hold a process id"
  # start.sh made the command a process-group leader; signal the whole group (the command and its children).
  if ! kill -0 -- "-${pid}" 2>/dev/null; then
    kvq_note "${f}: process group ${pid} is gone; removing the stale pid file"
    [[ "${DRY_RUN}" == 1 ]] || rm -f "$f"
    continue
  fi
  kvq_run kill -TERM -- "-${pid}"
  if [[ "${DRY_RUN}" != 1 ]]; then
    for ((i = 0; i < TIMEOUT * 10; i++)); do
      kill -0 -- "-${pid}" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 -- "-${pid}" 2>/dev/null; then
      kvq_run kill -KILL -- "-${pid}"
    fi
    rm -f "$f"
  fi
  stopped=$((stopped + 1))
done
kvq_note "${host}: stopped ${stopped} run(s)"
