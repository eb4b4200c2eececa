#!/usr/bin/env bash
# Stop what launch/gpu/multinode.sh started: on every host of HOSTS, over ssh, run launch/worker/stop.sh
# (SIGTERM to each run's process group, SIGKILL after 30 s).
#
# Usage: HOSTS=gpu1,gpu2 bash launch/gpu/stop.sh [--run-name=NAME] [--dry-run]
# Knobs: HOSTS (required), RUN_NAME (default: every run started there), REMOTE_DIR, SSH_FLAGS
#        (as in launch/gpu/multinode.sh).
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KVQ_KNOBS=(HOSTS RUN_NAME REMOTE_DIR SSH_FLAGS DRY_RUN)
kvq_parse_args "$@"
kvq_init
kvq_no_rest
: "${HOSTS:=}" "${RUN_NAME:=}" "${REMOTE_DIR:=${KVQ_REPO_ROOT}}" "${SSH_FLAGS:=}"
kvq_require HOSTS "list the hosts, comma-separated"
IFS=, read -r -a hosts <<<"${HOSTS}"
ssh_flags=()
kvq_split_words ssh_flags "${SSH_FLAGS}"
kvq_require_cmd ssh "Install an ssh client"
stop=(bash launch/worker/stop.sh)
[[ -z "${RUN_NAME}" ]] || stop+=("--name=${RUN_NAME}")

for h in "${hosts[@]}"; do
  [[ "$h" =~ ^[A-Za-z0-9_.@-]+$ ]] || kvq_die "bad host name '${h}' in HOSTS='${HOSTS}'"
  kvq_run ssh "${ssh_flags[@]}" "$h" "cd $(kvq_quote "${REMOTE_DIR}") && $(kvq_quote "${stop[@]}")"
done
