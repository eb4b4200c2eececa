"""Schedules, AdamW groups, freezing, clipping and EMA vs independent numbers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kvq_jax.train.optim import (
    cosine_schedule,
    ema_init,
    ema_params,
    ema_update,
    lr_at,
    make_optimizer,
    make_schedule,
    official_schedule,
    param_labels,
    path_str,
)

# ----------------------------------------------------------------------------------------------- helpers


class NpAdamW:
    """Float64 torch-style AdamW for one array (decoupled decay, bias correction, step count per param)."""

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, wd: float = 0.0) -> None:
        self.b1, self.b2, self.eps, self.wd = b1, b2, eps, wd
        self.t, self.m, self.v = 0, 0.0, 0.0

    def step(self, p: np.ndarray, g: np.ndarray, lr: float) -> np.ndarray:
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mhat = self.m / (1 - self.b1**self.t)
        vhat = self.v / (1 - self.b2**self.t)
        return p - lr * self.wd * p - lr * mhat / (np.sqrt(vhat) + self.eps)


def dover_lambda(it: int, warmup: int, total: int) -> float:
    """The official LambdaLR factor, typed from the training scripts."""
    return it / warmup if it <= warmup else 0.5 * (1 + math.cos(math.pi * (it - warmup) / total))


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, 2)).astype(np.float32)
    return {
        "technical_backbone": {"layers": [{"w": w.copy()}]},
        "technical_head": {"w": w.copy(), "b": rng.normal(size=(2,)).astype(np.float32)},
    }


def random_grads(params: dict, seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (scale * rng.normal(size=x.shape)).astype(np.float32), params)


def leaves64(tree: dict) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


BASE = {"lr": 0.01, "weight_decay": 0.05, "schedule": "constant", "backbone_lr_mult": 0.1}

# ----------------------------------------------------------------------------------------------- schedules


def test_official_schedule_hand_values() -> None:
    s = official_schedule(1e-3, warmup_steps=10, total_steps=100)
    # step 0: 0/10 → 0; step 5: 5/10; step 10: 10/10 = 1 (= cosine at 0);
    # step 35: 0.5(1+cos(π·25/100)) = 0.5(1+0.70710678) = 0.85355339;
    # step 60: 0.5(1+cos(π/2)) = 0.5;  step 100 (end): 0.5(1+cos(0.9π)) = 0.5(1−0.95105652) = 0.02447174.
    for step, f in [(0, 0.0), (5, 0.5), (10, 1.0), (35, 0.85355339), (60, 0.5), (100, 0.02447174)]:
        np.testing.assert_allclose(float(s(step)), 1e-3 * f, rtol=1e-5, atol=1e-12)
    # No warm-up: cosine from the first step.
    np.testing.assert_allclose(float(official_schedule(1e-3, 0, 100)(0)), 1e-3, rtol=1e-7)
    np.testing.assert_allclose(float(official_schedule(1e-3, 0, 100)(50)), 0.5e-3, rtol=1e-6)


def test_official_schedule_matches_official_lambda_everywhere() -> None:
    warmup, total = 7, 53
    s = official_schedule(2e-4, warmup, total)
    got = np.array([float(s(i)) for i in range(total + 1)])
    want = np.array([2e-4 * dover_lambda(i, warmup, total) for i in range(total + 1)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_cosine_and_constant_schedules() -> None:
    peak, end, warmup, total = 3e-4, 1e-5, 10, 110
    s = cosine_schedule(peak, warmup, total, end_lr=end)

    # optax docs: linear 0 → peak over warmup, then
    # end + (peak − end)·0.5(1 + cos(π·(t − warmup)/(total − warmup))).
    def ref(t: int) -> float:
        if t < warmup:
            return peak * t / warmup
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * min(t - warmup, total - warmup) / (total - warmup)))

    for t in (0, 4, 10, 35, 60, 109, 110, 200):
        np.testing.assert_allclose(float(s(t)), ref(t), rtol=1e-5, atol=1e-12)
    cfg = {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 10, "total_steps": 110}
    np.testing.assert_allclose(float(make_schedule(cfg)(60)), 0.5e-3, rtol=1e-5)
    np.testing.assert_allclose(float(make_schedule({"lr": 0.1, "schedule": "constant"})(1234)), 0.1, rtol=1e-7)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule({"lr": 0.1, "schedule": "official", "total_steps": 5})
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule({"lr": 0.1, "schedule": "linear"})


def test_lr_at_for_logging() -> None:
    cfg = {"lr": 1e-3, "schedule": "official", "warmup_steps": 10, "total_steps": 100, "backbone_lr_mult": 0.1}
    np.testing.assert_allclose(lr_at(cfg, 60), 0.5e-3, rtol=1e-6)
    np.testing.assert_allclose(lr_at(cfg, 60, backbone=True), 0.5e-4, rtol=1e-6)


# ----------------------------------------------------------------------------------------------- AdamW groups


def test_first_step_is_exact_adamw_and_backbone_gets_a_tenth() -> None:
    params = make_params()
    tx = make_optimizer(BASE, params)
    state = tx.init(params)
    g = np.array([[0.5, -2.0], [1e-3, 3.0], [-0.7, 0.0]], np.float32)
    grads = {
        "technical_backbone": {"layers": [{"w": g}]},
        "technical_head": {"w": g, "b": np.ones(2, np.float32)},
    }
    updates, _ = tx.update(grads, state, params)
    w = params["technical_head"]["w"].astype(np.float64)
    g64 = g.astype(np.float64)
    # First Adam step: m̂ = g, v̂ = g² → m̂/(√v̂ + eps) = g/(|g| + 1e-8); decoupled decay adds wd·p; ×(−lr).
    head = -0.01 * (g64 / (np.abs(g64) + 1e-8) + 0.05 * w)
    np.testing.assert_allclose(np.asarray(updates["technical_head"]["w"]), head, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        np.asarray(updates["technical_backbone"]["layers"][0]["w"]), 0.1 * head, rtol=1e-5, atol=1e-10
    )


def test_three_steps_match_numpy_adamw() -> None:
    params = make_params(1)
    cfg = {**BASE, "schedule": "official", "warmup_steps": 2, "total_steps": 10}
    tx = make_optimizer(cfg, params)
    state = tx.init(params)
    ref = [NpAdamW(wd=0.05) for _ in jax.tree.leaves(params)]
    mults = [0.1 if "backbone" in path_str(p) else 1.0 for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    p_ref = leaves64(params)
    for step in range(4):
        grads = random_grads(params, 100 + step)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        lr = 0.01 * dover_lambda(step, 2, 10)
        p_ref = [o.step(p, g, lr * m) for o, p, g, m in zip(ref, p_ref, leaves64(grads), mults, strict=True)]
    for got, want in zip(leaves64(params), p_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_frozen_params_unchanged_and_no_decay() -> None:
    params = make_params(2)
    cfg = {**BASE, "freeze": [r".*backbone.*"], "no_decay": [r".*/b"]}
    tx = make_optimizer(cfg, params)
    state = tx.init(params)
    new = params
    for step in range(3):
        updates, state = tx.update(random_grads(params, step), state, new)
        new = optax.apply_updates(new, updates)
    np.testing.assert_array_equal(
        new["technical_backbone"]["layers"][0]["w"], params["technical_backbone"]["layers"][0]["w"]
    )
    assert not np.allclose(new["technical_head"]["w"], params["technical_head"]["w"])
    # no_decay: a zero gradient on the bias leaves it unchanged (Adam term 0), while decayed weights shrink.
    zero = jax.tree.map(np.zeros_like, params)
    tx = make_optimizer(cfg, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["technical_head"]["b"]), 0.0)
    np.testing.assert_allclose(
        np.asarray(updates["technical_head"]["w"]), -0.01 * 0.05 * params["technical_head"]["w"], rtol=1e-6
    )


def test_grad_clipping_uses_trainable_norm_only() -> None:
    params = make_params(3)
    clip = 0.5
    cfg = {
        **BASE,
        "weight_decay": 0.0,
        "backbone_lr_mult": 1.0,
        "freeze": ["technical_backbone/.*"],
        "grad_clip_norm": clip,
    }
    tx = make_optimizer(cfg, params)
    state = tx.init(params)
    ref = {k: NpAdamW() for k in ("w", "b")}
    p_ref = {k: params["technical_head"][k].astype(np.float64) for k in ("w", "b")}
    clipped_any = False
    for step, scale in enumerate([10.0, 0.1, 3.0]):
        grads = random_grads(params, 50 + step, scale)
        grads["technical_backbone"]["layers"][0]["w"] *= 1e4  # frozen: must not enter the norm
        g = {k: grads["technical_head"][k].astype(np.float64) for k in ("w", "b")}
        norm = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
        factor = min(1.0, clip / norm)
        clipped_any |= factor < 1
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        p_ref = {k: ref[k].step(p_ref[k], factor * g[k], 0.01) for k in ("w", "b")}
    assert clipped_any
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(params["technical_head"][k], np.float64), p_ref[k], rtol=1e-5, atol=1e-6)
    # Without clipping the result differs (Adam is not scale-invariant after the first step).
    params2 = make_params(3)
    tx2 = make_optimizer({**cfg, "grad_clip_norm": None}, params2)
    st2 = tx2.init(params2)
    for step, scale in enumerate([10.0, 0.1, 3.0]):
        u, st2 = tx2.update(random_grads(params2, 50 + step, scale), st2, params2)
        params2 = optax.apply_updates(params2, u)
    assert not np.allclose(params2["technical_head"]["w"], params["technical_head"]["w"], rtol=1e-4)


def test_matches_torch_adamw_param_groups_and_lambdalr() -> None:
    torch = pytest.importorskip("torch")
    params = make_params(6)
    warmup, total, steps = 3, 12, 8
    cfg = {"lr": 1e-2, "weight_decay": 0.05, "schedule": "official", "backbone_lr_mult": 0.1}
    cfg |= {"warmup_steps": warmup, "total_steps": total}
    tx = make_optimizer(cfg, params)
    state = tx.init(params)
    tparams = jax.tree.map(lambda x: torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True), params)
    groups = [
        {"params": jax.tree.leaves(tparams["technical_backbone"]), "lr": 1e-2 * 0.1},
        {"params": jax.tree.leaves(tparams["technical_head"]), "lr": 1e-2},
    ]
    opt = torch.optim.AdamW(lr=1e-2, params=groups, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda it: dover_lambda(it, warmup, total))
    for step in range(steps):
        grads = random_grads(params, 300 + step)
        for tp, g in zip(jax.tree.leaves(tparams), jax.tree.leaves(grads), strict=True):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        sched.step()
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    for got, tp in zip(leaves64(params), jax.tree.leaves(tparams), strict=True):
        np.testing.assert_allclose(got, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- paths / NNX


def test_path_str_and_labels_on_nnx_state() -> None:
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.technical_backbone = nnx.List([nnx.Linear(2, 3, rngs=rngs)])
            self.technical_head = nnx.Linear(3, 1, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.technical_head(self.technical_backbone[0](x))

    model = Tiny(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    paths = sorted(path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0])
    assert paths == [
        "technical_backbone/0/bias",
        "technical_backbone/0/kernel",
        "technical_head/bias",
        "technical_head/kernel",
    ]
    pure_paths = sorted(path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0])
    assert pure_paths == paths
    labels = jax.tree.leaves(param_labels(nnx.to_pure_dict(state), no_decay=[".*bias"]))
    assert sorted(labels) == ["backbone", "backbone_nodecay", "other", "other_nodecay"]
    assert path_str((jax.tree_util.SequenceKey(2), jax.tree_util.GetAttrKey("w"))) == "2/w"

    cfg = {**BASE, "freeze": ["technical_backbone/.*"]}
    opt = nnx.Optimizer(model, make_optimizer(cfg, state), wrt=nnx.Param)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((4, 2))) ** 2))(model)
    opt.update(model, grads)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    np.testing.assert_array_equal(after["technical_backbone"][0]["kernel"], before["technical_backbone"][0]["kernel"])
    assert not np.allclose(after["technical_head"]["kernel"], before["technical_head"]["kernel"])
    # EMA straight on nnx.State: 0.5·before + 0.5·after.
    ema = ema_update(nnx.state(Tiny(nnx.Rngs(0)), nnx.Param), nnx.state(model, nnx.Param), 0.5)
    want = 0.5 * before["technical_head"]["kernel"] + 0.5 * np.asarray(after["technical_head"]["kernel"])
    np.testing.assert_allclose(nnx.to_pure_dict(ema)["technical_head"]["kernel"], want, rtol=1e-6)


def test_config_errors_name_the_key() -> None:
    params = make_params()
    with pytest.raises(ValueError, match=r"unknown keys.*'weight_decy'"):
        make_optimizer({**BASE, "weight_decy": 0.1}, params)
    with pytest.raises(ValueError, match="missing required key 'lr'"):
        make_optimizer({"schedule": "constant"}, params)
    with pytest.raises(ValueError, match="'freeze' pattern 'backbone' matches no parameter"):
        make_optimizer({**BASE, "freeze": ["backbone"]}, params)
    with pytest.raises(ValueError, match="list of regex"):
        make_optimizer({**BASE, "freeze": ".*backbone.*"}, params)


def test_accepts_ml_collections_configdict() -> None:
    import ml_collections

    cfg = ml_collections.ConfigDict({**BASE, "freeze": [".*backbone.*"], "ema_decay": 0.999})
    params = make_params()
    tx = make_optimizer(cfg, params)
    updates, _ = tx.update(random_grads(params, 1), tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["technical_backbone"]["layers"][0]["w"]), 0.0)


# ----------------------------------------------------------------------------------------------- EMA


def test_ema_arithmetic() -> None:
    ema = {"a": np.array([1.0, 2.0], np.float32), "b": np.array(-4.0, np.float32)}
    params = {"a": np.array([3.0, 6.0], np.float32), "b": np.array(6.0, np.float32)}
    out = ema_update(ema, params, 0.9)
    # 0.9·1 + 0.1·3 = 1.2; 0.9·2 + 0.1·6 = 2.4; 0.9·(−4) + 0.1·6 = −3.0
    np.testing.assert_allclose(np.asarray(out["a"]), [1.2, 2.4], rtol=1e-6)
    np.testing.assert_allclose(float(out["b"]), -3.0, rtol=1e-6)
    # k steps towards fixed params: ema_k = P + d^k (ema_0 − P).
    e = ema
    for _ in range(50):
        e = ema_update(e, params, 0.999)
    np.testing.assert_allclose(
        np.asarray(e["a"]), np.array([3.0, 6.0]) + 0.999**50 * np.array([1.0 - 3.0, 2.0 - 6.0]), rtol=1e-5
    )
    with pytest.raises(ValueError, match="decay"):
        ema_update(ema, params, 1.5)
    with pytest.raises(ValueError, match="decay"):
        ema_update(ema, params, float("nan"))


def test_ema_keeps_only_trainable_params() -> None:
    """A frozen param is its own average: the EMA holds the trainable ones, and stands in for them alone."""
    params = {"backbone": {"w": np.ones(3, np.float32)}, "head": {"w": np.zeros(2, np.float32), "b": np.float32(1)}}
    frozen = {"backbone": {"w": True}, "head": {"w": False, "b": False}}
    ema = ema_init(params, frozen)
    assert set(ema) == {"head"} and set(ema["head"]) == {"w", "b"}
    moved = {
        "backbone": {"w": np.full(3, 5.0, np.float32)},
        "head": {"w": np.full(2, 2.0, np.float32), "b": np.float32(3)},
    }
    ema = ema_update(ema, moved, 0.75)
    np.testing.assert_allclose(ema["head"]["w"], [0.5, 0.5])  # 0.75·0 + 0.25·2
    np.testing.assert_allclose(ema["head"]["b"], 1.5)  # 0.75·1 + 0.25·3
    merged = ema_params(moved, ema)
    np.testing.assert_allclose(merged["backbone"]["w"], 5.0)  # frozen: the param itself
    np.testing.assert_allclose(merged["head"]["w"], [0.5, 0.5])
    assert jax.tree.structure(merged) == jax.tree.structure(moved)
