"""FAST-VQA (ECCV 2022) and FasterVQA (TPAMI 2023): one `fragments` Swin3D branch with one shared `vqa_head`.

Official code: VQAssessment/FAST-VQA-and-FasterVQA (`options/fast/*.yml`). Its Swin scales the attention windows
with the input size (relative to 32×224×224: `adaptive_window`), unlike DOVER's copy. FasterVQA, -MT and -MS
share FAST-VQA-B's architecture and the FasterVQA checkpoint; they differ in views and in the (mean, std) of
the sigmoid rescale of `vqa.py`, whose table the constants below come from.
"""

from __future__ import annotations

from kvq_jax.data.views import ViewSpec
from kvq_jax.models.fusion import SigmoidRescale
from kvq_jax.models.multibranch import MultiBranchConfig, MultiBranchVQA, parity_arrays
from kvq_jax.models.registry import Branch, ModelSpec, OfficialCode, OfficialWeights, register
from kvq_jax.models.swin3d import SwinConfig

_RELEASES = "https://github.com/TimothyHTimothy/FAST-VQA/releases/download/v2.0.0"
_REPO = "https://github.com/VQAssessment/FAST-VQA-and-FasterVQA"
_SWIN_B = SwinConfig(adaptive_window=True)
_SWIN_M = SwinConfig(window_size=(4, 4, 4), frag_biases=(False,) * 4, adaptive_window=True)


def _fast(name: str, swin: SwinConfig, view: ViewSpec, mean: float, std: float, weights: str, yml: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="fastvqa",
        branches=(Branch("fragments", view),),
        build=MultiBranchVQA,
        arch=MultiBranchConfig((("fragments", swin),), head_hidden=64, shared_head=True),
        fusion=SigmoidRescale((("fragments", mean, std, 1.0),)),
        weights=OfficialWeights(f"{_RELEASES}/{weights}"),
        parity=parity_arrays,
        official=OfficialCode(_REPO, "fastvqa", f"options/fast/{yml}"),
    )


# Test-time views, checked against options/fast/{fast-b,f3dvqa-b,fastervqa-mt,fastervqa-ms,fast-m}.yml.
for _spec in (
    _fast(
        "fastvqa_b",
        _SWIN_B,
        ViewSpec("fragments", clip_len=32, num_clips=4, aligned=32),
        -0.110198185,
        0.04178565,
        "FAST_VQA_B_1_4.pth",
        "fast-b.yml",
    ),
    _fast(
        "fastervqa",
        _SWIN_B,
        ViewSpec("fragments", clip_len=32, t_frag=8, aligned=8),
        0.14759505,
        0.03613452,
        "FAST_VQA_3D_1_1.pth",
        "f3dvqa-b.yml",
    ),
    _fast(
        "fastervqa_mt",
        _SWIN_B,
        ViewSpec("fragments", clip_len=16, t_frag=4, aligned=8),
        0.14699507,
        0.036453716,
        "FAST_VQA_3D_1_1.pth",  # FasterVQA's weights, run with shorter clips
        "fastervqa-mt.yml",
    ),
    _fast(
        "fastervqa_ms",
        _SWIN_B,
        ViewSpec("fragments", fragments_h=5, fragments_w=5, clip_len=32, t_frag=8, aligned=8),
        0.15218826,
        0.03230298,
        "FAST_VQA_3D_1_1.pth",  # ... and with a 5x5 fragment grid
        "fastervqa-ms.yml",
    ),
    _fast(
        "fastvqa_m",
        _SWIN_M,
        ViewSpec("fragments", fragments_h=4, fragments_w=4, clip_len=16, num_clips=4, aligned=8),
        0.023889644,
        0.030781006,
        "FAST_VQA_M_1_4.pth",
        "fast-m.yml",
    ),
):
    register(_spec)
