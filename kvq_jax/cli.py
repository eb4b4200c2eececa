"""The `kvq-jax` command: one entry point for the project's tools.

    kvq-jax score VIDEO_or_DIR... --weights W   score videos (kvq_jax.predict)
    kvq-jax catalogue INPUT... --weights W --out D   score a catalogue, resumable (kvq_jax.catalogue)
    kvq-jax export --weights W --out FILE       serialise the scoring function (kvq_jax.export)
    kvq-jax convert --model M --src F --out D   official checkpoint -> converted weights (kvq_jax.convert)
    kvq-jax parity CASE.json...                 compare with the official PyTorch outputs (kvq_jax.parity)
    kvq-jax bench ...                           JAX vs PyTorch speed (kvq_jax.bench)
    kvq-jax eval-score --pred P --truth T ...   the NTIRE 2024 KVQ challenge score (kvq_jax.eval.score)
    kvq-jax submit --pred P --out D             a Codalab submission zip (kvq_jax.eval.submit)
    kvq-jax ensemble A.csv B.csv ...            fuse prediction files (kvq_jax.eval.ensemble)

`kvq-jax COMMAND --help` shows a command's options. Each command's module is imported only when it runs,
so `kvq-jax score` does not pay for PyTorch-side imports of `bench`, and a missing optional module
affects only its own command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# command -> (module, one-line summary); every module exposes main(argv) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("kvq_jax.predict", "score videos or folders; CSV, challenge CSV, quality heat-maps"),
    "catalogue": ("kvq_jax.catalogue", "score a whole catalogue: sharded over processes, resumable, chunked"),
    "export": ("kvq_jax.export", "serialise the scoring function with jax.export (StableHLO)"),
    "convert": ("kvq_jax.convert.__main__", "convert an official checkpoint to a kvq_jax weights dir"),
    "parity": ("kvq_jax.parity", "reproduce the official PyTorch outputs of parity cases"),
    "bench": ("kvq_jax.bench", "benchmark JAX (and optionally the PyTorch originals)"),
    "eval-score": ("kvq_jax.eval.score", "the NTIRE 2024 KVQ challenge score of a prediction file"),
    "submit": ("kvq_jax.eval.submit", "write prediction.csv and a Codalab submission zip"),
    "ensemble": ("kvq_jax.eval.ensemble", "fuse several prediction files; members and ensemble side by side"),
}
_OWN_PROG = {"kvq_jax.predict", "kvq_jax.export", "kvq_jax.catalogue"}  # these accept prog= for their --help


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: kvq-jax COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`kvq-jax COMMAND --help` for a command's options."]
    return "\n".join(lines)


def resolve(command: str) -> Callable[..., int]:
    """The ``main`` of a command's module; ImportError if that module itself is not installed."""
    module_name, _ = COMMANDS[command]
    return importlib.import_module(module_name).main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"kvq-jax: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[command][0]
    try:
        entry = resolve(command)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # a dependency of the module is missing: show the real error
            raise
        print(f"kvq-jax: command {command!r} is not available ({module_name} is not installed)", file=sys.stderr)
        return 2
    try:
        if module_name in _OWN_PROG:
            code = entry(rest, prog=f"kvq-jax {command}")
        else:
            code = entry(rest)
    except SystemExit as e:  # argparse exits on --help and on bad arguments
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
