#!/usr/bin/env bash
# The GPU speed study and GPU parity as ONE prepared script, for a lent device machine (or any GPU host). Run it
# from the repository root; it writes JSON (and PNG) reports into OUT and a markdown table of the runs into OUT/summary.md.
#
#   parity:  every fixture of tests/fixtures/parity in float32 and bfloat16 on the GPU (errors vs the official code)
#   bench:   kvq_jax.bench inference and training of the MODELS at the BATCHES, in each DTYPE, against the official
#            PyTorch code (eager, and torch.compile with COMPILE=1) from the checkouts under OFFICIAL
#   data:    kvq_jax.data.bench with DATA_WORKERS decoding processes
#
# Usage: bash launch/gpu/study.sh [--smoke] [--dry-run] [--knob=value ...]
#   --smoke    tiny sizes on the CPU, to check the script where there is no GPU (what a session without a device runs)
#   --dry-run  print the commands only
# Knobs (environment variables or --flags): PYTHON (python3), OUT (data/bench/gpu), OFFICIAL (.gl/official: holds
#   DOVER/ and FAST-VQA-and-FasterVQA/, the official checkouts), WHEELS (.whl: installed with --no-index first, for
#   packages the device image lacks: ml_collections, av), PLAN (quick|full; quick fits one 10-minute device call:
#   batch 8, eager PyTorch only), MODELS, DTYPES, BATCHES, COMPILE, FRAMES (default: the models' own), REPEATS.
# Preparing the carried folders on a machine with the network (neither is committed):
#   pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl \
#       ml_collections av
#   mkdir -p .gl/official/DOVER .gl/official/FAST-VQA-and-FasterVQA, then fill them from clones of
#   VQAssessment/DOVER (its dover/ package and *.yml) and VQAssessment/FAST-VQA-and-FasterVQA (fastvqa/, options/)
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KVQ_KNOBS=(PYTHON OUT OFFICIAL WHEELS PLAN MODELS DTYPES BATCHES COMPILE FRAMES REPEATS DATA_WORKERS SMOKE DRY_RUN)
args=()
for a in "$@"; do [[ "$a" == --smoke ]] && a=--smoke=1; args+=("$a"); done
kvq_parse_args "${args[@]}"
kvq_init
: "${PYTHON:=python3}" "${OUT:=data/bench/gpu}" "${OFFICIAL:=.gl/official}" "${WHEELS:=.whl}" "${PLAN:=quick}"
: "${SMOKE:=0}" "${FRAMES:=}" "${REPEATS:=5}" "${DATA_WORKERS:=16}"
kvq_require_bool SMOKE
case "${PLAN}" in
  quick) : "${MODELS:=dover dover_mobile fastvqa_b}" "${DTYPES:=float32 bfloat16}" "${BATCHES:=8}" "${COMPILE:=0}" ;;
  full) : "${MODELS:=dover dover_mobile fastvqa_b}" "${DTYPES:=float32 bfloat16}" "${BATCHES:=1 8 32}" "${COMPILE:=1}" ;;
  *) kvq_die "PLAN must be quick or full, got '${PLAN}'" ;;
esac
device=(--device gpu)
data=(--seconds 20)
if [[ "${SMOKE}" == 1 ]]; then  # everything once, tiny, on the CPU
  MODELS="dover_mobile fastvqa_b" DTYPES=float32 BATCHES=2 COMPILE=0 FRAMES=4 REPEATS=1 DATA_WORKERS=2
  device=(--device cpu)
  data=(--seconds 2 --size 320x180 --frames 60)
fi

run() {  # one step; a failure is recorded and the study goes on
  printf '+ %s\n' "$*"
  [[ "${DRY_RUN}" == 1 ]] && return 0
  "$@" || printf 'FAILED (%s): %s\n' "$?" "$*" | tee -a "${OUT}/failures.txt"
}

[[ "${DRY_RUN}" == 1 ]] || mkdir -p "${OUT}"
if [[ -d "${WHEELS}" && "${DRY_RUN}" != 1 ]] && compgen -G "${WHEELS}/*.whl" >/dev/null; then
  "${PYTHON}" -m pip install -q --no-index --no-deps "${WHEELS}"/*.whl
fi
export PYTHONPATH="${KVQ_REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
run "${PYTHON}" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)"

if [[ "${SMOKE}" == 1 ]]; then
  cases=(tests/fixtures/parity/fastvqa/fastvqa_m_t16.json)
else
  cases=(tests/fixtures/parity)
fi
for dtype in float32 bfloat16; do
  run "${PYTHON}" -m kvq_jax.parity "${cases[@]}" --dtype "${dtype}" --tol 1 --json "${OUT}/parity_${dtype}.json"
done

for model in ${MODELS}; do
  case "${model}" in
    dover*) ref="${OFFICIAL}/DOVER" ;;
    *) ref="${OFFICIAL}/FAST-VQA-and-FasterVQA" ;;
  esac
  reference=()
  [[ -d "${ref}" ]] && reference=(--torch-reference "${ref}")
  [[ "${COMPILE}" == 1 && -d "${ref}" ]] && reference+=(--torch-compile)
  frames=()
  [[ -n "${FRAMES}" ]] && frames=(--frames "${FRAMES}")
  for dtype in ${DTYPES}; do
    for batch in ${BATCHES}; do
      for mode in infer train; do
        [[ "${mode}" == train && "${batch}" -lt 2 ]] && continue  # PLCC and rank losses need two videos
        name="${model}_${mode}_${dtype}_b${batch}"
        run "${PYTHON}" -m kvq_jax.bench "${device[@]}" --mode "${mode}" --model "${model}" --dtype "${dtype}" \
          --batch "${batch}" "${frames[@]}" --repeats "${REPEATS}" --warmup 1 "${reference[@]}" \
          --out "${OUT}/${name}.json" --png "${OUT}/${name}.png"
      done
    done
  done
done

run "${PYTHON}" -m kvq_jax.data.bench --workers "${DATA_WORKERS}" "${data[@]}" --out "${OUT}/data_bench_w${DATA_WORKERS}.json"
printf '+ %s -m kvq_jax.bench --table %s > %s/summary.md\n' "${PYTHON}" "${OUT}" "${OUT}"
[[ "${DRY_RUN}" == 1 ]] || "${PYTHON}" -m kvq_jax.bench --table "${OUT}" | tee "${OUT}/summary.md"
kvq_note "study written to ${OUT} ($(find "${OUT}" -name '*.json' | wc -l) JSON files)"
