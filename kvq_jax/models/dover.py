"""DOVER (ICCV 2023) and DOVER-Mobile: a technical (fragments) and an aesthetic (resized frames) branch.

Official code: VQAssessment/DOVER (`dover.yml`, `dover-mobile.yml`, whose data sections are identical). The
technical branch is Swin3D-T with GRPB (DOVER-Mobile: ConvNeXt-V2 femto), the aesthetic branch an inflated
ConvNeXt-T (femto); each has its own VQA head. The released checkpoints are flat state_dicts whose keys are
our module paths, so no key filter is needed.
"""

from __future__ import annotations

from kvq_jax.data.views import ViewSpec
from kvq_jax.models.convnext3d import convnext_femto, convnext_tiny
from kvq_jax.models.fusion import SigmoidRescale
from kvq_jax.models.multibranch import MultiBranchConfig, MultiBranchVQA, parity_arrays
from kvq_jax.models.registry import Branch, ModelSpec, OfficialCode, OfficialWeights, register
from kvq_jax.models.swin3d import SwinConfig

_RELEASES = "https://github.com/QualityAssessment/DOVER/releases/download"
_REPO = "https://github.com/VQAssessment/DOVER"

# Test-time views of dover.yml: 3 clips of 32 fragment frames (stride 2), 32 frames resized to 224².
BRANCHES = (
    Branch("technical", ViewSpec("fragments", clip_len=32, num_clips=3, aligned=32)),
    Branch("aesthetic", ViewSpec("resize", clip_len=32, t_frag=32)),
)
# DOVER's `fuse_results` (evaluate_a_set_of_videos.py; the parity fixtures hold its output): the two branch
# means standardised, weighted 0.6104 / 0.3896.
FUSION = SigmoidRescale((("technical", 0.1107, 0.07355, 0.6104), ("aesthetic", -0.08285, 0.03774, 0.3896)))


def _dover(name: str, arch: MultiBranchConfig, weights: str, config: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="dover",
        branches=BRANCHES,
        build=MultiBranchVQA,
        arch=arch,
        fusion=FUSION,
        weights=OfficialWeights(f"{_RELEASES}/{weights}"),
        parity=parity_arrays,
        official=OfficialCode(_REPO, "dover", config),
    )


register(
    _dover(
        "dover",
        MultiBranchConfig((("technical", SwinConfig()), ("aesthetic", convnext_tiny())), 64, shared_head=False),
        "v0.1.0/DOVER.pth",
        "dover.yml",
    ),
    default=True,
)
register(
    _dover(
        "dover_mobile",
        MultiBranchConfig((("technical", convnext_femto()), ("aesthetic", convnext_femto())), 32, shared_head=False),
        "v0.5.0/DOVER-Mobile.pth",
        "dover-mobile.yml",
    )
)
