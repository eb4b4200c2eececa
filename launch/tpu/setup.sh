#!/usr/bin/env bash
# Put the kvq_jax code on EVERY worker of the slice and install it there (venv with Python >= 3.11,
# jax[tpu], kvq_jax[gcs]) by running launch/worker/setup.sh on all workers at once. Run it again after
# changing the code: the copy is refreshed and the venv reused.
#   REPO_URL empty: tar this local checkout (without .git, .venv, data/, runs/, caches), scp it to all workers
#                   and unpack it into ~/REMOTE_DIR (files deleted locally are not deleted there)
#   REPO_URL set:   git fetch REPO_REF from REPO_URL into ~/REMOTE_DIR on every worker
#
# Usage: ZONE=... TPU_NAME=... bash launch/tpu/setup.sh [--dry-run] [--knob=value ...]
# Knobs: PROJECT ZONE TPU_NAME REMOTE_DIR REPO_URL REPO_REF PIP_EXTRAS (see launch/tpu/common.sh).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
kvq_no_rest

dir_q=$(kvq_quote "${REMOTE_DIR}")
install="cd ${dir_q} && bash launch/worker/setup.sh --accel=tpu $(kvq_quote "--pip-extras=${PIP_EXTRAS}")"

if [[ -n "${REPO_URL}" ]]; then
  fetch="{ test -d ${dir_q}/.git || git init -q ${dir_q}; }"
  fetch+=" && git -C ${dir_q} fetch -q --depth=1 $(kvq_quote "${REPO_URL}" "${REPO_REF}")"
  fetch+=" && git -C ${dir_q} checkout -q --force FETCH_HEAD"
  kvq_tpu_ssh all "${fetch} && ${install}"
  exit 0
fi

command -v tar >/dev/null 2>&1 || kvq_die "tar not found on PATH"
tarball="${TMPDIR:-/tmp}/kvq_jax-src-${TPU_NAME}.tar.gz"
remote_tarball="kvq_jax-src.tar.gz"
kvq_run tar -czf "${tarball}" --exclude=./.git --exclude=./.venv --exclude=./data --exclude=./runs \
  --exclude=./build --exclude=__pycache__ --exclude='*.egg-info' --exclude=./.pytest_cache --exclude=./.ruff_cache \
  -C "${KVQ_REPO_ROOT}" .
kvq_run gcloud compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:${remote_tarball}" "${GCLOUD_LOCATION[@]}" --worker=all
kvq_run rm -f "${tarball}"
kvq_tpu_ssh all "mkdir -p ${dir_q} && tar -xzf ${remote_tarball} -C ${dir_q} && rm -f ${remote_tarball} && ${install}"
