"""A tiny DOVER-shaped model and config for trainer tests (same classes as DOVER, a fraction of the size).

Run as a script in a fresh process (so XLA_FLAGS can fake several CPU devices):
  python tests/tiny.py step N OUT.npz     → N train steps on a fixed global batch; saves losses and params
  python tests/tiny.py train CONFIG_JSON WORKDIR → trainer.train_and_evaluate with that config
"""

from __future__ import annotations

import json
import sys

import numpy as np

from kvq_jax.models import MODELS
from kvq_jax.models.convnext3d import ConvNeXtConfig
from kvq_jax.models.swin3d import SwinConfig
from kvq_jax.models.vqa import ModelSpec, dover_fusion
from kvq_jax.train.defaults import base_config

TINY = ModelSpec(
    name="tiny_dover",
    backbones=(
        (
            "technical",
            SwinConfig(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=(2, 4, 4), frag_biases=(True, False)),
        ),
        ("aesthetic", ConvNeXtConfig(depths=(1, 2), dims=(8, 16))),
    ),
    head_hidden=8,
    shared_head=False,
    views="dover",
    normalize=dover_fusion,
)
MODELS.setdefault("tiny_dover", TINY)

VIEW_OVERRIDES = {
    "technical": {"clip_len": 4, "fragments_h": 2, "fragments_w": 2, "aligned": 4, "num_clips": 1},
    "aesthetic": {"clip_len": 4, "t_frag": 4, "size_h": 64, "size_w": 64},
}


def config(data_dir: str, **overrides):
    c = base_config("tiny_dover")
    c.data.name = "kvq_synthetic"
    c.data.data_dir = data_dir
    c.data.num_workers = 0
    c.data.view_overrides = VIEW_OVERRIDES
    c.data.synthetic.update({"sources": 6, "frames": 16, "size": (96, 160)})
    c.train.batch_size = 4
    c.train.num_steps = 6
    c.train.log_every = 1
    c.eval.splits = ()
    c.eval.batch_size = 4
    c.checkpoint.every = 3
    c.checkpoint["async"] = False
    c.optim.warmup_steps = 1
    c.update_from_flattened_dict(overrides)
    return c


def fixed_batch(batch: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "technical": rng.integers(0, 256, (batch, 1, 4, 64, 64, 3), dtype=np.uint8),
        "aesthetic": rng.integers(0, 256, (batch, 1, 4, 64, 64, 3), dtype=np.uint8),
        "mos": rng.uniform(1, 5, batch).astype(np.float32),
        "source_id": rng.integers(0, 3, batch).astype(np.int32),
        "valid": np.ones(batch, bool),
    }


def run_steps(n_steps: int, cfg=None) -> dict:
    """`n_steps` train steps on one fixed global batch, data-parallel over every visible device."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from kvq_jax.data import pipeline
    from kvq_jax.train import optim, trainer

    cfg = cfg or config("/unused")
    mesh = trainer.make_mesh()
    with jax.set_mesh(mesh):
        train_graph, _, params = trainer.build_model(cfg)
        tx = optim.make_optimizer(trainer.optimizer_config(cfg, 100), params)
        replicated = NamedSharding(mesh, P())
        state = jax.device_put(trainer.init_state(cfg, params, tx), replicated)
        step = jax.jit(trainer.make_train_step(cfg, train_graph, tx, params), donate_argnums=0)
        batch = pipeline.to_global(fixed_batch(), mesh)
        loss, grad_norm = [], []
        for _ in range(n_steps):
            state, aux = step(state, batch)
            loss.append(float(aux["loss"]))
            grad_norm.append(float(aux["grad_norm"]))
        leaves = [np.asarray(x) for x in jax.tree.leaves(state["params"])]
    return {"devices": jax.device_count(), "loss": loss, "grad_norm": grad_norm, "params": leaves}


if __name__ == "__main__":
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    if sys.argv[1] == "step":
        r = run_steps(int(sys.argv[2]))
        np.savez(sys.argv[3], *r["params"], devices=r["devices"], loss=r["loss"], grad_norm=r["grad_norm"])
    elif sys.argv[1] == "train":
        from kvq_jax.train import trainer

        overrides = json.loads(sys.argv[2])
        trainer.train_and_evaluate(config(overrides.pop("data.data_dir"), **overrides), sys.argv[3])
