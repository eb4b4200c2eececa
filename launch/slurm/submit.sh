#!/usr/bin/env bash
# Submit multi-node GPU training to SLURM: sbatch launch/slurm/train.sbatch with the node/GPU layout given
# here; inside the job, srun starts `python -m kvq_jax.main` once per node (PROCS=node) or once per GPU
# (PROCS=gpu) with KVQ_JAX_DISTRIBUTED=1, and jax.distributed.initialize() reads the SLURM environment.
# The checkout, its venv and WORKDIR must be visible from every node (shared filesystem, or gs:// WORKDIR).
#
# Usage: WORKDIR=/shared/kvq_runs/dover-a bash launch/slurm/submit.sh [--nodes=4] [--procs=gpu] [--dry-run]
#          [--knob=value ...] [-- TRAINER FLAGS]
# Knobs (environment variables or --flags):
#   NODES          number of nodes (default: 2)
#   GPUS_PER_NODE  GPUs per node (default: 8)
#   PROCS          node: one process per node driving all its GPUs (default); gpu: one process per GPU
#   CPUS_PER_TASK  CPU cores per process, for video decoding/data loading (default: empty = cluster default)
#   PARTITION, ACCOUNT, TIME   sbatch --partition/--account/--time (default: empty = cluster default)
#   JOB_NAME       sbatch job name (default: kvq-RUN_NAME)
#   SBATCH_FLAGS   extra sbatch flags, whitespace-separated, e.g. "--exclusive --requeue --qos=high"
#   CONFIG         config file (default: configs/dover.py)
#   RUN_NAME       run name (default: CONFIGNAME-YYYYmmdd-HHMMSS)
#   WORKDIR        checkpoints + metrics, shared by all nodes (required)
#   DATA_DIR       TFDS data dir (default: empty = the config's own)
#   EXTRA_ARGS     extra trainer flags, whitespace-separated (or put them after --)
#   EXTRA_ENV      extra NAME=value environment, e.g. "NCCL_DEBUG=WARN NCCL_SOCKET_IFNAME=eth0"
#   PYTHON         interpreter, relative to the checkout or absolute (default: .venv/bin/python,
#                  made by: bash launch/worker/setup.sh --accel=cuda13)
#   LOG_DIR        job output directory, relative to the checkout or absolute, created before submitting
#                  (default: runs/logs)
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KVQ_KNOBS=(NODES GPUS_PER_NODE PROCS CPUS_PER_TASK PARTITION ACCOUNT TIME JOB_NAME SBATCH_FLAGS CONFIG RUN_NAME WORKDIR DATA_DIR
  EXTRA_ARGS EXTRA_ENV PYTHON LOG_DIR DRY_RUN)
kvq_parse_args "$@"
kvq_init
: "${NODES:=2}" "${GPUS_PER_NODE:=8}" "${PROCS:=node}" "${CPUS_PER_TASK:=}" "${PARTITION:=}" "${ACCOUNT:=}" "${TIME:=}"
: "${SBATCH_FLAGS:=}" "${CONFIG:=configs/dover.py}" "${RUN_NAME:=}" "${WORKDIR:=}" "${DATA_DIR:=}"
: "${EXTRA_ARGS:=}" "${EXTRA_ENV:=}" "${PYTHON:=.venv/bin/python}" "${LOG_DIR:=runs/logs}"
[[ -n "${RUN_NAME}" ]] || RUN_NAME="$(basename "${CONFIG}" .py)-$(date +%Y%m%d-%H%M%S)"
: "${JOB_NAME:=kvq-${RUN_NAME}}"

[[ "${NODES}" =~ ^[1-9][0-9]*$ ]] || kvq_die "NODES must be a positive whole number, got '${NODES}'"
[[ "${GPUS_PER_NODE}" =~ ^[1-9][0-9]*$ ]] || kvq_die "GPUS_PER_NODE must be a positive whole number, got '${GPUS_PER_NODE}'"
[[ -z "${CPUS_PER_TASK}" || "${CPUS_PER_TASK}" =~ ^[1-9][0-9]*$ ]] ||
  kvq_die "CPUS_PER_TASK must be a positive whole number, got '${CPUS_PER_TASK}'"
case "${PROCS}" in
  node) tasks_per_node=1 ;;
  gpu) tasks_per_node=${GPUS_PER_NODE} ;;
  *) kvq_die "PROCS must be node or gpu, got '${PROCS}'" ;;
esac
kvq_require WORKDIR "checkpoints need a directory every node sees (shared filesystem or gs://)"
env_words=()
kvq_split_words env_words "${EXTRA_ENV}"
kvq_check_env_words "${env_words[@]}"
flags=()
kvq_split_words flags "${SBATCH_FLAGS}"
kvq_require_cmd sbatch "This script submits to SLURM; on other clusters use launch/gpu/multinode.sh"

[[ "${LOG_DIR}" == /* ]] || LOG_DIR="${KVQ_REPO_ROOT}/${LOG_DIR}"
sbatch_cmd=(sbatch "--job-name=${JOB_NAME}" "--nodes=${NODES}" "--ntasks-per-node=${tasks_per_node}"
  "--gpus-per-node=${GPUS_PER_NODE}" "--chdir=${KVQ_REPO_ROOT}" "--output=${LOG_DIR}/slurm-%x-%j.out")
[[ -z "${CPUS_PER_TASK}" ]] || sbatch_cmd+=("--cpus-per-task=${CPUS_PER_TASK}")
[[ -z "${PARTITION}" ]] || sbatch_cmd+=("--partition=${PARTITION}")
[[ -z "${ACCOUNT}" ]] || sbatch_cmd+=("--account=${ACCOUNT}")
[[ -z "${TIME}" ]] || sbatch_cmd+=("--time=${TIME}")
sbatch_cmd+=("${flags[@]}" "${KVQ_LAUNCH_DIR}/slurm/train.sbatch" "--procs=${PROCS}" "--gpus-per-node=${GPUS_PER_NODE}"
  "--config=${CONFIG}" "--workdir=${WORKDIR}" "--python=${PYTHON}")
[[ -z "${DATA_DIR}" ]] || sbatch_cmd+=("--data-dir=${DATA_DIR}")
[[ -z "${EXTRA_ENV}" ]] || sbatch_cmd+=("--extra-env=${EXTRA_ENV}")
[[ -z "${EXTRA_ARGS}" ]] || sbatch_cmd+=("--extra-args=${EXTRA_ARGS}")
((${#KVQ_REST[@]} == 0)) || sbatch_cmd+=(-- "${KVQ_REST[@]}")

# SLURM does not create the directory of --output; a missing one makes the job fail without any log.
kvq_run mkdir -p "${LOG_DIR}"
kvq_run "${sbatch_cmd[@]}"
