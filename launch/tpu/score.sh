#!/usr/bin/env bash
# Score a catalogue on ALL workers of the slice at once (kvq_jax.catalogue): every host runs the same command,
# joins the multi-process JAX run (KVQ_JAX_DISTRIBUTED=1) and scores its own chunks of the list; the chunks, the
# merged scores.csv and summary.json go to the gs:// --out folder, which every host sees. A rerun of the same
# command skips the chunks already written, so a preempted slice resumes where it stopped.
#
# Usage: ZONE=... TPU_NAME=... bash launch/tpu/score.sh [--dry-run] [--knob=value ...] -- INPUT... \
#            --weights WEIGHTS --out gs://BUCKET/scores/NAME [catalogue flags]
#   e.g. ... score.sh --run-name=pseudo-1 -- gs://bkt/catalogue.csv --weights weights/dover --out gs://bkt/scores/p1
# Knobs: PROJECT ZONE TPU_NAME REMOTE_DIR RUN_NAME EXTRA_ENV (see launch/tpu/common.sh). Follow the logs with
#        launch/tpu/logs.sh --run-name=RUN_NAME; stop with launch/tpu/stop.sh.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvq_tpu_init "$@"
[[ -n "${RUN_NAME}" ]] || RUN_NAME="score-$(date +%Y%m%d-%H%M%S)"
[[ "${RUN_NAME}" =~ ^[A-Za-z0-9_.-]+$ ]] || kvq_die "RUN_NAME may only use letters, digits, '_', '.', '-': '${RUN_NAME}'"
score_out=""
for ((i = 0; i < ${#KVQ_REST[@]}; i++)); do
  case "${KVQ_REST[i]}" in
    --out=*) score_out=${KVQ_REST[i]#--out=} ;;
    --out) score_out=${KVQ_REST[i + 1]:-} ;;
  esac
done
[[ "${score_out}" == gs://?* ]] ||
  kvq_die "pass the catalogue's --out as a gs:// folder after '--' ('${score_out}'): every worker writes its chunks there"

env_words=()
kvq_split_words env_words "${EXTRA_ENV}"
kvq_check_env_words "${env_words[@]}"
score=(env KVQ_JAX_DISTRIBUTED=1 "${env_words[@]}" .venv/bin/python -m kvq_jax.catalogue "${KVQ_REST[@]}")

kvq_tpu_ssh all "cd $(kvq_quote "${REMOTE_DIR}") && bash launch/worker/start.sh $(kvq_quote "--name=${RUN_NAME}") -- $(kvq_quote "${score[@]}")"
kvq_note "scoring ${RUN_NAME}: output ${score_out}; logs: bash launch/tpu/logs.sh --run-name=${RUN_NAME} (--worker=all)"
