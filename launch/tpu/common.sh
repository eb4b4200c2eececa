# shellcheck shell=bash
# Knobs and gcloud helpers shared by the Cloud TPU scripts (sourced, never executed).
#
# Every knob is an environment variable with a default, or a flag: --tpu-name=x sets TPU_NAME, and so on.
#   PROJECT           GCP project (default: empty = the gcloud configured project)
#   ZONE              zone of the TPU, e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p) (required)
#   TPU_NAME          TPU VM / slice name (default: kvq-$USER)
#   ACCELERATOR_TYPE  e.g. v4-8, v4-32, v5litepod-64, v5p-32, v6e-16 (default: v4-8)
#   RUNTIME_VERSION   TPU software version (default from ACCELERATOR_TYPE: v6e -> v2-alpha-tpuv6e,
#                     v5p -> v2-alpha-tpuv5, v5litepod -> v2-alpha-tpuv5-lite, v2/v3/v4 -> tpu-ubuntu2204-base)
#   QUEUED            1: create/delete through a queued resource (recommended by Google), 0: tpu-vm create (default: 0)
#   QR_NAME           queued-resource id (default: TPU_NAME)
#   PROVISIONING      standard | spot | reserved (default: standard)
#   CREATE_FLAGS      extra flags for the create command, e.g. "--valid-until-duration=6h --labels=team=vqa"
#   WAIT              QUEUED=1 only: poll until the queued resource is ACTIVE (default: 1)
#   POLL_SECONDS      polling interval for WAIT (default: 60)
#   REMOTE_DIR        checkout directory on every worker, relative to the home directory (default: kvq_jax)
#   REPO_URL          git URL to clone on the workers; empty = copy this local checkout with scp (default: empty)
#   REPO_REF          branch, tag or commit to check out with REPO_URL (default: main)
#   PIP_EXTRAS        kvq_jax extras installed on the workers (default: gcs)
#   BUCKET            GCS bucket name without gs:// (required by run.sh / build_data.sh unless WORKDIR/DATA_DIR set)
#   CONFIG            config file (default: configs/dover.py)
#   RUN_NAME          run name: log file names and the default WORKDIR (run.sh default: CONFIGNAME-YYYYmmdd-HHMMSS;
#                     set it yourself to resume a run after a preemption)
#   WORKDIR           checkpoints + metrics, must be gs:// (default: gs://$BUCKET/runs/$RUN_NAME)
#   DATA_DIR          TFDS data dir (default: gs://$BUCKET/tensorflow_datasets; "none" = do not pass one)
#   EXTRA_ARGS        extra trainer flags, whitespace-separated (or put them after --)
#   EXTRA_ENV         extra NAME=value environment for the trainer, whitespace-separated
#   WORKER            logs.sh: worker index or "all" (default: 0)
#   DRY_RUN           1: print the commands instead of running them (same as --dry-run)

# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# shellcheck disable=SC2034  # read by kvq_usage in lib.sh (--help shows the knobs listed above)
KVQ_USAGE_EXTRA="${BASH_SOURCE[0]}"
# shellcheck disable=SC2034  # read by kvq_parse_args in lib.sh
KVQ_KNOBS=(PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION QUEUED QR_NAME PROVISIONING CREATE_FLAGS WAIT
  POLL_SECONDS REMOTE_DIR REPO_URL REPO_REF PIP_EXTRAS BUCKET CONFIG RUN_NAME WORKDIR DATA_DIR EXTRA_ARGS EXTRA_ENV
  RAW_GCS MANUAL_DIR DATASET WORKER LINES FOLLOW YES DRY_RUN)

# Parse flags, apply defaults and validate the knobs every TPU script needs.
kvq_tpu_init() {
  kvq_parse_args "$@"
  kvq_init
  : "${PROJECT:=}" "${ZONE:=}" "${TPU_NAME:=kvq-${USER:-user}}" "${ACCELERATOR_TYPE:=v4-8}" "${RUNTIME_VERSION:=}"
  : "${QUEUED:=0}" "${QR_NAME:=${TPU_NAME}}" "${PROVISIONING:=standard}" "${CREATE_FLAGS:=}" "${WAIT:=1}"
  : "${POLL_SECONDS:=60}" "${REMOTE_DIR:=kvq_jax}" "${REPO_URL:=}" "${REPO_REF:=main}" "${PIP_EXTRAS:=gcs}"
  : "${BUCKET:=}" "${CONFIG:=configs/dover.py}" "${RUN_NAME:=}" "${WORKDIR:=}"
  : "${DATA_DIR:=}" "${EXTRA_ARGS:=}" "${EXTRA_ENV:=}"

  kvq_require ZONE "TPU types exist only in some zones, e.g. us-central2-b for v4 or us-west4-a for v5e"
  [[ "${TPU_NAME}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    kvq_die "TPU_NAME '${TPU_NAME}' must be lowercase letters, digits and '-', starting with a letter"
  [[ "${QR_NAME}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    kvq_die "QR_NAME '${QR_NAME}' must be lowercase letters, digits and '-', starting with a letter"
  [[ "${ACCELERATOR_TYPE}" =~ ^(v[0-9]+[a-z]*)-[0-9]+$ ]] ||
    kvq_die "ACCELERATOR_TYPE '${ACCELERATOR_TYPE}' does not look like v4-32 or v5litepod-64"
  local family=${BASH_REMATCH[1]}
  if [[ -z "${RUNTIME_VERSION}" ]]; then
    case "${family}" in
      v6e) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
      v5p) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
      v5litepod) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
      v2 | v3 | v4) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
      *) kvq_die "no default RUNTIME_VERSION for '${ACCELERATOR_TYPE}'; set RUNTIME_VERSION (see gcloud compute tpus tpu-vm versions list)" ;;
    esac
  fi
  kvq_require_bool QUEUED
  kvq_require_bool WAIT
  case "${PROVISIONING}" in standard | spot | reserved) ;; *) kvq_die "PROVISIONING must be standard, spot or reserved, got '${PROVISIONING}'" ;; esac
  [[ "${POLL_SECONDS}" =~ ^[0-9]+$ ]] || kvq_die "POLL_SECONDS must be a whole number, got '${POLL_SECONDS}'"
  [[ "${REMOTE_DIR}" =~ ^[A-Za-z0-9_.][A-Za-z0-9_./-]*$ ]] ||
    kvq_die "REMOTE_DIR '${REMOTE_DIR}' must be a plain path relative to the home directory"

  GCLOUD_LOCATION=("--zone=${ZONE}")
  [[ -z "${PROJECT}" ]] || GCLOUD_LOCATION+=("--project=${PROJECT}")
  kvq_require_cmd gcloud "Install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
}

# WORKDIR default (needs BUCKET) and checks: checkpoints must go to gs://, which every host sees.
kvq_tpu_workdir() {
  [[ -n "${RUN_NAME}" ]] || RUN_NAME="$(basename "${CONFIG}" .py)-$(date +%Y%m%d-%H%M%S)"
  [[ "${RUN_NAME}" =~ ^[A-Za-z0-9_.-]+$ ]] || kvq_die "RUN_NAME may only use letters, digits, '_', '.', '-': '${RUN_NAME}'"
  if [[ -z "${WORKDIR}" ]]; then
    kvq_require BUCKET "it gives the default WORKDIR gs://\$BUCKET/runs/\$RUN_NAME"
    WORKDIR="gs://${BUCKET}/runs/${RUN_NAME}"
  fi
  [[ "${WORKDIR}" == gs://?* ]] ||
    kvq_die "WORKDIR must be a gs:// path ('${WORKDIR}'): every worker writes checkpoints there, and a local path would differ per host"
}

# DATA_DIR default (needs BUCKET); "none" means: pass no data dir to the trainer.
kvq_tpu_data_dir() {
  if [[ -z "${DATA_DIR}" ]]; then
    kvq_require BUCKET "it gives the default DATA_DIR gs://\$BUCKET/tensorflow_datasets"
    DATA_DIR="gs://${BUCKET}/tensorflow_datasets"
  fi
}

# gcloud compute tpus tpu-vm ssh on WORKER (an index or "all") running the shell command string REMOTE.
kvq_tpu_ssh() {
  local worker=$1 remote=$2
  kvq_run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${GCLOUD_LOCATION[@]}" "--worker=${worker}" "--command=${remote}"
}
