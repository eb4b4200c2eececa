"""A tiny DOVER-shaped model and config for trainer tests (same classes as DOVER, a fraction of the size).

Run as a script in a fresh process (so XLA_FLAGS can fake several CPU devices):
  python tests/tiny.py step N OUT.npz [FSDP] → N train steps on a fixed global batch (params split FSDP ways);
                                             saves losses and params
  python tests/tiny.py train CONFIG_JSON WORKDIR → trainer.train_and_evaluate with that config
  python tests/tiny.py dump WORKDIR STEP OUT.npz → the params of the checkpoint at STEP
"""

from __future__ import annotations

import json
import sys

import numpy as np
from flax import nnx

from kvq_jax.models import ModelSpec, get_spec, model_names
from kvq_jax.models.convnext3d import ConvNeXtConfig
from kvq_jax.models.multibranch import MultiBranchConfig, MultiBranchVQA
from kvq_jax.models.registry import register
from kvq_jax.models.swin3d import SwinConfig
from kvq_jax.train.defaults import base_config

SWIN = SwinConfig(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=(2, 4, 4), frag_biases=(True, False))
if "tiny_dover" not in model_names():
    register(
        ModelSpec(
            name="tiny_dover",
            family="tests",
            branches=get_spec("dover").branches,
            build=MultiBranchVQA,
            arch=MultiBranchConfig(
                (("technical", SWIN), ("aesthetic", ConvNeXtConfig(depths=(1, 2), dims=(8, 16)))), 8, shared_head=False
            ),
        )
    )

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
    from kvq_jax.train import optim, sharding, state, trainer

    cfg = cfg or config("/unused")
    mesh = sharding.make_mesh(cfg.sharding.fsdp)
    with jax.set_mesh(mesh):
        train_graph, _, params, stats = state.build_model(cfg)
        tx = optim.make_optimizer(state.optimizer_config(cfg, 100), params)
        train_state, shardings = state.place_state(cfg, mesh, params, stats, tx)
        step = jax.jit(
            trainer.train_step_for(cfg, train_graph, tx, params),
            out_shardings=(shardings, NamedSharding(mesh, P())),
            donate_argnums=0,
        )
        batch = pipeline.to_global(fixed_batch(), mesh)
        loss, grad_norm = [], []
        for _ in range(n_steps):
            train_state, aux = step(train_state, batch)
            loss.append(float(aux["loss"]))
            grad_norm.append(float(aux["grad_norm"]))
        leaves = [np.asarray(x) for x in jax.tree.leaves(train_state["params"])]
        split = sum(not s.is_fully_replicated for s in jax.tree.leaves(shardings))
    return {"devices": jax.device_count(), "loss": loss, "grad_norm": grad_norm, "params": leaves, "split": split}


def checkpoint_params(workdir: str, step: int) -> list[np.ndarray]:
    """The params saved at `step` in a trainer workdir, restored on this process's first device."""
    import jax
    import orbax.checkpoint as ocp

    from kvq_jax.models import abstract_model

    params = nnx.state(abstract_model("tiny_dover"), nnx.Param)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), params)}
    mngr = ocp.CheckpointManager(f"{workdir}/checkpoints", item_names=("state", "data_iter"))
    restore = ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    restored = mngr.restore(step, args=ocp.args.Composite(state=restore))
    return [np.asarray(x) for x in jax.tree.leaves(restored["state"]["params"])]


if __name__ == "__main__":
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    if sys.argv[1] == "step":
        fsdp = int(sys.argv[4]) if len(sys.argv) > 4 else 1
        r = run_steps(int(sys.argv[2]), config("/unused", **{"sharding.fsdp": fsdp, "sharding.min_size": 0}))
        extra = {k: r[k] for k in ("devices", "loss", "grad_norm", "split")}
        np.savez(sys.argv[3], *r["params"], **extra)
    elif sys.argv[1] == "train":
        from kvq_jax.distributed import maybe_initialize_distributed
        from kvq_jax.train import trainer

        maybe_initialize_distributed()  # KVQ_JAX_* variables: the multi-process test runs this like main does
        overrides = json.loads(sys.argv[2])
        trainer.train_and_evaluate(config(overrides.pop("data.data_dir"), **overrides), sys.argv[3])
    elif sys.argv[1] == "dump":
        np.savez(sys.argv[4], *checkpoint_params(sys.argv[2], int(sys.argv[3])))
