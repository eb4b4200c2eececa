#!/usr/bin/env bash
# Run ON a worker, from the kvq_jax checkout: start a command detached from the terminal (setsid + nohup, stdin
# from /dev/null), so that the ssh session that launched it can drop. Output goes to
# LOG_DIR/NAME[.TAG].HOST.log, the process id to LOG_DIR/NAME[.TAG].HOST.pid (host in the name: home
# directories may be shared between nodes), and LOG_DIR/latest.HOST.log points at the newest log.
# Refuses to start when the same NAME/TAG is still running on this host; stop it with launch/worker/stop.sh.
#
# Usage: bash launch/worker/start.sh --name=RUN [--tag=p0] [--dry-run] -- COMMAND [ARGS...]
#
# Knobs (environment variables or --flags):
#   NAME           run name, used in the file names (required)
#   TAG            optional extra name part, e.g. the process id when a host runs several processes
#   LOG_DIR        where logs and pid files go, relative to the checkout (default: runs/logs)
#   CHECK_SECONDS  wait this long and fail (printing the log tail) if the command already died (default: 5)
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KVQ_KNOBS=(NAME TAG LOG_DIR CHECK_SECONDS DRY_RUN)
kvq_parse_args "$@"
kvq_init
: "${NAME:=}" "${TAG:=}" "${LOG_DIR:=runs/logs}" "${CHECK_SECONDS:=5}"
kvq_require NAME "the run name names the log and pid files"
[[ "${NAME}${TAG}" =~ ^[A-Za-z0-9_.-]+$ ]] || kvq_die "NAME/TAG may only use letters, digits, '_', '.', '-': '${NAME}' '${TAG}'"
[[ "${CHECK_SECONDS}" =~ ^[0-9]+([.][0-9]+)?$ ]] || kvq_die "CHECK_SECONDS must be a number, got '${CHECK_SECONDS}'"
((${#KVQ_REST[@]})) || kvq_die "no command given (put it after --)"

host=$(hostname)
base="${LOG_DIR}/${NAME}${TAG:+.${TAG}}.${host}"
log="${base}.log"
pidfile="${base}.pid"

if [[ "${DRY_RUN}" == 1 ]]; then
  echo "$(kvq_quote setsid nohup "${KVQ_REST[@]}") > $(kvq_quote "$log") 2>&1 < /dev/null &"
  exit 0
fi

mkdir -p "${LOG_DIR}"
if [[ -f "$pidfile" ]] && kill -0 "$(<"$pidfile")" 2>/dev/null; then
  kvq_die "${NAME}${TAG:+ (${TAG})} is already running on ${host} as pid $(<"$pidfile"); stop it first: bash launch/worker/stop.sh --name=${NAME}"
fi
echo "+ $(kvq_quote setsid nohup "${KVQ_REST[@]}") > $(kvq_quote "$log") 2>&1 < /dev/null &" >&2
# setsid makes the command a session (and process-group) leader, so stop.sh can signal it with all its
# children (e.g. data-loader workers); it does not fork because a background job is never a group leader here.
setsid nohup "${KVQ_REST[@]}" >"$log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pidfile"
ln -sfn "$(basename "$log")" "${LOG_DIR}/latest.${host}.log"

sleep "${CHECK_SECONDS}"
if ! kill -0 "$pid" 2>/dev/null; then
  rc=0
  wait "$pid" || rc=$?
  rm -f "$pidfile"
  echo "---- last lines of ${PWD}/${log} ----" >&2
  tail -n 40 "$log" >&2 || true
  kvq_die "the command exited within ${CHECK_SECONDS}s on ${host} (exit status ${rc})"
fi
echo "started pid ${pid} on ${host}; log: ${PWD}/${log}"
