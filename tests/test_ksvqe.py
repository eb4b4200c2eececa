"""KSVQE's own pieces against transcriptions of the official code (KVQ repo, models/backbones/KSVQE_model.py,
patchnet.py, CLIP_backbone.py), torch ops where they exist, and its checkpoint filter.

The whole forward is checked against the official outputs by the parity fixtures (tests/test_parity.py).
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from videos import clip, encode_video

from kvq_jax import predict
from kvq_jax.convert import ConversionError, convert_state_dict
from kvq_jax.models import abstract_model, get_spec
from kvq_jax.models.ksvqe import (
    KSVQEConfig,
    RegionSelection,
    checkpoint_filter,
    distortion_contrastive_loss,
    key_frames,
    nearest_index,
    perturbed_top1,
)
from kvq_jax.train import data, optim, state, trainer


def official_key_frames(t: int) -> tuple[list[int], list[int]]:
    """``obtain_keyframes``, transcribed: the key frames x[:, 0], x[:, t//4-1], … and its group loop."""
    keys = [list(range(t))[i] for i in (0, t // 4 - 1, t // 2 - 1, t * 3 // 4 - 1)]
    groups, group_id = [], 0
    for j in range(t):
        if j == t // 4 - 1:
            group_id += 1
        elif j == t // 2 - 1:
            group_id += 1
        elif j == t * 3 // 4 - 1:
            group_id += 1
        groups.append(group_id)
    return keys, groups


@pytest.mark.parametrize("t", [2, 3, 4, 5, 8, 32, 96])
def test_key_frames_and_groups_follow_the_official_loop(t):
    keys, groups = key_frames(t)
    want_keys, want_groups = official_key_frames(t)
    assert keys.tolist() == want_keys and groups.tolist() == want_groups
    if t == 8:
        assert keys.tolist() == [0, 1, 3, 5] and groups.tolist() == [0, 1, 1, 2, 2, 3, 3, 3]


@pytest.mark.parametrize(("src", "dst"), [(7, 9), (3, 5), (7, 7), (4, 8), (6, 9)])
def test_nearest_index_is_torch_interpolate_with_a_scale_factor(src, dst):
    x = torch.arange(src, dtype=torch.float32).reshape(1, 1, src, 1).expand(1, 1, src, src)
    ref = F.interpolate(x, scale_factor=(dst / src, dst / src), mode="nearest")[0, 0, :, 0]
    assert nearest_index(dst, src).tolist() == ref.long().tolist()


def torch_perturbed_top1(scores: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """``PerturbedTopKFunction`` (k = 1) with the noise given instead of drawn: forward and the official backward."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            perturbed = x[:, None, :] + noise * sigma
            indices = torch.sort(torch.topk(perturbed, k=1, dim=-1, sorted=False).indices, dim=-1).values
            ctx.perturbed_output = F.one_hot(indices, num_classes=x.shape[1]).float()
            return ctx.perturbed_output.mean(dim=1)

        @staticmethod
        def backward(ctx, grad_output):
            expected = torch.einsum("bnkd,bnd->bkd", ctx.perturbed_output, noise) / noise.shape[1] / sigma
            return torch.einsum("bkd,bkd->bd", grad_output, expected)

    return Fn.apply(scores)[:, 0]


@pytest.mark.parametrize("samples", [1, 3])
def test_perturbed_top1_forward_and_gradient_match_the_official_function(samples):
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(6, 9)).astype(np.float32)
    noise = rng.standard_normal((6, samples, 9)).astype(np.float32)
    weights = rng.standard_normal((6, 9)).astype(np.float32)
    ours, grad = jax.value_and_grad(lambda s: (perturbed_top1(s, jnp.asarray(noise), 0.5) * weights).sum())(
        jnp.asarray(scores)
    )
    x = torch.tensor(scores, requires_grad=True)
    ref = (torch_perturbed_top1(x, torch.tensor(noise), 0.5) * torch.tensor(weights)).sum()
    ref.backward()
    np.testing.assert_allclose(float(ours), float(ref.detach()), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert np.count_nonzero(np.asarray(grad)) > 0


def test_region_selection_eval_copies_the_top_window_and_train_sends_the_official_gradient():
    """9×9 grid of 4-px fragments, 7×7 windows: eval copies the best window of each frame's key frame exactly;
    training picks the perturbed best and its gradient reaches the scores as ⟨g, window⟩·noise/σ."""
    cfg = KSVQEConfig(fragment_px=4)
    qrs = RegionSelection(cfg)
    rng = np.random.default_rng(1)
    fragment = jnp.asarray(rng.standard_normal((1, 8, 36, 36, 3)).astype(np.float32))
    cls_attn = jnp.asarray(rng.uniform(size=(1, 4, 49)).astype(np.float32))
    _, groups = key_frames(8)
    qrs.deterministic = True
    out = qrs(fragment, cls_attn, groups, None)
    scores, index = np.asarray(out["scores"]), np.asarray(out["index"])
    assert scores.shape == (1, 4, 9) and index.tolist() == [scores[0].argmax(axis=-1).tolist()]
    assert np.allclose(scores.min(axis=-1), 0) and np.allclose(scores.max(axis=-1), 1, atol=1e-3)
    for t, g in enumerate(groups):
        i, j = divmod(int(index[0, g]), 3)
        np.testing.assert_array_equal(out["regions"][0, t], fragment[0, t, 4 * i : 4 * i + 28, 4 * j : 4 * j + 28])
    # the window scores: the map nearest-resized 7 → 9, averaged over each 7×7 window, min-max normalised
    up = np.asarray(cls_attn).reshape(4, 7, 7)[:, nearest_index(9, 7)][:, :, nearest_index(9, 7)]
    raw = np.stack([up[:, i : i + 7, j : j + 7].mean(axis=(1, 2)) for i in range(3) for j in range(3)], -1)
    want = (raw - raw.min(-1, keepdims=True)) / (raw.max(-1, keepdims=True) - raw.min(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(scores[0], want, atol=1e-5)

    qrs.deterministic = False
    with pytest.raises(ValueError, match="pass rngs"):
        qrs(fragment, cls_attn, groups, None)
    cotangent = jnp.asarray(rng.standard_normal((1, 8, 28, 28, 3)).astype(np.float32))

    def loss(attn: jax.Array) -> jax.Array:
        return (qrs(fragment, attn, groups, nnx.Rngs(dropout=7))["regions"] * cotangent).sum()

    grad = np.asarray(jax.grad(loss)(cls_attn))
    chosen = np.asarray(qrs(fragment, cls_attn, groups, nnx.Rngs(dropout=7))["index"])[0]
    noise = np.asarray(jax.random.normal(nnx.Rngs(dropout=7).dropout(), (4, 1, 9)))[:, 0]
    assert chosen.tolist() == (scores[0] + 0.5 * noise).argmax(-1).tolist()  # the perturbed top-1

    def window_scores(attn: jax.Array) -> jax.Array:
        return qrs.region_scores(attn.reshape(4, 49), (9, 9))[0]

    inner = np.zeros((4, 9), np.float32)  # ⟨g, window⟩ summed over each key frame's group, chosen windows only
    for t, g in enumerate(groups):
        i, j = divmod(int(chosen[g]), 3)
        window = fragment[0, t, 4 * i : 4 * i + 28, 4 * j : 4 * j + 28]
        inner[g, chosen[g]] += float((cotangent[0, t] * window).sum())
    _, vjp = jax.vjp(window_scores, cls_attn)
    (want_grad,) = vjp(jnp.asarray(inner * noise / 0.5))
    np.testing.assert_allclose(grad, np.asarray(want_grad), rtol=1e-4, atol=1e-6)
    assert np.abs(grad).max() > 0


def official_contrastive(tokens: np.ndarray, labels: np.ndarray) -> float:
    """``distortion_contrastive_supervised``, transcribed with its dense mask arithmetic."""
    x = torch.tensor(tokens)
    dis_label = torch.tensor(labels)
    b, t, g, _ = x.shape
    x = x.view(b * t * g, -1)
    dist_label = (dis_label.unsqueeze(1).repeat(1, b) == dis_label).to(torch.float32)
    dist_labels = dist_label.repeat(1, t * g).view(b * t * g, -1)
    z = F.normalize(x, p=2, dim=1)
    sim = torch.mm(z, z.T) / 0.1
    positive_mask = torch.mm(dist_labels, dist_labels.T).fill_diagonal_(0)
    zero_diag = torch.ones((b * t * g, b * t * g)).fill_diagonal_(0)
    denominator = torch.sum(torch.exp(sim) * zero_diag, dim=1)
    loss = torch.mean(torch.log(denominator) - torch.sum(sim * positive_mask, dim=1) / torch.sum(positive_mask, dim=1))
    return float(loss)


@pytest.mark.parametrize("labels", [[0], [0, 1, 0], [2, 2, 5, 5]])
def test_contrastive_loss_matches_the_official_function(labels):
    rng = np.random.default_rng(len(labels))
    tokens = rng.standard_normal((len(labels), 3, 5, 16)).astype(np.float32)
    ours = float(distortion_contrastive_loss(jnp.asarray(tokens), jnp.asarray(labels)))
    np.testing.assert_allclose(ours, official_contrastive(tokens, np.asarray(labels)), rtol=1e-5)
    if len(set(labels)) > 1:  # the labels matter: one class for all gives another loss
        one_class = float(distortion_contrastive_loss(jnp.asarray(tokens), jnp.zeros(len(labels), jnp.int32)))
        assert abs(one_class - ours) > 1e-3


def _fake_files(abstract: nnx.Module) -> dict[str, dict[str, np.ndarray]]:
    """The official files' keys for this model, each weight filled with its own index (so a mix-up shows)."""
    from kvq_jax.convert.torch_layout import _expected_torch_shape, _is_head_conv, _torch_key

    own = {}
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(abstract))):
        shape = _expected_torch_shape(str(path[-1]), tuple(var.shape), _is_head_conv(path))
        own[_torch_key(path)] = np.full(shape, i, np.float32)
    encoder = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    files: dict[str, dict[str, np.ndarray]] = {"ksvqe": {}, "clip": {}, "contrique": {}, "k400": {}}
    for key, value in own.items():
        rest = key.removeprefix("KSVQE_backbone.")
        if rest.startswith("CLIP_tool.visual."):
            files["clip"][rest.removeprefix("CLIP_tool.")] = value
        elif rest.startswith("distortion_tool."):
            part, sub = rest.removeprefix("distortion_tool.").split(".", 1)
            if part == "encoder":
                head, tail = sub.split(".", 1)
                sub = f"{encoder[head]}.{tail}"
            files["contrique"][f"{part}.{sub}"] = value
        elif "fragment_position" in rest:
            continue  # load_swin fills them from the Kinetics tables
        elif rest.startswith(("patch_embed.", "layers.", "norm.")):
            files["k400"][f"backbone.{rest}"] = value
        else:
            files["ksvqe"][key] = value
    return files


def test_checkpoint_filter_merges_the_official_files_strictly():
    abstract = abstract_model("ksvqe")
    files = _fake_files(abstract)
    files["clip"] |= {"token_embedding.weight": np.zeros((3, 2), np.float32), "logit_scale": np.zeros(())}
    files["k400"]["cls_head.fc_cls.weight"] = np.zeros((400, 768), np.float32)
    merged = {k: v for f in files.values() for k, v in f.items()}
    state = dict(nnx.to_flat_state(convert_state_dict(merged, abstract)))
    backbone = ("KSVQE_backbone",)
    rpb = state[(*backbone, "layers", 2, "blocks", 1, "attn", "relative_position_bias_table")][...]
    fpb = state[(*backbone, "layers", 2, "blocks", 1, "attn", "fragment_position_bias_table")][...]
    np.testing.assert_array_equal(rpb, fpb)  # load_swin: the Kinetics tables fill the fragment tables
    assert (*backbone, "layers", 3, "blocks", 0, "attn", "fragment_position_bias_table") not in state
    conv1 = state[(*backbone, "distortion_tool", "encoder", "conv1", "kernel")][...]
    np.testing.assert_array_equal(conv1, np.moveaxis(files["contrique"]["encoder.0.weight"], (0, 1), (-1, -2)))
    # the KSVQE checkpoint's own copy of a weight wins over the component file's (loaded last, officially)
    key = "KSVQE_backbone.CLIP_tool.visual.ln_pre.weight"
    own = {**merged, key: np.full((768,), -1.0, np.float32)}
    state = dict(nnx.to_flat_state(convert_state_dict(own, abstract)))
    assert float(state[(*backbone, "CLIP_tool", "visual", "ln_pre", "scale")][...][0]) == -1.0
    # strict: an unknown key is named, a missing one too
    with pytest.raises(ConversionError, match=re.escape("KSVQE_backbone.other_mod.0.weight")):
        convert_state_dict({**merged, "KSVQE_backbone.other_mod.0.weight": np.zeros(1)}, abstract)
    del merged["KSVQE_backbone.a1"]
    with pytest.raises(ConversionError, match=re.escape("KSVQE_backbone.a1")):
        convert_state_dict(merged, abstract)


def test_checkpoint_filter_leaves_the_native_layout_alone():
    sd = {"KSVQE_backbone.distortion_tool.encoder.4.0.conv1.weight": 1, "KSVQE_head.fc_hid.bias": 2}
    assert checkpoint_filter(sd) == {
        "KSVQE_backbone.distortion_tool.encoder.layer1.0.conv1.weight": 1,
        "KSVQE_head.fc_hid.bias": 2,
    }
    assert checkpoint_filter({"KSVQE_backbone.distortion_tool.encoder.layer1.0.conv1.weight": 1}) == {
        "KSVQE_backbone.distortion_tool.encoder.layer1.0.conv1.weight": 1
    }


def test_spec_declares_one_score_and_the_contrastive_term():
    spec = get_spec("ksvqe")
    assert spec.score_names == ("quality",) and spec.branch_names == ("fragment", "resize_video")
    (term,) = spec.aux_losses
    assert (term.name, term.labels, term.weight) == ("dis_contra", ("dis_label",), 0.3)
    assert spec.weights.files == (
        "KSVQE_techniqual_pretrainonLSVQ.pth",
        "ViT-B-16.pt",
        "CONTRIQUE_checkpoint25.tar",
        "swin_tiny_patch244_window877_kinetics400_1k.pth",
    )


def _flat(tree: nnx.State) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(tree)}


@pytest.mark.parametrize("contrique_bn", ["train", pytest.param("eval", marks=pytest.mark.slow)])
def test_train_step_adds_the_contrastive_term_and_keeps_contrique_batchnorm_training(contrique_bn):
    """Two real train steps of configs/ksvqe.py:quick on random 4-frame views: the loss is plcc + 0.3 · the
    contrastive term over the batch's dis_label; the frozen CLIP tower, CONTRIQUE and Swin keep their params, the
    adapters, modulation and head move; CONTRIQUE's BatchNorm statistics move (official: train mode) unless
    ``train_batch_norm`` is emptied (eval mode)."""
    cfg = _quick_config()
    if contrique_bn == "eval":
        cfg.train_batch_norm = ()
    graph, _, params, stats = state.build_model(cfg)
    tx = optim.make_optimizer(state.optimizer_config(cfg, 10), params)
    assert [(t.name, w) for t, w in data.aux_losses(cfg)] == [("dis_contra", 0.3)]
    step = jax.jit(trainer.train_step_for(cfg, graph, tx, params))
    views = data.train_view_specs(cfg)
    rng = np.random.default_rng(0)
    batch = {b: rng.integers(0, 256, (4, *v.shape), dtype=np.uint8) for b, v in views.items()}
    assert batch["fragment"].shape == (4, 1, 4, 160, 160, 3) and batch["resize_video"].shape == (4, 1, 4, 48, 48, 3)
    batch |= {
        "mos": np.asarray([1.0, 2.0, 3.5, 4.0], np.float32),
        "source_id": np.arange(4, dtype=np.int32),
        "dis_label": np.asarray([0, 1, 1, 2], np.int32),
    }
    before = {"params": _flat(params), "stats": _flat(stats)}
    first, _ = step(state.init_state(params, stats, tx, ema=True, frozen=state.frozen_mask(cfg, params)), batch)
    new, aux = step(first, batch)  # the warm-up's first learning rate is 0: the second step moves the weights
    aux = jax.device_get(aux)
    assert np.isfinite(float(aux["loss"])) and float(aux["aux/dis_contra"]) > 0
    np.testing.assert_allclose(aux["loss"], aux["quality/plcc"] + 0.3 * aux["aux/dis_contra"], rtol=1e-6)
    after = {"params": _flat(new["params"]), "stats": _flat(new["stats"])}

    def changed(kind: str, prefix: str) -> bool:
        keys = [k for k in before[kind] if k.startswith(prefix)]
        assert keys, prefix
        return any(not np.array_equal(after[kind][k], before[kind][k]) for k in keys)

    for frozen in ("CLIP_tool/visual/", "distortion_tool/", "layers/", "patch_embed/"):
        assert not changed("params", f"KSVQE_backbone/{frozen}")
    for trained in ("CLIP_tool/adapter_layer/", "dist_adapter/", "semantic_cross/", "distortion_self/", "a1"):
        assert changed("params", f"KSVQE_backbone/{trained}")
    assert changed("params", "KSVQE_head/")
    assert changed("stats", "KSVQE_backbone/distortion_tool/") == (contrique_bn == "train")


def _quick_config():
    path = Path(__file__).parent.parent / "configs" / "ksvqe.py"
    module_spec = importlib.util.spec_from_file_location("ksvqe_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config("quick")


def test_score_cli_scores_a_video_with_stacked_clips(tmp_path):
    """`kvq-jax score --model ksvqe` end to end on a real file, small views: ``--clips 2`` reaches both views (the
    resized one takes the fragment view's frames), which go through as one 8-frame clip; one ``quality`` score."""
    video = encode_video(tmp_path / "clip.mp4", clip(24, 96, 128))
    out = tmp_path / "scores.csv"
    small = ["clip_len=4", "frame_interval=2", "fragment.aligned=4", "fragment.fragments_h=5"]
    small += ["fragment.fragments_w=5", "resize_video.size_h=48", "resize_video.size_w=48"]
    args = [str(video), "--model", "ksvqe", "--random-weights", "--clips", "2", "--out", str(out)]
    args += [f"--view={v}" for v in small] + ["--compile-cache", "none", "--no-progress"]
    assert predict.main(args) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert set(row) == {"filename", "quality", "fused", "error"} and not row["error"] and not row["fused"]
    assert np.isfinite(float(row["quality"]))
