#!/usr/bin/env bash
# Delete the TPU (QUEUED=0) or the queued resource together with its TPU (QUEUED=1, --force). This stops the
# TPU bill; the gs:// bucket (checkpoints, TFDS records) is kept and is billed separately.
# gcloud asks for confirmation unless YES=1.
#
# Usage: ZONE=... TPU_NAME=... bash launch/tpu/delete.sh [--queued=1] [--yes=1] [--dry-run]
# Knobs: PROJECT ZONE TPU_NAME QUEUED QR_NAME, and YES (1: pass --quiet, no confirmation prompt; default 0).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
kvq_no_rest
: "${YES:=0}"
kvq_require_bool YES
quiet=()
[[ "${YES}" == 0 ]] || quiet=(--quiet)

if [[ "${QUEUED}" == 1 ]]; then
  kvq_run gcloud compute tpus queued-resources delete "${QR_NAME}" "${GCLOUD_LOCATION[@]}" --force "${quiet[@]}"
else
  kvq_run gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${GCLOUD_LOCATION[@]}" "${quiet[@]}"
fi
[[ "${DRY_RUN}" == 1 ]] ||
  kvq_note "deleted ${TPU_NAME}; the bucket (gs://${BUCKET:-BUCKET}) still holds checkpoints and data and is billed until you remove it"
