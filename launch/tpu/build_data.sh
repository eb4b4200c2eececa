#!/usr/bin/env bash
# Build the TFDS records once, on worker 0, straight into the bucket: copy the raw KVQ videos and labels from
# RAW_GCS to the worker's disk (TPU VMs have ~100 GB), then run python -m kvq_jax.data.build with
# --data_dir gs://... . Run launch/tpu/setup.sh first. (Building on any machine with the raw data and
# uploading the result with `gcloud storage rsync -r` works as well.)
#
# Usage: ZONE=... TPU_NAME=... BUCKET=... RAW_GCS=gs://BUCKET/raw/kvq bash launch/tpu/build_data.sh [--dry-run]
# Knobs: PROJECT ZONE TPU_NAME REMOTE_DIR BUCKET DATA_DIR, and
#   RAW_GCS     gs:// folder holding the raw dataset as kvq_jax.data.build expects it in --manual_dir (required)
#   MANUAL_DIR  where the raw data goes on worker 0, relative to REMOTE_DIR (default: data/kvq_raw)
#   DATASET     dataset name for kvq_jax.data.build (default: kvq)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
kvq_no_rest
kvq_tpu_data_dir
: "${RAW_GCS:=}" "${MANUAL_DIR:=data/kvq_raw}" "${DATASET:=kvq}"
kvq_require RAW_GCS "it is the gs:// folder with the raw videos and label files"
[[ "${RAW_GCS}" == gs://?* ]] || kvq_die "RAW_GCS must be a gs:// folder, got '${RAW_GCS}'"
[[ "${DATA_DIR}" != none ]] || kvq_die "DATA_DIR=none makes no sense here: the records must go somewhere"

manual_q=$(kvq_quote "${MANUAL_DIR}")
remote="cd $(kvq_quote "${REMOTE_DIR}") && mkdir -p ${manual_q}"
remote+=" && gcloud storage rsync -r $(kvq_quote "${RAW_GCS}") ${manual_q}"
remote+=" && .venv/bin/python -m kvq_jax.data.build $(kvq_quote --dataset "${DATASET}" --manual_dir "${MANUAL_DIR}" --data_dir "${DATA_DIR}")"
kvq_tpu_ssh 0 "${remote}"
