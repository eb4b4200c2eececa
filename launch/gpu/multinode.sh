#!/usr/bin/env bash
# Multi-node GPU training without SLURM: over ssh, start `python -m kvq_jax.main` on every host of HOSTS,
# one process per host (PROCS=node) or one per GPU (PROCS=gpu, pinned with CUDA_VISIBLE_DEVICES), each with
# the explicit coordinator variables KVQ_JAX_COORDINATOR (first host:PORT), KVQ_JAX_NUM_PROCESSES and
# KVQ_JAX_PROCESS_ID. Processes run detached (launch/worker/start.sh): logs in
# REMOTE_DIR/runs/logs/RUN_NAME.pID.HOST.log on each host. The ssh calls run in parallel.
# Needs: passwordless ssh to every host, the checkout + venv at REMOTE_DIR on every host (shared filesystem
# or copied), WORKDIR visible from every host, and PORT on the first host reachable from the others.
#
# Usage: HOSTS=gpu1,gpu2 WORKDIR=/shared/kvq_runs/x bash launch/gpu/multinode.sh [--procs=gpu] [--dry-run]
#          [--knob=value ...] [-- TRAINER FLAGS]
# Knobs (environment variables or --flags):
#   HOSTS          comma-separated host names; the first one hosts process 0 and the coordinator (required)
#   PORT           coordinator port on the first host (default: 8476)
#   COORDINATOR    host:port override, e.g. an address on the fast network (default: FIRST_HOST:PORT)
#   PROCS          node (default) or gpu
#   GPUS_PER_NODE  GPUs per host, used with PROCS=gpu (default: 8)
#   REMOTE_DIR     checkout path on the hosts (default: this checkout's absolute path)
#   PYTHON         interpreter relative to REMOTE_DIR or absolute (default: .venv/bin/python)
#   CONFIG, RUN_NAME, WORKDIR (required), DATA_DIR, EXTRA_ARGS, EXTRA_ENV: as in launch/slurm/submit.sh
#   SSH_FLAGS      extra ssh flags, whitespace-separated, e.g. "-p 2222 -o BatchMode=yes"
# Stop with: HOSTS=... bash launch/gpu/stop.sh [--run-name=NAME]
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KVQ_KNOBS=(HOSTS PORT COORDINATOR PROCS GPUS_PER_NODE REMOTE_DIR PYTHON CONFIG RUN_NAME WORKDIR DATA_DIR EXTRA_ARGS
  EXTRA_ENV SSH_FLAGS DRY_RUN)
kvq_parse_args "$@"
kvq_init
: "${HOSTS:=}" "${PORT:=8476}" "${COORDINATOR:=}" "${PROCS:=node}" "${GPUS_PER_NODE:=8}" "${REMOTE_DIR:=${KVQ_REPO_ROOT}}"
: "${PYTHON:=.venv/bin/python}" "${CONFIG:=configs/dover.py}" "${RUN_NAME:=}" "${WORKDIR:=}" "${DATA_DIR:=}"
: "${EXTRA_ARGS:=}" "${EXTRA_ENV:=}" "${SSH_FLAGS:=}"
[[ -n "${RUN_NAME}" ]] || RUN_NAME="$(basename "${CONFIG}" .py)-$(date +%Y%m%d-%H%M%S)"

kvq_require HOSTS "list the hosts, comma-separated; the first one runs process 0"
IFS=, read -r -a hosts <<<"${HOSTS}"
for h in "${hosts[@]}"; do
  [[ "$h" =~ ^[A-Za-z0-9_.@-]+$ ]] || kvq_die "bad host name '${h}' in HOSTS='${HOSTS}'"
done
[[ "${PORT}" =~ ^[0-9]+$ ]] || kvq_die "PORT must be a number, got '${PORT}'"
[[ "${GPUS_PER_NODE}" =~ ^[1-9][0-9]*$ ]] || kvq_die "GPUS_PER_NODE must be a positive whole number, got '${GPUS_PER_NODE}'"
case "${PROCS}" in
  node) per_host=1 ;;
  gpu) per_host=${GPUS_PER_NODE} ;;
  *) kvq_die "PROCS must be node or gpu, got '${PROCS}'" ;;
esac
kvq_require WORKDIR "checkpoints need a directory every host sees (shared filesystem or gs://)"
[[ "${RUN_NAME}" =~ ^[A-Za-z0-9_.-]+$ ]] || kvq_die "RUN_NAME may only use letters, digits, '_', '.', '-': '${RUN_NAME}'"
first_host=${hosts[0]#*@}
: "${COORDINATOR:=${first_host}:${PORT}}"
env_words=()
kvq_split_words env_words "${EXTRA_ENV}"
kvq_check_env_words "${env_words[@]}"
extra=()
kvq_split_words extra "${EXTRA_ARGS}"
ssh_flags=()
kvq_split_words ssh_flags "${SSH_FLAGS}"
kvq_require_cmd ssh "Install an ssh client"

num_procs=$((${#hosts[@]} * per_host))
data_env=()
data_flag=()
if [[ -n "${DATA_DIR}" ]]; then
  data_env=("TFDS_DATA_DIR=${DATA_DIR}")
  data_flag=("--config.data.data_dir=${DATA_DIR}")
fi

launches=()
proc=0
for h in "${hosts[@]}"; do
  for ((local_rank = 0; local_rank < per_host; local_rank++)); do
    train=(env KVQ_JAX_DISTRIBUTED=1 "KVQ_JAX_COORDINATOR=${COORDINATOR}" "KVQ_JAX_NUM_PROCESSES=${num_procs}"
      "KVQ_JAX_PROCESS_ID=${proc}")
    [[ "${PROCS}" != gpu ]] || train+=("CUDA_VISIBLE_DEVICES=${local_rank}")
    train+=("${data_env[@]}" "${env_words[@]}" "${PYTHON}" -m kvq_jax.main --config "${CONFIG}" --workdir "${WORKDIR}"
      "${data_flag[@]}" "${extra[@]}" "${KVQ_REST[@]}")
    remote="cd $(kvq_quote "${REMOTE_DIR}") && bash launch/worker/start.sh $(kvq_quote "--name=${RUN_NAME}" "--tag=p${proc}") -- $(kvq_quote "${train[@]}")"
    launches+=("$h" "$remote")
    proc=$((proc + 1))
  done
done

# All processes must come up together (process 0 waits for the rest), so launch the ssh calls in parallel.
pids=()
for ((i = 0; i < ${#launches[@]}; i += 2)); do
  cmd=(ssh "${ssh_flags[@]}" "${launches[i]}" "${launches[i + 1]}")
  if [[ "${DRY_RUN}" == 1 ]]; then
    kvq_quote "${cmd[@]}"
  else
    echo "+ $(kvq_quote "${cmd[@]}")" >&2
    "${cmd[@]}" &
    pids+=($!)
  fi
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
((failed == 0)) || kvq_die "${failed} of ${num_procs} process(es) failed to start; stop the rest: HOSTS=${HOSTS} bash launch/gpu/stop.sh --run-name=${RUN_NAME}"
[[ "${DRY_RUN}" == 1 ]] || kvq_note "started ${num_procs} process(es) of ${RUN_NAME}; coordinator ${COORDINATOR}"
