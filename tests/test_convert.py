"""The converter is strict and reads the official file layouts (flat, wrapped, `module.`-prefixed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from kvq_jax.convert import (
    CheckpointReadError,
    ConversionError,
    convert_state_dict,
    read_state_dict,
    to_state_dict,
)
from kvq_jax.models import abstract_model, get_model, with_state
from kvq_jax.models.swin3d import relative_position_index
from kvq_jax.parity import manifest_weights
from kvq_jax.weights import load_model, weights_allclose

PARITY = Path(__file__).parent / "fixtures" / "parity"


@pytest.fixture(scope="module")
def mobile():
    manifest = json.loads((PARITY / "dover/manifest_dover-mobile.json").read_text())
    return abstract_model("dover_mobile"), manifest_weights(manifest, seed=0)


@pytest.fixture(scope="module")
def fast_m():
    manifest = json.loads((PARITY / "fastvqa/manifest_fast-m.json").read_text())
    return abstract_model("fastvqa_m"), manifest, manifest_weights(manifest, seed=0)


def _flat(state):
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def test_layouts_follow_pytorch(mobile):
    model, sd = mobile
    flat = _flat(convert_state_dict(sd, model))
    # Linear (out, in) → (in, out); Conv3d (O, I, T, H, W) → (T, H, W, I, O); 1×1×1 head conv → Dense.
    k = "technical_backbone.stages.0.0.pwconv1.weight"
    np.testing.assert_array_equal(flat["technical_backbone.stages.0.0.pwconv1.kernel"], sd[k].T)
    k = "technical_backbone.downsample_layers.0.0.weight"
    np.testing.assert_array_equal(
        flat["technical_backbone.downsample_layers.0.0.kernel"], np.transpose(sd[k], (2, 3, 4, 1, 0))
    )
    k = "technical_head.fc_hid.weight"
    np.testing.assert_array_equal(flat["technical_head.fc_hid.kernel"], sd[k][:, :, 0, 0, 0].T)
    k = "aesthetic_backbone.stages.1.1.grn.gamma"
    np.testing.assert_array_equal(flat["aesthetic_backbone.stages.1.1.grn.gamma"], sd[k].reshape(-1))
    np.testing.assert_array_equal(flat["aesthetic_backbone.norm.scale"], sd["aesthetic_backbone.norm.weight"])


def test_every_official_key_is_used_and_round_trips(fast_m):
    model, manifest, sd = fast_m
    back = to_state_dict(with_state(model, convert_state_dict(sd, model)))
    assert set(back) == {e["key"] for e in manifest}  # weights and index buffers, nothing more or less
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_missing_key_is_named(mobile):
    model, sd = mobile
    sd = dict(sd)
    del sd["technical_backbone.stages.2.3.pwconv2.bias"]
    with pytest.raises(ConversionError, match=r"1 missing keys:\n  technical_backbone\.stages\.2\.3\.pwconv2\.bias"):
        convert_state_dict(sd, model)


def test_unexpected_key_is_named(mobile):
    model, sd = mobile
    sd = dict(sd, **{"technical_backbone.extra_layer.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected keys:\n  technical_backbone\.extra_layer\.weight"):
        convert_state_dict(sd, model)


def test_wrong_shape_is_named_with_both_shapes(mobile):
    model, sd = mobile
    sd = dict(sd)
    sd["aesthetic_head.fc_hid.weight"] = np.zeros((32, 300, 1, 1, 1), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_state_dict(sd, model)
    msg = str(e.value)
    assert "aesthetic_head.fc_hid.weight: checkpoint (32, 300, 1, 1, 1), model expects (32, 384, 1, 1, 1)" in msg


def test_all_problems_reported_at_once(mobile):
    model, sd = mobile
    sd = dict(sd)
    del sd["technical_backbone.norm.bias"]
    sd["bogus"] = np.zeros(1, np.float32)
    with pytest.raises(ConversionError) as e:
        convert_state_dict(sd, model)
    assert "technical_backbone.norm.bias" in str(e.value) and "bogus" in str(e.value)


def test_index_buffers_recomputed_and_compared(fast_m):
    model, _, sd = fast_m
    key = "fragments_backbone.layers.1.blocks.0.attn.relative_position_index"
    # Hand-computed entries of the Video-Swin index for FAST-VQA-M's (4, 4, 4) windows:
    # idx = (Δd+3)·7·7 + (Δh+3)·7 + (Δw+3); token 0 = (0,0,0), token 63 = (3,3,3).
    ref = relative_position_index((4, 4, 4))
    assert ref.shape == (64, 64)
    assert ref[0, 0] == 3 * 49 + 3 * 7 + 3
    assert ref[0, 63] == 0 and ref[63, 0] == 6 * 49 + 6 * 7 + 6
    good = dict(sd, **{key: ref.astype(np.int64)})
    convert_state_dict(good, model)  # a matching buffer is accepted and consumed
    bad = dict(sd, **{key: np.flip(ref, 0).copy()})
    with pytest.raises(ConversionError, match="index buffers that differ:\n  " + key.replace(".", r"\.")):
        convert_state_dict(bad, model)


def test_wrapped_module_prefixed_pth_converts(tmp_path, mobile):
    torch = pytest.importorskip("torch")
    model, sd = mobile
    wrapped = {
        "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in sd.items()},
        "validation_results": {"srcc": 0.9},
    }
    path = tmp_path / "DOVER-Mobile_finetuned.pth"
    torch.save(wrapped, path)
    read = read_state_dict(path)
    assert set(read) == set(sd)
    a = with_state(model, convert_state_dict(read, model))
    b = with_state(model, convert_state_dict(sd, model))
    assert weights_allclose(a, b)


def test_pth_with_pickled_objects_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    import fractions

    path = tmp_path / "evil.pth"
    # Any non-allow-listed global must be refused by weights_only loading, never executed.
    torch.save({"state_dict": {"w": torch.zeros(2)}, "obj": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointReadError, match=r"evil\.pth"):
        read_state_dict(path)


def test_npz_and_safetensors_read(tmp_path, mobile):
    from safetensors.numpy import save_file

    _, sd = mobile
    small = {k: v for k, v in list(sd.items())[:5]}
    np.savez(tmp_path / "w.npz", **small)
    save_file(small, str(tmp_path / "w.safetensors"))
    for name in ("w.npz", "w.safetensors"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(small)
        for k in small:
            np.testing.assert_array_equal(got[k], small[k])
    with pytest.raises(CheckpointReadError, match="no such checkpoint"):
        read_state_dict(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointReadError, match=r"junk\.pth"):
        read_state_dict(tmp_path / "junk.pth")


def test_convert_cli_writes_orbax_checkpoint_that_loads(tmp_path, mobile):
    _, sd = mobile
    src = tmp_path / "DOVER-Mobile.npz"
    np.savez(src, **sd)
    out = tmp_path / "converted"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvq_jax.convert",
            "--model",
            "dover_mobile",
            "--src",
            str(src),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "kvq_jax.json").read_text())["model"] == "dover_mobile"
    loaded = load_model("dover_mobile", out)
    direct = with_state(abstract_model("dover_mobile"), convert_state_dict(sd, abstract_model("dover_mobile")))
    assert weights_allclose(loaded, direct)
    assert not weights_allclose(loaded, get_model("dover_mobile", seed=5))
    # The wrong architecture is refused by name.
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvq_jax.convert",
            "--model",
            "fastvqa_m",
            "--src",
            str(src),
            "--out",
            str(out / "x"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "missing keys" in bad.stderr and "fragments_backbone" in bad.stderr


def test_torchscript_archives_and_several_files(tmp_path):
    """OpenAI's CLIP files are TorchScript archives in float16: read their state_dict as float32; several files
    merge into one state_dict, and a key in two of them is refused with both names."""
    torch = pytest.importorskip("torch")
    from kvq_jax.convert import read_state_dicts

    net = torch.jit.script(torch.nn.Linear(3, 2).half())
    torch.jit.save(net, str(tmp_path / "ViT-tiny.pt"))
    got = read_state_dict(tmp_path / "ViT-tiny.pt")
    assert set(got) == {"weight", "bias"} and got["weight"].dtype == np.float32
    np.testing.assert_array_equal(got["weight"], net.weight.detach().float().numpy())
    np.savez(tmp_path / "other.npz", head=np.ones(2, np.float32))
    merged = read_state_dicts([tmp_path / "ViT-tiny.pt", tmp_path / "other.npz"])
    assert set(merged) == {"weight", "bias", "head"}
    np.savez(tmp_path / "clash.npz", bias=np.zeros(2, np.float32))
    with pytest.raises(CheckpointReadError, match=r"'bias' is in both .*ViT-tiny\.pt and .*clash\.npz"):
        read_state_dicts([tmp_path / "ViT-tiny.pt", tmp_path / "clash.npz"])
