#!/usr/bin/env bash
# Show the state of the TPU (QUEUED=0) or of the queued resource (QUEUED=1), e.g. WAITING_FOR_RESOURCES,
# ACTIVE, READY, PREEMPTED.
#
# Usage: ZONE=... TPU_NAME=... bash launch/tpu/status.sh [--queued=1] [--dry-run]
# Knobs: PROJECT ZONE TPU_NAME QUEUED QR_NAME (see launch/tpu/common.sh).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
kvq_no_rest

if [[ "${QUEUED}" == 1 ]]; then
  kvq_run gcloud compute tpus queued-resources describe "${QR_NAME}" "${GCLOUD_LOCATION[@]}"
else
  kvq_run gcloud compute tpus tpu-vm describe "${TPU_NAME}" "${GCLOUD_LOCATION[@]}"
fi
