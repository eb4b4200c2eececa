#!/usr/bin/env bash
# Create the Cloud TPU VM or pod slice (billing starts now; tear down with launch/tpu/delete.sh).
#   QUEUED=0: gcloud compute tpus tpu-vm create (fails at once when there is no capacity)
#   QUEUED=1: gcloud compute tpus queued-resources create (waits in Google's queue; then, with WAIT=1,
#             this script polls until the queued resource is ACTIVE)
#
# Usage: ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 bash launch/tpu/create.sh [--dry-run] [--knob=value ...]
# Knobs: PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION QUEUED QR_NAME PROVISIONING CREATE_FLAGS WAIT
#        POLL_SECONDS (see launch/tpu/common.sh or launch/README.md).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
kvq_no_rest

extra=()
kvq_split_words extra "${CREATE_FLAGS}"
[[ "${PROVISIONING}" == standard ]] || extra=("--${PROVISIONING}" "${extra[@]}")

if [[ "${QUEUED}" == 0 ]]; then
  kvq_run gcloud compute tpus tpu-vm create "${TPU_NAME}" "${GCLOUD_LOCATION[@]}" \
    "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME_VERSION}" "${extra[@]}"
  exit 0
fi

kvq_run gcloud compute tpus queued-resources create "${QR_NAME}" "${GCLOUD_LOCATION[@]}" \
  "--node-id=${TPU_NAME}" "--accelerator-type=${ACCELERATOR_TYPE}" "--runtime-version=${RUNTIME_VERSION}" "${extra[@]}"
[[ "${WAIT}" == 1 ]] || exit 0

describe=(gcloud compute tpus queued-resources describe "${QR_NAME}" "${GCLOUD_LOCATION[@]}" "--format=value(state.state)")
if [[ "${DRY_RUN}" == 1 ]]; then
  kvq_quote "${describe[@]}"
  exit 0
fi
kvq_note "waiting for queued resource ${QR_NAME} to become ACTIVE (Ctrl-C is safe: the request stays queued;"
kvq_note "check later with launch/tpu/status.sh)"
while true; do
  state=$("${describe[@]}")
  case "${state}" in
    ACTIVE)
      kvq_note "${QR_NAME}: ACTIVE; node ${TPU_NAME} is ready"
      exit 0
      ;;
    FAILED | SUSPENDED)
      kvq_die "queued resource ${QR_NAME} is ${state}; see: $(kvq_quote "${describe[@]:0:6}" "${GCLOUD_LOCATION[@]}")"
      ;;
    *) kvq_note "$(date +%H:%M:%S) ${QR_NAME}: ${state:-unknown}; next check in ${POLL_SECONDS}s" ;;
  esac
  sleep "${POLL_SECONDS}"
done
