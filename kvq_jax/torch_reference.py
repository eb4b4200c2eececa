"""Build the *official* PyTorch model from a user-provided checkout, for speed and agreement checks.

The official repositories (VQAssessment/DOVER, VQAssessment/FAST-VQA-and-FasterVQA) are never vendored: the
user clones one and passes its folder. Their model code has three obstacles on a plain CPU install, which
this module removes without touching the checkout:

* Imports of packages that have no part in the VQA forward pass: ``timm`` (``DropPath``, ``trunc_normal_``,
  ``register_model``), ``torchvision.ops`` (RoI ops of unused heads), ``clip`` (an unused X-CLIP backbone)
  and ``einops.rearrange`` (axis permutations only). When one is not installed, a small stand-in written
  here is put on ``sys.path`` for the duration of the import only, then taken off again.
* The package's top-level ``__init__`` imports its datasets (decord, scikit-video, torchvision). We import
  only its ``models`` subpackage, under a private alias, so none of that runs.
* The ConvNeXt constructors download ImageNet weights that are overwritten anyway.
  ``torch.hub.load_state_dict_from_url`` is replaced during construction by a function that returns an
  empty checkpoint, so nothing is fetched and the random init stays until our weights are loaded.

The model is built from the checkout's own yml model arguments (``model.type`` and ``model.args``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import sys
import tempfile
import textwrap
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kvq_jax.models import get_spec


class TorchReferenceError(RuntimeError):
    """The official checkout cannot be imported, built or loaded; the message says which file or key."""


# ----------------------------------------------------------------------------------------------- stand-ins

# Each stand-in implements only what the official model files use, in our own words.
_SHIMS: dict[str, dict[str, str]] = {
    "timm": {
        "timm/__init__.py": '"""Stand-in for timm (kvq_jax.torch_reference): what the VQA models use."""\n',
        "timm/models/__init__.py": "",
        "timm/models/layers.py": '''
            """DropPath and trunc_normal_ as the official VQA backbones use them."""
            import torch
            from torch import nn


            def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
                return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


            class DropPath(nn.Module):
                """Stochastic depth: zero whole samples with probability p in training, rescale the rest."""

                def __init__(self, drop_prob=0.0, scale_by_keep=True):
                    super().__init__()
                    self.drop_prob = float(drop_prob or 0.0)
                    self.scale_by_keep = scale_by_keep

                def forward(self, x):
                    if not self.training or self.drop_prob == 0.0:
                        return x
                    keep = 1.0 - self.drop_prob
                    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
                    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
                    return x * (mask / keep if self.scale_by_keep else mask)
        ''',
        "timm/models/registry.py": """
            def register_model(fn):
                return fn
        """,
    },
    "torchvision": {
        "torchvision/__init__.py": '"""Stand-in for torchvision (kvq_jax.torch_reference)."""\n',
        "torchvision/ops.py": '''
            """RoI ops are imported by the official head module but used by no VQA model."""


            def _unavailable(*args, **kwargs):
                raise NotImplementedError("stand-in torchvision.ops: install torchvision for RoI ops")


            roi_align = roi_pool = _unavailable
        ''',
    },
    "clip": {
        "clip/__init__.py": '"""Stand-in for OpenAI CLIP: imported by the unused X-CLIP backbone only."""\n',
    },
    "einops": {
        "einops/__init__.py": '''
            """Stand-in for einops.rearrange, limited to pure axis permutations ("b c d h w -> b d h w c")."""


            def rearrange(tensor, pattern, **axes_lengths):
                left, sep, right = pattern.partition("->")
                src, dst = left.split(), right.split()
                permutation = sep and sorted(src) == sorted(dst) and len(set(src)) == len(src)
                if not permutation or axes_lengths or "(" in pattern:
                    raise NotImplementedError(f"stand-in einops handles permutations only, not {pattern!r}")
                if len(src) != tensor.ndim:
                    raise ValueError(f"pattern {pattern!r} names {len(src)} axes, tensor has {tensor.ndim}")
                return tensor.permute(*[src.index(name) for name in dst])
        ''',
    },
}


def missing_modules(names: tuple[str, ...] = tuple(_SHIMS)) -> list[str]:
    """Which of the optional packages the official models import are not installed."""
    return [n for n in names if importlib.util.find_spec(n) is None]


def write_shims(folder: Path, names: list[str]) -> None:
    """Write the stand-in packages for ``names`` under ``folder``."""
    for name in names:
        for rel, text in _SHIMS[name].items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"))


@contextlib.contextmanager
def shimmed_imports(names: list[str] | None = None) -> Iterator[list[str]]:
    """Make stand-ins for the missing optional packages importable inside the block; yields their names.

    On exit the folder leaves ``sys.path`` and the stand-in modules leave ``sys.modules``, so later code that
    imports e.g. ``timm`` finds the real package or fails as usual. Modules imported inside the block keep
    the objects they bound.
    """
    names = missing_modules() if names is None else names
    with tempfile.TemporaryDirectory(prefix="kvq_shims_") as tmp:
        write_shims(Path(tmp), names)
        sys.path.insert(0, tmp)
        importlib.invalidate_caches()
        try:
            yield names
        finally:
            sys.path.remove(tmp)
            for key in [k for k, m in sys.modules.items() if str(getattr(m, "__file__", "")).startswith(tmp)]:
                del sys.modules[key]


@contextlib.contextmanager
def no_weight_downloads() -> Iterator[list[str]]:
    """Replace ``torch.hub.load_state_dict_from_url`` by an empty checkpoint; yields the URLs asked for."""
    import torch.hub

    asked: list[str] = []

    def empty_checkpoint(url: str, *args: Any, **kwargs: Any) -> dict[str, dict]:
        asked.append(url)
        return {"model": {}, "state_dict": {}}

    original = torch.hub.load_state_dict_from_url
    torch.hub.load_state_dict_from_url = empty_checkpoint
    try:
        yield asked
    finally:
        torch.hub.load_state_dict_from_url = original


# ------------------------------------------------------------------------------------------- import / build


def official_config(checkout: Path, model: str) -> tuple[str, dict[str, Any]]:
    """(package folder name, the yml's ``model`` section) for a kvq_jax model name (its spec's `official`)."""
    official = get_spec(model).official
    if official is None:
        raise TorchReferenceError(f"no official PyTorch code is known for model {model!r}")
    package, rel = official.package, official.config
    checkout = Path(checkout)
    models_init = checkout / package / "models" / "__init__.py"
    if not models_init.is_file():
        raise TorchReferenceError(
            f"{checkout} does not look like the official checkout for {model!r}: {models_init} is missing "
            f"(get it with `{official.clone_hint}` and pass the clone's folder)"
        )
    yml = checkout / rel
    if not yml.is_file():
        raise TorchReferenceError(f"{yml}: official config for {model!r} not found in the checkout")
    with open(yml) as f:
        cfg = yaml.safe_load(f)
    section = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(section, dict) or "type" not in section:
        raise TorchReferenceError(f"{yml}: no 'model: {{type, args}}' section")
    return package, section


def import_official_models(checkout: Path, package: str) -> types.ModuleType:
    """Import ``<checkout>/<package>/models`` without running ``<package>/__init__.py``.

    The package is registered under a private alias derived from the checkout path, so the relative imports
    inside ``models`` work and an installed package of the same name is neither used nor replaced.
    """
    root = (Path(checkout) / package).resolve()
    alias = f"_kvq_official_{package}_{hashlib.sha1(str(root).encode()).hexdigest()[:10]}"
    if f"{alias}.models" in sys.modules:
        return sys.modules[f"{alias}.models"]
    parent = types.ModuleType(alias)
    parent.__path__ = [str(root)]
    parent.__file__ = str(root / "__init__.py")
    sys.modules[alias] = parent
    try:
        with shimmed_imports():
            return importlib.import_module(f"{alias}.models")
    except ImportError as e:
        sys.modules.pop(alias, None)
        raise TorchReferenceError(
            f"importing the official models from {root / 'models'} failed: {e}. "
            f"Install the missing package (the official code needs torch, numpy and einops)."
        ) from e


def build_official_model(checkout: Path, model: str) -> Any:
    """The official ``torch.nn.Module`` for ``model``, built from the checkout's yml, in eval mode.

    Its console output during construction is captured, and weight downloads are disabled (the weights are
    random until ``load_weights``).
    """
    package, section = official_config(checkout, model)
    official = get_spec(model).official
    note = f" It also needs {official.build_note}." if official.build_note else ""
    missing = [name for name in official.requires if importlib.util.find_spec(name) is None]
    if missing:
        raise TorchReferenceError(
            f"the official {model!r} model cannot be built here: it needs the packages {missing}.{note}"
        )
    module = import_official_models(checkout, package)
    cls = getattr(module, section["type"], None)
    if cls is None:
        raise TorchReferenceError(f"{checkout}: the official models have no class {section['type']!r}")
    try:
        with no_weight_downloads(), contextlib.redirect_stdout(io.StringIO()):
            net = cls(**(section.get("args") or {}))
    except Exception as e:  # the official constructors fetch files and fail in many ways offline
        reason = f"{type(e).__name__}: {e}"
        raise TorchReferenceError(f"building the official {section['type']} failed ({reason}).{note}") from e
    return net.eval()


def load_weights(net: Any, state_dict: Mapping[str, np.ndarray]) -> None:
    """Strictly load an official-layout numpy state_dict (e.g. ``kvq_jax.convert.to_state_dict``)."""
    import torch

    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state_dict.items()}
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise TorchReferenceError(f"the official model rejected the weights: {e}") from e


def set_grad_checkpointing(net: Any, enabled: bool) -> int:
    """Switch the official Swin blocks' ``use_checkpoint`` (recompute in backward); returns blocks changed."""
    count = 0
    for m in net.modules():
        if hasattr(m, "use_checkpoint"):
            m.use_checkpoint = enabled
            count += 1
    return count


def to_torch_views(views: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Channels-last clips (N, T, H, W, 3) → the official layout (N, 3, T, H, W), float32 tensors."""
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, 1), np.float32)) for k, v in views.items()}


def branch_forward(net: Any, views: Mapping[str, Any]) -> dict[str, Any]:
    """Score map (N, T', H', W') per branch, as the official ``forward`` computes it for each view key.

    The official evaluators call ``<branch>_backbone(x, multi=..., layer=...)`` then ``<branch>_head`` or the
    shared ``vqa_head``; their own ``forward`` then sums the branches, so we run that loop ourselves.
    """
    out = {}
    for branch, x in views.items():
        backbone = getattr(net, f"{branch}_backbone", None)
        if backbone is None:
            raise TorchReferenceError(f"the official model has no {branch}_backbone")
        head = getattr(net, f"{branch}_head", None) or net.vqa_head
        feat = backbone(x, multi=getattr(net, "multi", False), layer=getattr(net, "layer", -1))
        out[branch] = head(feat)[:, 0]
    return out


def torch_vqa_loss(preds: Mapping[str, Any], y: Any, plcc_weight: float = 1.0, rank_weight: float = 0.3) -> Any:
    """Σ over branches of ``plcc_weight·plcc + rank_weight·rank`` (the DOVER/FAST-VQA objective), in torch.

    Same formula as ``kvq_jax.train.losses.vqa_loss`` (population std + 1e-8; rank scale not detached; the
    rank normaliser guarded at ``max(B·(B−1), 1)``), so both frameworks' training steps do the same work.
    """
    import torch

    total = y.new_zeros(())
    n = y.shape[0]
    yz = (y - y.mean()) / (y.std(correction=0) + 1e-8)
    for p in preds.values():
        pz = (p - p.mean()) / (p.std(correction=0) + 1e-8)
        rho = (pz * yz).mean()
        plcc = (((pz - yz) ** 2).mean() / 4 + ((rho * pz - yz) ** 2).mean() / 4) / 2
        r = torch.relu((p[:, None] - p[None, :]) * torch.sign(y[None, :] - y[:, None]))
        rank = r.sum() / max(n * (n - 1), 1) / (1 + r.max())
        total = total + plcc_weight * plcc + rank_weight * rank
    return total
