# shellcheck shell=bash
# Shared helpers for the kvq_jax launch scripts (sourced, never executed).
#
# Every script takes its knobs from environment variables or from --knob-name=value flags (flags win), prints
# the commands it would run with --dry-run / DRY_RUN=1, and otherwise echoes each command to stderr as "+ cmd"
# before running it. Printed commands are quoted so that pasting a line into a shell runs exactly that argv.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "error: these scripts need bash >= 4.4 (found ${BASH_VERSION}); on macOS: brew install bash" >&2
  exit 2
fi

KVQ_LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KVQ_REPO_ROOT="$(cd "${KVQ_LAUNCH_DIR}/.." && pwd)"
export KVQ_LAUNCH_DIR KVQ_REPO_ROOT

kvq_die() {
  echo "error: $*" >&2
  exit 2
}

kvq_note() {
  echo "$*" >&2
}

# Quote each argument for a POSIX shell: plain words stay as they are, anything else is single-quoted.
kvq_quote() {
  local out=() a
  for a in "$@"; do
    if [[ -n "$a" && "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# Run a command, or only print it in dry-run mode (stdout: one command per line, nothing else).
kvq_run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    kvq_quote "$@"
    return 0
  fi
  echo "+ $(kvq_quote "$@")" >&2
  "$@"
}

# A missing tool is only an error when we are about to run it for real.
kvq_require_cmd() {
  local cmd=$1 hint=$2
  [[ "${DRY_RUN}" == 1 ]] && return 0
  command -v "$cmd" >/dev/null 2>&1 || kvq_die "'$cmd' not found on PATH. ${hint} (or pass --dry-run to only print the commands)"
}

kvq_require() {
  local name=$1 why=$2
  [[ -n "${!name:-}" ]] || kvq_die "${name} is not set: ${why} (set the environment variable or pass --$(kvq_flag_name "$name")=...)"
}

kvq_require_bool() {
  local name=$1
  [[ "${!name}" == 0 || "${!name}" == 1 ]] || kvq_die "${name} must be 0 or 1, got '${!name}'"
}

kvq_flag_name() {
  local lower
  lower=$(tr '[:upper:]_' '[:lower:]-' <<<"$1")
  printf '%s\n' "$lower"
}

# Split a whitespace-separated knob (EXTRA_ARGS, EXTRA_ENV, ...) into the named array variable.
kvq_split_words() {
  local -n _dest=$1
  read -r -a _dest <<<"$2"
}

# KEY=VALUE words for `env`; reject anything else so a typo cannot turn into a command.
kvq_check_env_words() {
  local w
  for w in "$@"; do
    [[ "$w" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || kvq_die "EXTRA_ENV entries must look like NAME=value, got '${w}'"
  done
}

kvq_usage() {
  # The usage text is the comment block at the top of the calling script, then that of KVQ_USAGE_EXTRA
  # (a sourced file documenting shared knobs), if set.
  local f
  for f in "$0" ${KVQ_USAGE_EXTRA:+"${KVQ_USAGE_EXTRA}"}; do
    sed -n '2,/^[^#]/{/^#SBATCH/d;/^# shellcheck/d;/^#/{s/^# \{0,1\}//;p;};}' "$f"
  done
}

# Parse --knob=value / --knob value / --dry-run / --help / -- rest. KVQ_KNOBS (array) lists the allowed knobs.
# Arguments after `--` land in KVQ_REST (passed on to the trainer by the scripts that run it).
kvq_parse_args() {
  KVQ_REST=()
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help)
        kvq_usage
        exit 0
        ;;
      --)
        shift
        # shellcheck disable=SC2034  # output variable: read by the scripts that source this file
        KVQ_REST=("$@")
        return 0
        ;;
      --*=*) kvq_set_knob "${1%%=*}" "${1#*=}" ;;
      --*)
        (($# >= 2)) || kvq_die "option $1 needs a value"
        kvq_set_knob "$1" "$2"
        shift
        ;;
      *) kvq_die "unexpected argument '$1' (knobs are --name=value; arguments for the trainer go after --)" ;;
    esac
    shift
  done
}

kvq_set_knob() {
  local flag=$1 value=$2 name k
  name=$(tr '[:lower:]-' '[:upper:]_' <<<"${flag#--}")
  for k in "${KVQ_KNOBS[@]}"; do
    if [[ "$k" == "$name" ]]; then
      printf -v "$name" '%s' "$value"
      return 0
    fi
  done
  local known=()
  for k in "${KVQ_KNOBS[@]}"; do known+=("--$(kvq_flag_name "$k")"); done
  kvq_die "unknown option ${flag} (known: ${known[*]} --dry-run --help)"
}

# For scripts that pass nothing on to the trainer: arguments after -- would be silently lost.
kvq_no_rest() {
  ((${#KVQ_REST[@]} == 0)) || kvq_die "this script takes no arguments after --: $(kvq_quote "${KVQ_REST[@]}")"
}

kvq_init() {
  : "${DRY_RUN:=0}"
  kvq_require_bool DRY_RUN
}
