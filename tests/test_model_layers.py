"""The fast formulations in kvq_jax.models against straightforward references computed here.

Depthwise convolution against XLA's grouped convolution (values and all three gradients), window attention
against a per-window, per-head NumPy loop in float64 (values) and a one-shot softmax (gradients), the
window/gate/mask geometry against direct NumPy constructions, GELU against scipy's erf, and the bfloat16
compute path against float32 on tiny backbones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from kvq_jax.models import convnext3d, swin3d
from kvq_jax.models.common import dense, gelu, largest_divisor, linear_dot
from kvq_jax.models.convnext3d import ConvNeXt3D, ConvNeXtConfig, depthwise_conv3d
from kvq_jax.models.swin3d import (
    SwinConfig,
    SwinTransformer3D,
    WindowAttention3D,
    fragment_ids,
    relative_position_index,
    shift_regions,
    window_gates,
    window_mask,
    window_partition,
    window_partition_np,
    window_reverse,
)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def grouped_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """The textbook depthwise 'same' conv: XLA's grouped convolution, feature_group_count = C."""
    pads = [(s // 2, s // 2) for s in kernel.shape[:3]]
    out = jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1, 1),
        pads,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=x.shape[-1],
        precision=jax.lax.Precision.HIGHEST,
    )
    return out + bias


# (B, T, H, W, C), temporal kernel size: odd B·T (no frame split), W not a multiple of the 8-wide gradient block.
CONV_CASES = [((2, 5, 9, 11, 4), 3), ((1, 4, 6, 5, 3), 1), ((1, 3, 7, 7, 8), 1), ((1, 2, 7, 16, 5), 3)]


def _conv_inputs(shape: tuple[int, ...], k: int, rng: np.random.Generator) -> tuple[jax.Array, ...]:
    """Random input, (k, 7, 7, 1, C) depthwise kernel and bias."""
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, 7, 7, 1, shape[-1])), jnp.float32)
    return x, kernel, jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)


@pytest.mark.parametrize(("shape", "k"), CONV_CASES)
def test_depthwise_conv_matches_grouped_conv(shape, k):
    x, kernel, bias = _conv_inputs(shape, k, np.random.default_rng(0))
    assert rel_err(jax.jit(depthwise_conv3d)(x, kernel, bias), grouped_conv(x, kernel, bias)) < 1e-5


@pytest.mark.parametrize(("shape", "k"), CONV_CASES)
@pytest.mark.parametrize("chunk_bytes", [None, 1, 6000])  # all channels at once, one per chunk, some in pairs
def test_depthwise_conv_gradients_match_grouped_conv(shape, k, chunk_bytes, monkeypatch):
    if chunk_bytes is not None:
        monkeypatch.setattr(convnext3d, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(1)
    x, kernel, bias = _conv_inputs(shape, k, rng)
    cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ours = jax.jit(lambda *a: jax.vjp(depthwise_conv3d, *a)[1](cotangent))(x, kernel, bias)
    ref = jax.vjp(grouped_conv, x, kernel, bias)[1](cotangent)
    for name, a, b in zip(("x", "kernel", "bias"), ours, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel_err(a, b) < 1e-5, name


def test_depthwise_conv_rejects_even_kernels():
    x = jnp.zeros((1, 2, 4, 4, 3))
    with pytest.raises(ValueError, match="odd kernel sizes"):
        depthwise_conv3d(x, jnp.zeros((2, 7, 7, 1, 3)), jnp.zeros(3))


def test_depthwise_conv_bfloat16_close_to_float32():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((1, 4, 8, 8, 16)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 7, 7, 1, 16)) * 0.1, jnp.float32)
    bias = jnp.asarray(rng.standard_normal(16), jnp.float32)
    out = depthwise_conv3d(x.astype(jnp.bfloat16), kernel, bias)
    assert out.dtype == jnp.bfloat16
    assert 1e-4 < rel_err(out, grouped_conv(x, kernel, bias)) < 2e-2


def naive_window_attention(x, p, index, gates, mask, heads):
    """Official WindowAttention3D, one window, one sample and one head at a time, float64."""
    nw, b, n, c = x.shape
    hd = c // heads
    out = np.zeros((nw, b, n, c))
    for w in range(nw):
        for s in range(b):
            qkv = x[w, s] @ p["qkv_k"] + p["qkv_b"]
            heads_out = []
            for h in range(heads):
                q, k, v = (qkv[:, j * c + h * hd : j * c + (h + 1) * hd] for j in range(3))
                logits = (q * hd**-0.5) @ k.T
                bias = p["rpt"][index, h]
                if "fpt" in p:
                    g = gates[w].astype(np.float64)
                    bias = bias * g + p["fpt"][index, h] * (1 - g)
                logits = logits + bias
                if mask is not None:
                    logits = logits - 100.0 * mask[w]
                prob = np.exp(logits - logits.max(-1, keepdims=True))
                heads_out.append((prob / prob.sum(-1, keepdims=True)) @ v)
            out[w, s] = np.concatenate(heads_out, -1) @ p["proj_k"] + p["proj_b"]
    return out


def make_attention(frag_bias: bool, seed: int) -> tuple[WindowAttention3D, dict]:
    """A tiny WindowAttention3D (dim 8, 2 heads, window 2×3×3) with every table filled at random."""
    attn = WindowAttention3D(8, (2, 3, 3), 2, frag_bias, jnp.float32, nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    rows = attn.relative_position_bias_table.shape[0]
    attn.relative_position_bias_table[...] = jnp.asarray(rng.standard_normal((rows, 2)), jnp.float32)
    if frag_bias:
        attn.fragment_position_bias_table[...] = jnp.asarray(rng.standard_normal((rows, 2)), jnp.float32)
    for lin in (attn.qkv, attn.proj):
        lin.bias[...] = jnp.asarray(rng.standard_normal(lin.bias.shape), jnp.float32)
    p = {
        "qkv_k": np.asarray(attn.qkv.kernel[...], np.float64),
        "qkv_b": np.asarray(attn.qkv.bias[...], np.float64),
        "proj_k": np.asarray(attn.proj.kernel[...], np.float64),
        "proj_b": np.asarray(attn.proj.bias[...], np.float64),
        "rpt": np.asarray(attn.relative_position_bias_table[...], np.float64),
    }
    if frag_bias:
        p["fpt"] = np.asarray(attn.fragment_position_bias_table[...], np.float64)
    return attn, p


@pytest.mark.parametrize(("frag_bias", "masked"), [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("step_windows", [1, 2, 6])
def test_window_attention_matches_per_window_loop(frag_bias, masked, step_windows, monkeypatch):
    # Room for `step_windows` windows of (2 samples × 2 heads × 18 × 18) logits per scan step.
    monkeypatch.setattr(swin3d, "_STEP_ELEMENTS", step_windows * 2 * 2 * 18 * 18)
    attn, p = make_attention(frag_bias, seed=3)
    rng = np.random.default_rng(4)
    nw, b, n = 6, 2, 18
    x = rng.standard_normal((nw, b, n, 8)).astype(np.float32)
    index = relative_position_index((2, 3, 3))
    gates = rng.integers(0, 4, (nw, n, n)).astype(np.int8)
    mask = rng.integers(0, 2, (nw, n, n)).astype(np.int8) if masked else None
    ours = attn(jnp.asarray(x), index, jnp.asarray(gates), None if mask is None else jnp.asarray(mask))
    ref = naive_window_attention(x.astype(np.float64), p, index, gates, mask, heads=2)
    assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize(("frag_bias", "masked"), [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("step_windows", [1, 3])
def test_window_attention_gradients_match_plain_softmax(frag_bias, masked, step_windows, monkeypatch):
    """The hand-written backward (recomputed probabilities, bias gradient summed by halves over 3 samples and
    `step_windows` windows, odd sizes included) against autodiff of a plain softmax."""
    monkeypatch.setattr(swin3d, "_STEP_ELEMENTS", step_windows * 3 * 2 * 18 * 18)
    attn, _ = make_attention(frag_bias, seed=5)
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((3, 3, 18, 8)), jnp.float32)
    index = relative_position_index((2, 3, 3))
    gates = jnp.asarray(rng.integers(0, 4, (3, 18, 18)), jnp.int8)
    mask = jnp.asarray(rng.integers(0, 2, (3, 18, 18)), jnp.int8) if masked else None
    graphdef, params = nnx.split(attn)

    def plain(params, x):
        m = nnx.merge(graphdef, params)
        nw, b, n, c = x.shape
        qkv = m.qkv(x).reshape(nw, b, n, 3, 2, c // 2)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        bias = m.relative_position_bias_table[...][index].transpose(2, 0, 1)[None]
        if frag_bias:
            fpb = m.fragment_position_bias_table[...][index].transpose(2, 0, 1)
            g = gates.astype(jnp.float32)[:, None]
            bias = bias * g + fpb * (1 - g)
        if masked:
            bias = bias - 100.0 * mask.astype(jnp.float32)[:, None]
        logits = jnp.einsum("wbqhd,wbkhd->wbhqk", q * m.scale, k) + bias[:, None]
        out = jnp.einsum("wbhqk,wbkhd->wbqhd", jax.nn.softmax(logits, -1), v).reshape(nw, b, n, c)
        return jnp.sum(m.proj(out) ** 2)

    def ours(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x, index, gates, mask) ** 2)

    got = jax.grad(ours, argnums=(0, 1))(params, x)
    want = jax.grad(plain, argnums=(0, 1))(params, x)
    assert rel_err(got[1], want[1]) < 1e-4
    for (path, a), (_, b) in zip(nnx.to_flat_state(got[0]), nnx.to_flat_state(want[0]), strict=True):
        assert rel_err(a[...], b[...]) < 1e-4, path


def test_window_partition_is_windows_major_and_invertible():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 6, 9, 3)).astype(np.float32)
    windows = np.asarray(window_partition(jnp.asarray(x), (2, 3, 3)))
    assert windows.shape == (2 * 2 * 3, 2, 18, 3)
    for s in range(2):  # per sample, the official (window, token) order of the NumPy reference
        np.testing.assert_array_equal(windows[:, s], window_partition_np(x[s], (2, 3, 3)))
    np.testing.assert_array_equal(window_reverse(jnp.asarray(windows), (2, 3, 3), (4, 6, 9)), x)


def test_window_gates_and_mask_from_geometry():
    padded, window, shift = (4, 14, 14), (2, 7, 7), (1, 3, 3)
    ids = fragment_ids(padded, window, shift)
    regions = shift_regions(padded, window, shift)
    gates, mask = np.asarray(window_gates(ids)), np.asarray(window_mask(regions))
    nw, n = regions.shape
    assert gates.dtype == np.int8 and mask.dtype == np.int8 and gates.shape == mask.shape == (nw, n, n)
    for w in range(nw):
        for i in range(0, n, 5):
            for j in range(0, n, 7):
                assert gates[w, i, j] == abs(ids[w, i, 0] - ids[w, j, 0]) + abs(ids[w, i, 1] - ids[w, j, 1])
                assert mask[w, i, j] == (regions[w, i] != regions[w, j])
    assert mask.any() and not mask.all() and gates.max() > 1


def test_gelu_is_exact_erf_gelu_and_passes_nan():
    x = np.linspace(-6, 6, 1001).astype(np.float32)
    want = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    assert np.abs(np.asarray(gelu(jnp.asarray(x))) - want).max() < 2e-6
    assert np.isnan(np.asarray(gelu(jnp.asarray([np.nan, 1.0], jnp.float32)))[0])


TINY_SWIN = SwinConfig(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=(2, 3, 3), frag_biases=(True, True))
TINY_CONVNEXT = ConvNeXtConfig(depths=(2, 2), dims=(8, 16), version=2)


def random_model(cls, cfg, dtype, seed: int = 0):
    """`cls(cfg)` in eval mode with every param drawn from N(0, 0.1²) by NumPy (no slow eager initialisers)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(cfg, dtype=dtype, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda v: jnp.asarray(0.1 * rng.standard_normal(v.shape), v.dtype), state)
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


@pytest.mark.parametrize("cfg", [TINY_SWIN, TINY_CONVNEXT], ids=["swin", "convnext_v2"])
def test_bfloat16_backbone_runs_close_to_float32(cfg):
    cls = SwinTransformer3D if isinstance(cfg, SwinConfig) else ConvNeXt3D
    models = [random_model(cls, cfg, dtype) for dtype in (jnp.float32, jnp.bfloat16)]
    x = jnp.asarray(np.random.default_rng(8).standard_normal((1, 4, 40, 44, 3)), jnp.float32)
    want, got = (jax.jit(lambda st, x, g=g: nnx.merge(g, st)(x))(st, x) for g, st in map(nnx.split, models))
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    assert np.isfinite(np.asarray(got, np.float32)).all()
    assert 1e-4 < rel_err(got, want) < 0.1


def test_dense_gradients_match_plain_product():
    """The Linear layers' hand-written backward on CPU against autodiff of x · W + b."""
    layer = dense(5, 3, jnp.float32, nnx.Rngs(0))
    rng = np.random.default_rng(8)
    layer.bias[...] = jnp.asarray(rng.standard_normal(3), jnp.float32)
    x = jnp.asarray(rng.standard_normal((2, 4, 32, 5)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 4, 32, 3)), jnp.float32)
    graphdef, params = nnx.split(layer)

    def plain(params, x):
        p = nnx.merge(graphdef, params)
        return jnp.sum((x @ p.kernel[...] + p.bias[...]) * g)

    def ours(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x) * g)

    got = jax.jit(jax.grad(ours, argnums=(0, 1)))(params, x)
    want = jax.grad(plain, argnums=(0, 1))(params, x)
    assert rel_err(got[1], want[1]) < 1e-6
    assert rel_err(got[0]["kernel"][...], want[0]["kernel"][...]) < 1e-6
    assert rel_err(got[0]["bias"][...], want[0]["bias"][...]) < 1e-6


def test_linear_dot_rejects_other_products():
    with pytest.raises(ValueError, match="last axis"):
        linear_dot(jnp.ones((3, 4)), jnp.ones((3, 5)), (((0,), (0,)), ((), ())))


def test_largest_divisor_matches_brute_force():
    for n in (1, 7, 12, 64, 97, 196, 25088):
        for at_most in (0, 1, 5, 12, 100, 600, 30000):
            want = max([d for d in range(1, n + 1) if n % d == 0 and d <= at_most], default=1)
            assert largest_divisor(n, at_most) == want, (n, at_most)
