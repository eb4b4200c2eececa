#!/usr/bin/env bash
# Run ON a worker (TPU VM host or GPU node), from the kvq_jax checkout: create a virtual environment with
# Python >= 3.11 (jax 0.10 needs it; TPU VM images ship Python 3.10) and install JAX for the accelerator plus
# kvq_jax in editable mode. Idempotent: an existing venv is reused and packages are upgraded in place.
#
# Usage: bash launch/worker/setup.sh [--accel=tpu|cuda13|cuda12|cpu] [--dry-run]
#
# Knobs (environment variables or --flags):
#   ACCEL        tpu | cuda13 | cuda12 | cpu: which jax extra to install (default: tpu)
#   PIP_EXTRAS   kvq_jax extras, comma-separated (default: gcs, i.e. gcsfs so TFDS/etils read gs:// without TF)
#   PY_VERSION   minimum Python major.minor for the venv (default: 3.11)
#   VENV         venv directory, relative to the checkout (default: .venv)
# If no python >= PY_VERSION is on PATH, the venv is made by uv with a uv-managed Python (uv itself comes from
# PATH or from `python3 -m pip install --user uv`).
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KVQ_KNOBS=(ACCEL PIP_EXTRAS PY_VERSION VENV DRY_RUN)
kvq_parse_args "$@"
kvq_init
kvq_no_rest
: "${ACCEL:=tpu}" "${PIP_EXTRAS:=gcs}" "${PY_VERSION:=3.11}" "${VENV:=.venv}"

case "${ACCEL}" in
  tpu | cuda13 | cuda12) jax_spec="jax[${ACCEL}]" ;;
  cpu) jax_spec="jax" ;;
  *) kvq_die "ACCEL must be tpu, cuda13, cuda12 or cpu, got '${ACCEL}'" ;;
esac
[[ "${PY_VERSION}" =~ ^([0-9]+)\.([0-9]+)$ ]] || kvq_die "PY_VERSION must look like 3.11, got '${PY_VERSION}'"
py_check="import sys; sys.exit(0 if sys.version_info >= (${BASH_REMATCH[1]}, ${BASH_REMATCH[2]}) else 1)"
[[ -f pyproject.toml && -d kvq_jax ]] || kvq_die "run this from the kvq_jax checkout (no pyproject.toml/kvq_jax here: $PWD)"

if [[ ! -x "${VENV}/bin/python" ]]; then
  found_python=""
  for cand in "python${PY_VERSION}" python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "$py_check" 2>/dev/null; then
      found_python=$cand
      break
    fi
  done
  if [[ -n "$found_python" ]]; then
    kvq_run "$found_python" -m venv "${VENV}"
  else
    kvq_note "no python >= ${PY_VERSION} on PATH; creating the venv with uv"
    if command -v uv >/dev/null 2>&1; then
      uv=uv
    else
      python3 -m pip --version >/dev/null 2>&1 ||
        kvq_die "no uv and no pip for python3: install uv (https://docs.astral.sh/uv/getting-started/installation/) or python3-pip first"
      kvq_run python3 -m pip install --user --upgrade uv
      uv="${HOME}/.local/bin/uv"
    fi
    kvq_run "$uv" venv --seed --python "${PY_VERSION}" "${VENV}"
  fi
fi

py="${VENV}/bin/python"
kvq_run "$py" -m pip install --upgrade pip
kvq_run "$py" -m pip install --upgrade "${jax_spec}"
kvq_run "$py" -m pip install -e ".[${PIP_EXTRAS}]"
# Importing jax is safe on every host; listing devices here would try to bring up the TPU slice from one host.
kvq_run "$py" -c "import jax, kvq_jax; print('kvq_jax ready, jax', jax.__version__)"
