"""`python -m kvq_jax.convert --model dover --src DOVER.pth --out DIR`: official weights → orbax.

A model whose official weights come in several files (COVER: COVER.pth and OpenAI's ViT-L-14.pt) takes one
`--src` per file; they are merged (a key in two files is an error) before the model's checkpoint filter and the
strict conversion.
"""

from __future__ import annotations

import argparse
import sys

from kvq_jax.convert import CheckpointReadError, ConversionError, convert_state_dict, read_state_dicts
from kvq_jax.models import abstract_model, model_names, with_state
from kvq_jax.weights import save_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvq_jax.convert", description=__doc__)
    p.add_argument("--model", required=True, choices=model_names())
    p.add_argument(
        "--src",
        required=True,
        action="append",
        help="official checkpoint (.pth, .pt, .safetensors or .npz); repeatable",
    )
    p.add_argument("--out", required=True, help="output directory (orbax checkpoint + kvq_jax.json)")
    args = p.parse_args(argv)
    try:
        state_dict = read_state_dicts(args.src)
        abstract = abstract_model(args.model)
        model = with_state(abstract, convert_state_dict(state_dict, abstract))
    except (CheckpointReadError, ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = save_weights(model, args.out, source=[str(s) for s in args.src])
    n = sum(v.size for v in state_dict.values())
    print(f"converted {len(state_dict)} tensors ({n:,} values) from {', '.join(args.src)} → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
