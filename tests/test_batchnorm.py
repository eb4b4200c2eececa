"""Train-mode BatchNorm (`models.common.BatchNorm`): batch statistics, PyTorch's running-statistic update, which
statistics are synchronised under data parallelism, and frozen backbones kept in eval mode by the trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kvq_jax.models.common import BatchNorm
from kvq_jax.train import state
from kvq_jax.train.defaults import base_config

ROOT = Path(__file__).parent.parent


def _bn(dim: int = 1, momentum: float = 0.1) -> BatchNorm:
    bn = BatchNorm(dim, eps=1e-5, momentum=momentum, dtype=jnp.float32, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = jnp.full((dim,), 2.0), jnp.full((dim,), 0.5)
    bn.mean[...], bn.var[...] = jnp.zeros(dim), jnp.ones(dim)
    return bn


def test_train_mode_uses_batch_statistics_and_updates_like_pytorch():
    # One channel, values 1, 2, 3, 6 over (N=2, H=1, W=2): mean 3, biased variance (4+1+0+9)/4 = 3.5,
    # unbiased 14/3. Normalised with the biased variance; running_var gets the unbiased one (PyTorch).
    x = jnp.asarray([1.0, 2.0, 3.0, 6.0]).reshape(2, 1, 2, 1)
    bn = _bn()
    bn.train()
    y = np.asarray(bn(x)).reshape(-1)
    np.testing.assert_allclose(y, 2.0 * (np.array([1, 2, 3, 6]) - 3.0) / np.sqrt(3.5 + 1e-5) + 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(bn.mean[...][0]), 0.9 * 0 + 0.1 * 3.0, rtol=1e-6)
    np.testing.assert_allclose(float(bn.var[...][0]), 0.9 * 1 + 0.1 * 14 / 3, rtol=1e-6)
    # Eval mode: the running statistics, left as they are.
    bn.eval()
    z = np.asarray(bn(x)).reshape(-1)
    np.testing.assert_allclose(z, 2.0 * (np.array([1, 2, 3, 6]) - 0.3) / np.sqrt(0.9 + 1.4 / 3 + 1e-5) + 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(bn.mean[...][0]), 0.3, rtol=1e-6)


def test_matches_torch_batchnorm2d_in_train_mode():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 6, 3)).astype(np.float32)
    ref = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.01)
    ref.train()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        ref.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    bn = BatchNorm(3, eps=1e-3, momentum=0.01, dtype=jnp.float32, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = jnp.asarray([0.5, 1.0, 2.0]), jnp.asarray([0.1, -0.2, 0.3])
    bn.mean[...], bn.var[...] = jnp.zeros(3), jnp.ones(3)
    bn.train()
    np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), ref.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var[...]), ref.running_var.numpy(), rtol=1e-5)


_DATA_PARALLEL = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from kvq_jax.models.common import BatchNorm

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    x = np.arange(8 * 2 * 2 * 1, dtype=np.float32).reshape(8, 2, 2, 1) ** 1.5  # rows differ per device
    bn = BatchNorm(1, momentum=0.1, dtype=jnp.float32, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...], bn.mean[...], bn.var[...] = jnp.ones(1), jnp.zeros(1), jnp.zeros(1), jnp.ones(1)
    bn.train()
    graph, variables = nnx.split(bn)

    @jax.jit
    def step(variables, x):
        layer = nnx.merge(graph, variables)
        y = layer(x)
        return y, nnx.state(layer)

    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    y, new = step(variables, xs)
    json.dump({"devices": jax.device_count(), "shards": len(xs.addressable_shards), "y": np.asarray(y).tolist(),
               "mean": float(new["mean"][...][0]), "var": float(new["var"][...][0])}, sys.stdout)
    """
)


def test_data_parallel_statistics_are_global():
    """A global batch sharded over 4 CPU devices under jit: the batch statistics (normalisation and running
    statistics) are those of the whole global batch, i.e. synchronised over the devices like SyncBatchNorm, not
    each device's own (PyTorch DistributedDataParallel) — those would differ here."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    r = subprocess.run([sys.executable, "-c", _DATA_PARALLEL], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert got["devices"] == 4 and got["shards"] == 4
    x = (np.arange(32, dtype=np.float64) ** 1.5).reshape(8, 2, 2, 1)
    mean, var, n = x.mean(), x.var(), x.size
    np.testing.assert_allclose(np.asarray(got["y"]), (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(got["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    per_device = x.reshape(4, -1).mean(axis=1)
    assert np.ptp(per_device) > 10  # each device's own mean would be far from the global one


def test_frozen_backbone_batchnorm_stays_in_eval_mode():
    """The trainer's train graph: BatchNorm layers of frozen params use (and keep) their running statistics; the
    others train on batch statistics."""
    cfg = base_config("simplevqa_lite0")
    cfg.optim.freeze = ("vqa/simpleVQA_backbone/_blocks/[0-9]/.*",)
    graph, _, params, stats = state.build_model(cfg)
    model = nnx.merge(graph, params, stats)
    modes = {
        "/".join(map(str, p)): m.use_running_average for p, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)
    }
    assert modes["vqa/simpleVQA_backbone/_blocks/3/_bn1"] is True
    assert modes["vqa/simpleVQA_backbone/_blocks/12/_bn1"] is False
    assert modes["vqa/simpleVQA_backbone/_bn0"] is False  # the stem is not frozen by that pattern
