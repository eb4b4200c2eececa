"""Tests of the benchmark command and of the official-PyTorch-checkout machinery (kvq_jax.torch_reference).

The real official checkout is not available in CI, so the import/build path is exercised on a small fake
checkout written here with the same layout and imports (timm, torchvision.ops, einops, clip, a weight
download in the constructor, a top-level ``__init__`` that must not run).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import textwrap
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import scipy.stats

from kvq_jax import bench
from kvq_jax import torch_reference as tr

# ----------------------------------------------------------------------------------------------- pure helpers


def test_latency_stats_hand_values():
    s = bench.latency_stats([5.0, 1.0, 3.0, 2.0, 4.0])
    # Linear-interpolation percentiles of 1..5: p10 = 1 + 0.1·4, p90 = 1 + 0.9·4.
    assert s["median_s"] == 3.0 and s["min_s"] == 1.0 and s["max_s"] == 5.0 and s["mean_s"] == 3.0
    assert s["p10_s"] == pytest.approx(1.4) and s["p90_s"] == pytest.approx(4.6)
    assert s["n"] == 5 and s["runs_s"] == [5.0, 1.0, 3.0, 2.0, 4.0]
    with pytest.raises(ValueError):
        bench.latency_stats([])


def test_paired_ratios_hand_values():
    r = bench.paired_ratios([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])  # per-round ratios 2, 2, 3
    assert r == {"median": 2.0, "p10": 2.0, "p90": pytest.approx(2.8)}


def test_foreign_share_hand_values(monkeypatch):
    monkeypatch.setattr(bench, "available_cores", lambda: 2)
    # 3 CPU-s used machine-wide, 1 of them by us, over 2 s on 2 cores: others took half the machine.
    assert bench.foreign_share(3.0, 1.0, 2.0) == pytest.approx(0.5)
    assert bench.foreign_share(0.98, 1.0, 1.0) == 0.0  # tick rounding never gives a negative share


def test_machine_cpu_counts_our_own_work():
    m0, o0 = bench.machine_cpu_s(), bench.own_cpu_s()
    x = 0
    while bench.own_cpu_s() - o0 < 0.3:  # burn 0.3 CPU-s
        x += 1
    m1, o1 = bench.machine_cpu_s(), bench.own_cpu_s()
    assert m1 - m0 >= (o1 - o0) - 0.05  # the machine-wide count includes this process (10 ms ticks)


def test_agreement_passes_within_and_fails_beyond_tolerance():
    ref = {"technical": np.array([[1.0, -2.0, 4.0]]), "aesthetic": np.array([[0.5, 0.25, -1.0]])}
    same = bench.agreement(ref, ref, tol=1e-6)
    assert same["ok"] and same["worst"] == 0.0
    off = {"technical": ref["technical"] + np.array([[0.0, 0.0, 0.01]]), "aesthetic": ref["aesthetic"]}
    res = bench.agreement(off, ref, tol=1e-3)
    assert res["max_rel_error"]["technical"] == pytest.approx(0.01 / 4.0)  # max|Δ| / max|ref|
    assert res["max_rel_error"]["aesthetic"] == 0.0
    assert not res["ok"]
    assert bench.agreement(off, ref, tol=3e-3)["ok"]


def test_agreement_nan_and_mismatches():
    ref = {"fragments": np.ones((1, 2, 2, 2))}
    bad = {"fragments": np.full((1, 2, 2, 2), np.nan)}
    res = bench.agreement(bad, ref, tol=1.0)
    assert not res["ok"] and math.isinf(res["worst"])
    with pytest.raises(ValueError, match="shape"):
        bench.agreement({"fragments": np.ones((1, 2, 2, 3))}, ref, tol=1.0)
    with pytest.raises(ValueError, match="branches differ"):
        bench.agreement({"technical": np.ones((1, 2, 2, 2))}, ref, tol=1.0)


def test_cli_rejects_unknown_branch():
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "fastvqa_m", "--branch", "technical"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--torch-compile"])


# ----------------------------------------------------------------------------------------------- end to end


def _convnextv2_femto_macs_flops(frames: int, size: int = 224) -> int:
    """Multiply-add FLOPs (2 per MAC) of DOVER-Mobile's technical branch: convs, linears and its head.

    Independent of XLA: stem (2,4,4) 3→48, per block a depthwise (k,7,7) conv (k = 3 for the middle block
    of each "131" triple) and the two 4× pointwise layers, (1,2,2) downsamplers, head 384→32→1.
    """
    dims, depths = (48, 96, 192, 384), (2, 2, 6, 2)
    t, hw = frames // 2, size // 4
    flops = 2 * t * hw * hw * dims[0] * (2 * 4 * 4 * 3)
    for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
        if i:
            hw //= 2
            flops += 2 * t * hw * hw * d * 4 * dims[i - 1]
        for j in range(n):
            k = 3 if j % 3 == 1 else 1
            flops += 2 * t * hw * hw * (d * k * 49 + 8 * d * d)
    return flops + 2 * t * hw * hw * (384 * 32 + 32)


def test_bench_writes_report_and_png(tmp_path, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["--model", "dover_mobile", "--branch", "technical", "--frames", "4", "--batch", "2"]
    argv += ["--repeats", "3", "--warmup", "1", "--quiet", "1.0", "--out", str(out), "--png", str(png)]
    assert bench.main(argv) == 0
    rep = json.loads(out.read_text())
    assert rep["schema"] == bench.SCHEMA
    assert rep["config"]["input_shapes"] == {"technical": [2, 1, 4, 224, 224, 3]}
    assert rep["config"]["input_dtype"] == "uint8"
    for key in ("cpu_model", "cores_available", "device_kind", "versions"):
        assert key in rep["host"]
    assert rep["host"]["versions"]["jax"] and len(rep["load_average"]["before"]) == 3
    assert rep["agreement"] is None and rep["speedup"] == {} and rep["speedup_paired"] == {}
    r = rep["results"]["jax"]
    lat = r["latency"]
    assert lat["n"] == 3 and len(lat["runs_s"]) == 3
    assert 0 < lat["min_s"] <= lat["p10_s"] <= lat["median_s"] <= lat["p90_s"] <= lat["max_s"]
    assert r["videos_per_s"] == pytest.approx(2 / lat["median_s"])
    assert len(r["foreign_cpu_share"]) == 3 and all(0 <= f <= 1.05 for f in r["foreign_cpu_share"])
    assert rep["quiet"]["rounds"] == [0, 1, 2] and r["latency_quiet"]["runs_s"] == lat["runs_s"]  # --quiet 1.0
    assert r["compile_s"] > 0 and r["peak_memory"]["peak_bytes"] > 0
    # XLA counts the multiply-adds plus elementwise work (norms, GELU, GRN): at least the MAC count, and
    # not much more. A MAC-vs-FLOP mix-up (×0.5) or a wrong program (other branch, other T) falls outside.
    macs = 2 * _convnextv2_femto_macs_flops(4)  # batch 2
    assert macs <= rep["flops_per_step"] <= 1.35 * macs
    assert r["achieved_tflops"] == pytest.approx(rep["flops_per_step"] / lat["median_s"] / 1e12)
    assert r["utilisation"] == pytest.approx(r["achieved_tflops"] / rep["peak_tflops"])
    assert rep["matmul_ceiling_tflops"] > 0
    img = matplotlib.image.imread(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img.ndim == 3 and img.shape[0] > 100
    assert "videos/s" in capsys.readouterr().out
    # The speed study's markdown table reads the report (and skips other JSON, e.g. parity results).
    (tmp_path / "parity.json").write_text("[]")
    table = bench.study_table(tmp_path).splitlines()
    assert len(table) == 3 and table[2].startswith("| dover_mobile | infer | float32 | 2 | cpu |")
    assert f"{lat['median_s']:.4f}" in table[2]


# ----------------------------------------------------------------------------------------------- torch side
# torch is an optional extra (pyproject `torch`); like the other torch comparisons these need it installed.


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


_FAKE_EVALUATOR = """
import torch
from torch import nn
from timm.models.layers import DropPath, trunc_normal_
from timm.models.registry import register_model
from torchvision.ops import roi_align
from einops import rearrange
import clip

from .head import Head


class Backbone(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.proj = nn.Conv3d(3, width, (2, 4, 4), stride=(2, 4, 4))
        self.drop_path = DropPath(0.1)
        self.use_checkpoint = True
        trunc_normal_(self.proj.weight, std=0.02)
        self.pretrained_keys = len(torch.hub.load_state_dict_from_url("https://example.invalid/w.pth")["model"])

    def forward(self, x, multi=False, layer=-1):
        assert multi is False and layer == -1
        x = rearrange(self.proj(x), "n c d h w -> n d h w c")
        return rearrange(x, "n d h w c -> n c d h w")


class DOVER(nn.Module):
    def __init__(self, backbone=None, vqa_head=None, divide_head=False):
        super().__init__()
        print("the official code prints while building")
        self.multi, self.layer = False, -1
        for key in backbone:
            setattr(self, key + "_backbone", Backbone(vqa_head["in_channels"]))
            if divide_head:
                setattr(self, key + "_head", Head(**vqa_head))
        if not divide_head:
            self.vqa_head = Head(**vqa_head)


@register_model
def unused():
    return roi_align
"""

_FAKE_HEAD = """
from torch import nn


class Head(nn.Module):
    def __init__(self, in_channels, hidden_channels):
        super().__init__()
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, 1)
        self.fc_last = nn.Conv3d(hidden_channels, 1, 1)

    def forward(self, x):
        return self.fc_last(nn.functional.gelu(self.fc_hid(x)))
"""

_FAKE_YML = """
name: fake
model:
    type: DOVER
    args:
        backbone:
            technical:
                type: a
            aesthetic:
                type: b
        divide_head: true
        vqa_head:
            in_channels: 8
            hidden_channels: 4
"""


@pytest.fixture
def fake_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "DOVER"
    files = {
        "dover/__init__.py": "raise ImportError('the top-level package (datasets) must not be imported')\n",
        "dover/models/__init__.py": "from .evaluator import DOVER\n",
        "dover/models/evaluator.py": _FAKE_EVALUATOR,
        "dover/models/head.py": _FAKE_HEAD,
        "dover.yml": _FAKE_YML,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def test_build_official_model_from_checkout(torch, fake_checkout, capsys):
    missing_before = tr.missing_modules()
    net = tr.build_official_model(fake_checkout, "dover")
    assert "prints while building" not in capsys.readouterr().out and not net.training
    assert net.technical_backbone.pretrained_keys == 0  # the download was answered by an empty checkpoint
    assert net.technical_head.fc_hid.out_channels == 4  # yml args reached the constructor
    for name in missing_before:  # stand-ins leave no trace once the import is done
        assert name not in sys.modules and importlib.util.find_spec(name) is None
    assert tr.set_grad_checkpointing(net, False) == 2
    assert not net.aesthetic_backbone.use_checkpoint

    # Loading: strict, numpy in; a missing key is named.
    sd = {k: v.detach().numpy() * 0 + 0.01 for k, v in net.state_dict().items()}
    tr.load_weights(net, sd)
    assert float(net.technical_head.fc_last.bias.detach()) == pytest.approx(0.01)
    sd.pop("aesthetic_head.fc_last.bias")
    with pytest.raises(tr.TorchReferenceError, match=r"aesthetic_head\.fc_last\.bias"):
        tr.load_weights(net, sd)

    # Forward per branch, channels-last numpy in: the head map of the backbone output, channel squeezed.
    rng = np.random.default_rng(0)
    views = {b: rng.standard_normal((2, 4, 16, 16, 3)).astype(np.float32) for b in ("technical", "aesthetic")}
    xs = tr.to_torch_views(views)
    assert xs["technical"].shape == (2, 3, 4, 16, 16)
    with torch.inference_mode():
        maps = tr.branch_forward(net, xs)
        x = torch.from_numpy(views["aesthetic"]).permute(0, 4, 1, 2, 3)
        w = net.aesthetic_backbone.proj
        feat = torch.nn.functional.conv3d(x, w.weight, w.bias, stride=(2, 4, 4))
        expect = net.aesthetic_head(feat)[:, 0]
    assert maps["aesthetic"].shape == (2, 2, 4, 4)
    np.testing.assert_allclose(maps["aesthetic"].numpy(), expect.numpy(), rtol=1e-6, atol=1e-7)


def test_checkout_errors_name_the_path(torch, tmp_path, fake_checkout):
    with pytest.raises(tr.TorchReferenceError, match=r"git clone https://github.com/VQAssessment/DOVER"):
        tr.build_official_model(tmp_path / "nowhere", "dover")
    with pytest.raises(tr.TorchReferenceError, match=r"dover-mobile\.yml"):
        tr.build_official_model(fake_checkout, "dover_mobile")
    with pytest.raises(tr.TorchReferenceError, match="FAST-VQA-and-FasterVQA"):
        tr.build_official_model(fake_checkout, "fastvqa_b")


def _load_shim(folder: Path, rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, folder / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stand_ins_behave(torch, tmp_path):
    tr.write_shims(tmp_path, ["timm", "torchvision", "einops"])
    layers = _load_shim(tmp_path, "timm/models/layers.py", "shim_layers")
    torch.manual_seed(0)
    x = torch.randn(4000, 3, 5)
    dp = layers.DropPath(0.5).eval()
    assert torch.equal(dp(x), x)
    y = dp.train()(x)
    kept = (y != 0).flatten(1).all(dim=1)
    dropped = (y == 0).flatten(1).all(dim=1)
    assert bool((kept | dropped).all())  # whole samples are dropped or kept
    assert torch.allclose(y[kept], x[kept] / 0.5)  # kept samples rescaled by 1/keep
    assert abs(kept.float().mean().item() - 0.5) < 0.05  # binomial sd 0.008

    t = torch.empty(200_000)
    layers.trunc_normal_(t, std=0.02)
    assert abs(t.std().item() - 0.02) < 0.001
    layers.trunc_normal_(t, std=1.0, a=-1.0, b=1.0)
    assert t.min() >= -1.0 and t.max() <= 1.0

    einops = _load_shim(tmp_path, "einops/__init__.py", "shim_einops")
    z = torch.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6)
    assert torch.equal(einops.rearrange(z, "b c d h w -> b d h w c"), z.permute(0, 2, 3, 4, 1))
    with pytest.raises(NotImplementedError):
        einops.rearrange(z, "b c d h w -> b (c d) h w")

    ops = _load_shim(tmp_path, "torchvision/ops.py", "shim_ops")
    with pytest.raises(NotImplementedError, match="torchvision"):
        ops.roi_align(z, None, 1)


def _rank_by_loops(p: np.ndarray, y: np.ndarray) -> float:
    n = len(p)
    r = [[max((p[i] - p[j]) * np.sign(y[j] - y[i]), 0.0) for j in range(n)] for i in range(n)]
    return sum(map(sum, r)) / n / (n - 1) / (1 + max(map(max, r)))


def test_torch_loss_matches_closed_form(torch):
    rng = np.random.default_rng(3)
    y = rng.uniform(1, 5, 7)
    preds = {"technical": rng.standard_normal(7), "aesthetic": y + 0.3 * rng.standard_normal(7)}
    got = tr.torch_vqa_loss({k: torch.from_numpy(v) for k, v in preds.items()}, torch.from_numpy(y))
    expect = 0.0
    for p in preds.values():
        rho = scipy.stats.pearsonr(p, y)[0]
        # z-scored vectors: mean((p̂−ŷ)²) = 2 − 2ρ and mean((ρp̂−ŷ)²) = 1 − ρ², so plcc = (3 − 2ρ − ρ²)/8.
        expect += (3 - 2 * rho - rho**2) / 8 + 0.3 * _rank_by_loops(p, y)
    assert float(got) == pytest.approx(expect, rel=1e-6)
