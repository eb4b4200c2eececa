"""The model registry: a model's whole identity in one `ModelSpec`, registered by its family module.

Modelled on timm (`register_model`, a `pretrained_cfg` and a `checkpoint_filter_fn` beside each model) and
big_vision (a model is a module plus its config). A family module (`models/dover.py`, `models/fastvqa.py`, …)
builds its specs and calls :func:`register`; everything else — training, scoring, export, conversion, parity,
the benchmark and the PyTorch reference — reads the spec and never names a model.

A family's module class is built as ``spec.build(spec, dtype=…, rngs=…, **options)`` and follows one protocol:
``model(views, rngs=None) -> {branch: score map (N, …)}``, where ``views`` maps branch names to normalised
float clips ``(N, T, H, W, 3)`` (see `kvq_jax.scoring`, which turns uint8 views into per-video scores).
`rngs` (a ``dropout`` stream) is given in train mode only. The model's state is its `nnx.Param` s plus any
other variables (BatchNorm statistics), which travel together through checkpoints, weights and export.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvq_jax.data.views import IMAGENET_255, PixelNorm, ViewSpec
from kvq_jax.models.fusion import Fusion
from kvq_jax.models.init import init_variables

Dtype = jnp.dtype | type
StateDict = dict[str, np.ndarray]
FAMILIES_ENV = "KVQ_JAX_FAMILIES"


@dataclasses.dataclass(frozen=True)
class Branch:
    """One input view of a model and the score it yields: name, how the video is sampled, how pixels are scaled."""

    name: str
    view: ViewSpec
    pixels: PixelNorm = IMAGENET_255


@dataclasses.dataclass(frozen=True)
class OfficialWeights:
    """Where the released checkpoint of a model is published; ``also`` lists further files whose keys are merged
    with it (COVER: OpenAI's ViT-L-14.pt, which holds the CLIP tower that COVER.pth lacks)."""

    url: str
    sha256: str | None = None
    also: tuple[OfficialWeights, ...] = ()
    filename: str | None = None  # the file's name, where the URL does not end with it (Google Drive, Box links)

    @property
    def file(self) -> str:
        return self.filename or self.url.rsplit("/", 1)[-1]

    @property
    def files(self) -> tuple[str, ...]:
        """The file names of every part, this one first."""
        return (self.file, *(w.file for w in self.also))


@dataclasses.dataclass(frozen=True)
class OfficialCode:
    """The official PyTorch implementation: its repository, the package folder holding `models/`, and the yml
    (relative to the checkout) whose ``model`` section builds this model. ``requires`` names the packages its
    construction needs beyond torch and kvq_jax's stand-ins, ``build_note`` anything else it needs (downloads)."""

    repo: str
    package: str
    config: str
    requires: tuple[str, ...] = ()
    build_note: str = ""

    @property
    def config_stem(self) -> str:
        return os.path.basename(self.config).removesuffix(".yml")

    @property
    def clone_hint(self) -> str:
        return f"git clone {self.repo}"


def torch_hub_file(name: str) -> str | None:
    """A file torch.hub downloaded (``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch`` by default), or None: where
    the families' ``pretrained`` find the ImageNet / Kinetics weights torchvision and pytorchvideo cache."""
    home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    path = os.path.join(home, "hub", "checkpoints", name)
    return path if os.path.isfile(path) else None


@dataclasses.dataclass(frozen=True)
class AuxLoss:
    """A training term a family adds to the score losses (KSVQE: a contrastive loss over its distortion tokens).

    ``fn(features, labels) -> scalar``: ``features`` is what the model returns beside its score maps when called
    with ``return_features=True``, ``labels`` the batch fields named in ``labels`` (record labels such as
    ``dis_label``, which the training pipeline then carries). ``weight`` is its weight in the total loss unless
    a config's ``loss.aux_weights[name]`` says otherwise.
    """

    name: str
    fn: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]
    labels: tuple[str, ...] = ()
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that defines a registered model. Frozen and hashable: models keep it as static graph data.

    ``arch`` is the family's own architecture config, read by ``build``. ``outputs`` names the model's scores
    when they are not one per branch (e.g. one score from a head over concatenated branch features); by default
    each branch yields its own score. ``fusion`` is the normalised overall score of the released weights (None
    when the official code reports none). ``checkpoint_filter`` maps an official state_dict (all its files merged)
    onto this model's layout before the strict conversion (timm's checkpoint_filter_fn). ``parity`` computes, from
    a parity case's inputs (normalised, in the fixture's layout) and its config, the arrays the official code's
    fixture holds. ``pretrained`` lists the files of the pretrained backbone weights a fresh model starts from,
    where they are installed (ImageNet / Kinetics weights; see `kvq_jax.weights.load_pretrained`), [] if none is.
    ``aux_losses`` are training terms of the family's own (see `AuxLoss`); its model must then accept
    ``return_features=True``.
    """

    name: str
    family: str
    branches: tuple[Branch, ...]
    build: Callable[..., nnx.Module]
    arch: Any = None
    outputs: tuple[str, ...] = ()
    fusion: Fusion | None = None
    weights: OfficialWeights | None = None
    official: OfficialCode | None = None
    checkpoint_filter: Callable[[StateDict], StateDict] | None = None
    parity: Callable[[nnx.Module, Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    pretrained: Callable[[], list[str]] | None = None
    aux_losses: tuple[AuxLoss, ...] = ()

    @property
    def branch_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.branches)

    @property
    def score_names(self) -> tuple[str, ...]:
        """The scores the model returns (one per branch unless ``outputs`` says otherwise)."""
        return self.outputs or self.branch_names

    def scores_of(self, branches: tuple[str, ...]) -> tuple[str, ...]:
        """The scores the model returns when given only ``branches`` (a model with its own ``outputs`` needs all)."""
        if not self.outputs:
            return branches
        if set(branches) != set(self.branch_names):
            raise ValueError(f"{self.name} scores {self.outputs} from all of {self.branch_names}, not {branches}")
        return self.outputs

    def branch(self, name: str) -> Branch:
        for b in self.branches:
            if b.name == name:
                return b
        raise KeyError(f"{self.name} has no branch {name!r}; it has {self.branch_names}")

    @property
    def views(self) -> dict[str, ViewSpec]:
        """The test-time views, branch → ViewSpec (a fresh dict)."""
        return {b.name: b.view for b in self.branches}

    @property
    def train_views(self) -> dict[str, ViewSpec]:
        """The training form: every view with one clip (DOVER's transfer_learning.py forces the technical view to
        one clip; the FAST-VQA training ymls use ``num_clips: 1`` with otherwise identical views)."""
        return {b.name: dataclasses.replace(b.view, num_clips=1) for b in self.branches}


_REGISTRY: dict[str, ModelSpec] = {}
_DEFAULT: list[str] = []


def register(spec: ModelSpec, *, default: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry (``default``: the model the CLIs use when none is named)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered (family {_REGISTRY[spec.name].family})")
    if len(set(spec.branch_names)) != len(spec.branches) or not spec.branches:
        raise ValueError(f"model {spec.name!r}: branch names must be unique and non-empty, got {spec.branch_names}")
    if spec.official is not None:
        clash = [s.name for s in _REGISTRY.values() if s.official and s.official.config == spec.official.config]
        if clash:
            raise ValueError(f"model {spec.name!r}: official config {spec.official.config} is already {clash[0]}'s")
    _REGISTRY[spec.name] = spec
    if default:
        _DEFAULT[:] = [spec.name]
    return spec


def load_plugins() -> None:
    """Import the family modules named in ``$KVQ_JAX_FAMILIES`` (comma-separated): a family of your own
    registers itself on import and is then usable by every tool, in every process of a run."""
    for name in filter(None, (n.strip() for n in os.environ.get(FAMILIES_ENV, "").split(","))):
        importlib.import_module(name)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(_REGISTRY)}") from None


def model_names(family: str | None = None) -> tuple[str, ...]:
    """Registered models (of one family), in registration order."""
    return tuple(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def default_model() -> str:
    return _DEFAULT[0] if _DEFAULT else next(iter(_REGISTRY))


def spec_for_official_config(config: str) -> ModelSpec:
    """The model built from an official yml (matched by its file name without ``.yml``)."""
    stem = os.path.basename(config).removesuffix(".yml")
    for spec in _REGISTRY.values():
        if spec.official is not None and spec.official.config_stem == stem:
            return spec
    raise ValueError(f"no registered model is built from the official config {config!r}")


# ------------------------------------------------------------------------------------------------ building


def abstract_model(
    spec: ModelSpec | str, *, dtype: Dtype = jnp.float32, drop_path_rate: float | None = None
) -> nnx.Module:
    """The model with `jax.ShapeDtypeStruct` variables: structure only, built in about a second."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    options = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    return nnx.eval_shape(lambda: spec.build(spec, dtype=dtype, rngs=nnx.Rngs(0), **options))


def with_state(abstract: nnx.Module, state: nnx.State) -> nnx.Module:
    """Materialise an abstract model with concrete variables (e.g. from a checkpoint or a converted file)."""
    return nnx.merge(nnx.graphdef(abstract), state)


def get_model(
    spec: ModelSpec | str, *, dtype: Dtype = jnp.float32, seed: int = 0, drop_path_rate: float | None = None
) -> nnx.Module:
    """A registered model with fresh float32 variables (see `init.py`) and `dtype` compute."""
    abstract = abstract_model(spec, dtype=dtype, drop_path_rate=drop_path_rate)
    return nnx.merge(nnx.graphdef(abstract), init_variables(nnx.state(abstract), seed))


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graph, params, other variables): what training updates by gradient, and what it updates otherwise."""
    return nnx.split(model, nnx.Param, ...)
