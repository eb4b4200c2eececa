"""Losses vs independent float64 NumPy transcriptions, the literal PyTorch formulas and hand-worked cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvq_jax.train.losses import (
    adaptive_rank_loss,
    hard_rank_loss,
    l1_loss,
    plcc_loss,
    rank_loss,
    smooth_l1_loss,
    vqa_loss,
)

# ----------------------------------------------------------------------------------------------- references


def np_plcc(p: np.ndarray, y: np.ndarray) -> float:
    """Float64 transcription of the official formula (population std + 1e-8)."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    ph = (p - p.mean()) / (p.std() + 1e-8)
    yh = (y - y.mean()) / (y.std() + 1e-8)
    l0 = np.mean((ph - yh) ** 2) / 4
    rho = np.mean(ph * yh)
    l1 = np.mean((rho * ph - yh) ** 2) / 4
    return (l0 + l1) / 2


def np_rank(p: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    b = len(p)
    r = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            r[i, j] = max(0.0, (p[i] - p[j]) * np.sign(y[j] - y[i]))
    return r.sum() / b / (b - 1) / (1 + r.max())


def random_batch(seed: int, b: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(1, 5, b).astype(np.float32)
    p = (0.05 * y + rng.normal(0, 0.08, b)).astype(np.float32)
    return p, y


# ----------------------------------------------------------------------------------------------- plcc / rank


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("b", [2, 5, 16])
def test_plcc_and_rank_match_numpy(seed: int, b: int) -> None:
    p, y = random_batch(seed, b)
    np.testing.assert_allclose(float(plcc_loss(p, y)), np_plcc(p, y), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(rank_loss(p, y)), np_rank(p, y), rtol=2e-5, atol=1e-7)


def test_plcc_eps_is_added_to_the_std_not_the_variance() -> None:
    # With a prediction std of ~1e-4 (a fresh head can be that flat), sqrt(var + 1e-8) would shrink p̂ by
    # ~1/√2 and change the loss a lot; the official (std + 1e-8) barely changes it.
    p, y = random_batch(9, 8)
    p_flat = (1e-4 * (p - p.mean()) / p.std()).astype(np.float32)
    np.testing.assert_allclose(float(plcc_loss(p_flat, y)), np_plcc(p_flat, y), rtol=1e-4)


def test_rank_loss_counts_ties_as_zero() -> None:
    p = np.array([0.3, 0.1, 0.2, 0.9], np.float32)
    y = np.array([2.0, 2.0, 1.0, 3.0], np.float32)
    # Hand: only mis-ordered pairs with distinct labels count. (0,2): p0−p2 = 0.1 with y0 > y2: fine.
    # (1,2): y1 > y2 but p1 < p2 → R = 0.1 for both (1,2) and (2,1). (0,1) tie → 0. Others ordered.
    # ΣR = 0.2, B(B−1) = 12, max R = 0.1 → 0.2/12/1.1.
    np.testing.assert_allclose(float(rank_loss(p, y)), 0.2 / 12 / 1.1, rtol=1e-5)


def test_rank_loss_zero_when_ordered_and_plcc_zero_for_affine() -> None:
    y = np.array([1.2, 3.4, 2.2, 4.9, 1.7, 3.0], np.float32)
    p = (0.37 * y - 2.0).astype(np.float32)
    assert float(rank_loss(p, y)) == 0.0
    assert abs(float(plcc_loss(p, y))) < 1e-6
    # Reversed predictions are the worst case for PLCC: ρ = −1 → l0 = 4/4 = 1, l1 = 0 → loss 0.5.
    np.testing.assert_allclose(float(plcc_loss(-p, y)), 0.5, rtol=1e-5)
    assert float(rank_loss(-p, y)) > 0


def test_valid_mask_equals_loss_on_subset() -> None:
    p, y = random_batch(7, 10)
    valid = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 0], bool)
    # Garbage in the padded slots must not matter.
    p_pad = np.where(valid, p, 1e3).astype(np.float32)
    y_pad = np.where(valid, y, -7.0).astype(np.float32)
    np.testing.assert_allclose(float(plcc_loss(p_pad, y_pad, valid)), np_plcc(p[valid], y[valid]), rtol=2e-5)
    np.testing.assert_allclose(float(rank_loss(p_pad, y_pad, valid)), np_rank(p[valid], y[valid]), rtol=2e-5)
    none = np.zeros(10, bool)
    assert float(plcc_loss(p, y, none)) == 0.0
    assert float(rank_loss(p, y, none)) == 0.0


def test_gradients_finite_including_degenerate_batches() -> None:
    p, y = random_batch(3, 6)
    for fn in (plcc_loss, rank_loss):
        g = jax.grad(fn)(jnp.asarray(p), jnp.asarray(y))
        assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
    const = jnp.full((6,), 0.25, jnp.float32)  # e.g. a head that outputs a constant at init
    for fn in (plcc_loss, rank_loss):
        assert np.all(np.isfinite(np.asarray(jax.grad(fn)(const, jnp.asarray(y)))))
    one = np.array([1, 0, 0, 0, 0, 0], bool)
    for fn in (plcc_loss, rank_loss):
        assert np.all(np.isfinite(np.asarray(jax.grad(fn)(jnp.asarray(p), jnp.asarray(y), one))))


def test_jit_and_shape_errors() -> None:
    p, y = random_batch(4, 8)
    np.testing.assert_allclose(float(jax.jit(plcc_loss)(p, y)), np_plcc(p, y), rtol=2e-5)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        plcc_loss(p[:, None], y)
    with pytest.raises(ValueError, match="valid mask"):
        rank_loss(p, y, np.ones(3, bool))


def test_match_literal_torch_formulas_values_and_grads() -> None:
    torch = pytest.importorskip("torch")

    # The official functions, typed from DOVER/FAST-VQA (inputs are (B, 1) column vectors).
    def t_rank(y_pred, y):
        r = torch.nn.functional.relu((y_pred - y_pred.t()) * torch.sign(y.t() - y))
        scale = 1 + torch.max(r)
        return (torch.sum(r) / y_pred.shape[0] / (y_pred.shape[0] - 1) / scale).float()

    def t_plcc(y_pred, y):
        sigma_hat, m_hat = torch.std_mean(y_pred, unbiased=False)
        y_pred = (y_pred - m_hat) / (sigma_hat + 1e-8)
        sigma, m = torch.std_mean(y, unbiased=False)
        y = (y - m) / (sigma + 1e-8)
        loss0 = torch.nn.functional.mse_loss(y_pred, y) / 4
        rho = torch.mean(y_pred * y)
        loss1 = torch.nn.functional.mse_loss(rho * y_pred, y) / 4
        return ((loss0 + loss1) / 2).float()

    for seed in range(3):
        p, y = random_batch(10 + seed, 8)
        for t_fn, j_fn in ((t_plcc, plcc_loss), (t_rank, rank_loss)):
            tp = torch.tensor(p[:, None], dtype=torch.float64, requires_grad=True)
            ty = torch.tensor(y[:, None], dtype=torch.float64)
            tv = t_fn(tp, ty)
            tv.backward()
            jv, jg = jax.value_and_grad(j_fn)(jnp.asarray(p), jnp.asarray(y))
            np.testing.assert_allclose(float(jv), float(tv.detach()), rtol=2e-5, atol=1e-7)
            np.testing.assert_allclose(np.asarray(jg), tp.grad.numpy()[:, 0], rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------- adaptive rank


def test_adaptive_rank_hand_worked_fixed_margin() -> None:
    p = np.array([0.0, 0.5, 0.2, 0.9], np.float32)
    y = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    g = np.array([0, 0, 1, 1])
    # Better video = larger index. Homologous pairs (1,0): Δp=0.5 ≥ 0.1 → 0; (3,2): Δp=0.7 → 0. mean 0.
    # Non-homologous, margin 0.2: (2,0) Δp=0.2 → 0; (2,1) Δp=−0.3 → 0.5; (3,0) 0.9 → 0; (3,1) 0.4 → 0.
    # mean = 0.5/4 = 0.125; loss = 1.0·0 + 0.5·0.125 = 0.0625.
    kw = dict(margin_homologous=0.1, margin_nonhomologous=0.2, weight_homologous=1.0, weight_nonhomologous=0.5)
    out = adaptive_rank_loss(p, y, g, adaptive=False, normalize=False, **kw)
    np.testing.assert_allclose(float(out), 0.0625, rtol=1e-5)
    # Adaptive: margins ×Δy. Hom (1,0): 0.1·1 → 0; (3,2): 0.1 → 0. Non-hom: (2,0) 0.2·2=0.4−0.2 = 0.2;
    # (2,1) 0.2·1=0.2+0.3 = 0.5; (3,0) 0.6−0.9 → 0; (3,1) 0.4−0.4 = 0. mean 0.7/4 = 0.175 → ×0.5 = 0.0875.
    out = adaptive_rank_loss(p, y, g, adaptive=True, normalize=False, **kw)
    np.testing.assert_allclose(float(out), 0.0875, rtol=1e-5, atol=1e-7)


def test_adaptive_rank_hand_worked_homologous_and_ties() -> None:
    p = np.array([0.4, 0.1, 0.3], np.float32)
    y = np.array([2.0, 2.0, 3.0], np.float32)
    g = np.array([5, 5, 5])
    # Tie (0,1) is skipped. Pairs (2,0): Δp = −0.1, margin 0.3 → 0.4; (2,1): Δp = 0.2 → 0.1. mean = 0.25;
    # weight_homologous 2 → 0.5; no non-homologous pairs → that term is 0.
    kw = dict(margin_homologous=0.3, margin_nonhomologous=9.0, weight_homologous=2.0, weight_nonhomologous=7.0)
    out = adaptive_rank_loss(p, y, g, adaptive=False, normalize=False, **kw)
    np.testing.assert_allclose(float(out), 0.5, rtol=1e-5)


def test_adaptive_rank_normalized_reversed() -> None:
    # y = [1,2,3] → ŷ = [−√1.5, 0, √1.5]; p reversed → p̂ = −ŷ. Margin 1, adaptive, one group:
    # pairs (better, worse): (1,0): Δŷ = √1.5, Δp̂ = −√1.5 → 2√1.5; (2,0): 4√1.5; (2,1): 2√1.5. mean = 8√1.5/3.
    y = np.array([1.0, 2.0, 3.0], np.float32)
    p = np.array([30.0, 20.0, 10.0], np.float32)
    out = adaptive_rank_loss(p, y, np.zeros(3, int))
    np.testing.assert_allclose(float(out), 8 * math.sqrt(1.5) / 3, rtol=1e-5)
    # Any positive affine map of y is a perfect prediction in normalised units → 0.
    assert abs(float(adaptive_rank_loss(3.0 * y + 1.0, y, np.array([0, 1, 0])))) < 1e-5


def test_adaptive_rank_no_valid_pairs_is_zero_with_finite_grad() -> None:
    y = np.full(4, 3.0, np.float32)
    p = np.array([0.1, 0.5, 0.2, 0.3], np.float32)
    g = np.array([0, 1, 2, 3])
    val, grad = jax.value_and_grad(adaptive_rank_loss)(jnp.asarray(p), jnp.asarray(y), g)
    assert float(val) == 0.0 and np.all(np.isfinite(np.asarray(grad)))
    # Distinct labels but only one valid example → no pairs either.
    y2 = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    val = adaptive_rank_loss(p, y2, g, valid=np.array([0, 0, 1, 0], bool))
    assert float(val) == 0.0


def test_adaptive_rank_valid_mask_equals_subset() -> None:
    rng = np.random.default_rng(5)
    p = rng.normal(size=9).astype(np.float32)
    y = rng.uniform(1, 5, 9).astype(np.float32)
    g = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    valid = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
    kw = dict(margin_homologous=0.5, margin_nonhomologous=0.2, weight_homologous=1.0, weight_nonhomologous=0.3)
    full = adaptive_rank_loss(np.where(valid, p, 99.0), np.where(valid, y, 0.0), g, valid=valid, **kw)
    sub = adaptive_rank_loss(p[valid], y[valid], g[valid], **kw)
    np.testing.assert_allclose(float(full), float(sub), rtol=1e-5)


# ----------------------------------------------------------------------------------------------- vqa_loss


def test_vqa_loss_dover_composition() -> None:
    pt, y = random_batch(20, 8)
    pa, _ = random_batch(21, 8)
    loss, aux = vqa_loss({"technical": pt, "aesthetic": pa}, y, weights={"plcc": 1.0, "rank": 0.3})
    expected = np_plcc(pt, y) + np_plcc(pa, y) + 0.3 * np_rank(pt, y) + 0.3 * np_rank(pa, y)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    assert set(aux) == {"technical/plcc", "technical/rank", "aesthetic/plcc", "aesthetic/rank", "total"}
    np.testing.assert_allclose(float(aux["aesthetic/rank"]), np_rank(pa, y), rtol=2e-5)


def test_vqa_loss_with_adaptive_rank_and_errors() -> None:
    p = np.array([0.0, 0.5, 0.2, 0.9], np.float32)
    y = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    g = np.array([0, 0, 1, 1])
    opts = dict(margin_homologous=0.1, margin_nonhomologous=0.2, weight_homologous=1.0, weight_nonhomologous=0.5)
    opts |= {"adaptive": False, "normalize": False}
    weights = {"plcc": 0.0, "rank": 0.0, "arank": 2.0}
    loss, aux = vqa_loss({"fragments": p}, y, weights=weights, group=g, arank_options=opts)
    # 2 × the hand-worked 0.0625 of test_adaptive_rank_hand_worked_fixed_margin.
    np.testing.assert_allclose(float(loss), 0.125, rtol=1e-5)
    assert set(aux) == {"fragments/arank", "total"}
    with pytest.raises(ValueError, match="group"):
        vqa_loss({"fragments": p}, y, weights={"arank": 1.0})
    with pytest.raises(ValueError, match="unknown loss weight keys"):
        vqa_loss({"fragments": p}, y, weights={"plc": 1.0})
    step = jax.jit(lambda p, y: vqa_loss({"a": p}, y, weights={"plcc": 1.0, "rank": 0.3})[0])
    np.testing.assert_allclose(float(step(p, y)), np_plcc(p, y) + 0.3 * np_rank(p, y), rtol=2e-5)


# ----------------------------------------------------------------------------------------------- smooth L1


def test_smooth_l1_hand_worked_mask_and_torch() -> None:
    # d = 0.5 → 0.125; d = -2 → 1.5; d = 1 (the boundary, linear side) → 0.5; d = 0 → 0: mean 2.125 / 4.
    p = np.array([1.5, 1.0, 4.0, 3.0], np.float32)
    y = np.array([1.0, 3.0, 3.0, 3.0], np.float32)
    np.testing.assert_allclose(float(smooth_l1_loss(p, y)), 2.125 / 4, rtol=1e-6)
    np.testing.assert_allclose(float(smooth_l1_loss(p, y, valid=np.array([1, 1, 0, 0]))), 1.625 / 2, rtol=1e-6)
    assert float(smooth_l1_loss(p, y, valid=np.zeros(4))) == 0.0
    grad = jax.grad(lambda q: smooth_l1_loss(q, y))(jnp.asarray(p))
    np.testing.assert_allclose(np.asarray(grad), [0.5 / 4, -1 / 4, 1 / 4, 0.0], rtol=1e-6)  # d inside, else sign
    torch = pytest.importorskip("torch")
    pt, yt = random_batch(30, 16)
    pt = pt * 3  # both branches of the loss
    ref = torch.nn.functional.smooth_l1_loss(torch.from_numpy(pt), torch.from_numpy(yt)).item()
    np.testing.assert_allclose(float(smooth_l1_loss(pt, yt)), ref, rtol=1e-6)
    loss, aux = vqa_loss({"iqa": p}, y, weights={"plcc": 0.0, "rank": 0.0, "smooth_l1": 2.0})
    np.testing.assert_allclose(float(loss), 2 * 2.125 / 4, rtol=1e-6)
    assert set(aux) == {"iqa/smooth_l1", "total"}


# ------------------------------------------------------------------------------- the original SimpleVQA's loss

# Six videos. Hard pairs (0 < |Δy| < 1): {0,1} (Δy 0.5, ordered), {2,3} (0.4, mis-ordered by 0.4), {3,4} (0.4,
# mis-ordered by 0.6), {1,5} (0.5, mis-ordered by 0.9). Left out: the tie {2,4}, and {0,5}, {2,5}, {4,5} on the
# threshold (Δy = 1; {0,5} is mis-ordered by 0.2).
L1R_P = np.array([0.2, 0.9, 0.5, 0.1, 0.7, 0.0], np.float32)
L1R_Y = np.array([1.0, 1.5, 3.0, 3.4, 3.0, 2.0], np.float32)


def test_l1_and_hard_rank_hand_worked() -> None:
    # L1: (0.8 + 0.6 + 2.5 + 3.3 + 2.3 + 2.0) / 6. Rank: each hard pair in both orders, (0.4 + 0.6 + 0.9)·2 / (4·2).
    np.testing.assert_allclose(float(l1_loss(L1R_P, L1R_Y)), 11.5 / 6, rtol=1e-6)
    np.testing.assert_allclose(float(hard_rank_loss(L1R_P, L1R_Y)), 1.9 / 4, rtol=1e-6)
    # A threshold past 1 takes in the three pairs on it: (1.9 + 0.2) / 7.
    np.testing.assert_allclose(float(hard_rank_loss(L1R_P, L1R_Y, threshold=1.01)), 2.1 / 7, rtol=1e-6)
    # d/dp of relu(p2 − p3) + relu(p4 − p3) + relu(p1 − p5), each twice, over 8.
    grad = jax.grad(lambda q: hard_rank_loss(q, jnp.asarray(L1R_Y)))(jnp.asarray(L1R_P))
    np.testing.assert_allclose(np.asarray(grad), [0.0, 0.25, 0.25, -0.5, 0.25, -0.25], atol=1e-7)
    # Without video 4: {0,1}, {2,3}, {1,5} remain, 1.3 / 3; the mask equals the subset.
    valid = np.array([1, 1, 1, 1, 0, 1])
    keep = valid.astype(bool)
    np.testing.assert_allclose(float(hard_rank_loss(L1R_P, L1R_Y, valid)), 1.3 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(hard_rank_loss(L1R_P[keep], L1R_Y[keep])), 1.3 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(l1_loss(L1R_P, L1R_Y, valid)), 9.2 / 5, rtol=1e-6)
    # No hard pair (labels 2 apart): 0 with a zero gradient.
    far = jnp.asarray([1.0, 3.0, 5.0])
    assert float(hard_rank_loss(jnp.asarray([3.0, 2.0, 1.0]), far)) == 0.0
    assert not np.any(np.asarray(jax.grad(lambda q: hard_rank_loss(q, far))(jnp.asarray([3.0, 2.0, 1.0]))))


def test_l1rank_matches_the_official_class_and_its_swapped_call() -> None:
    torch = pytest.importorskip("torch")

    def official(preds, gts, hard_thred=1.0):  # utils.py L1RankLoss.forward, default weights l1_w = rank_w = 1
        preds, gts = preds.view(-1), gts.view(-1)
        l1 = torch.nn.functional.l1_loss(preds, gts)
        n = len(preds)
        preds = preds.unsqueeze(0).repeat(n, 1)
        preds_t = preds.t()
        label = gts.unsqueeze(0).repeat(n, 1)
        label_t = label.t()
        masks = torch.sign(label - label_t)
        hard = (torch.abs(label - label_t) < hard_thred) & (torch.abs(label - label_t) > 0)
        rank = hard * torch.relu(-masks * (preds - preds_t))
        return l1 + rank.sum() / (hard.sum() + 1e-08)

    weights = {"plcc": 0.0, "rank": 0.0, "l1": 1.0, "hard_rank": 1.0}
    for seed in range(3):
        rng = np.random.default_rng(40 + seed)
        y = (rng.integers(2, 11, 16) / 2).astype(np.float32)  # KVQ's 1–5 in 0.5 steps: ties, mis-ordered hard pairs
        p = (y + rng.normal(0, 0.5, 16)).astype(np.float32)
        tp = torch.tensor(p, dtype=torch.float64, requires_grad=True)
        ty = torch.tensor(y, dtype=torch.float64)
        tv = official(tp, ty)
        tv.backward()
        (jv, aux), jg = jax.value_and_grad(lambda q, t: vqa_loss({"spatial": q}, t, weights=weights), has_aux=True)(
            p, y
        )
        assert set(aux) == {"spatial/l1", "spatial/hard_rank", "total"}
        np.testing.assert_allclose(float(jv), float(tv.detach()), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(jg), tp.grad.numpy(), atol=1e-7)
        l1_grad = np.asarray(jax.grad(l1_loss)(p, y))
        assert not np.allclose(np.asarray(jg), l1_grad)  # the rank term trains when called as written
        # train.py calls criterion(labels, outputs): then the rank term adds nothing to the outputs' gradient.
        tp.grad = None
        official(ty, tp).backward()
        np.testing.assert_allclose(tp.grad.numpy(), l1_grad, atol=1e-7)
