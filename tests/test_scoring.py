"""The one scoring function: per-branch pixel statistics, clips averaged, branches with their own clip counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tiny  # noqa: F401  (registers tiny_dover, a DOVER-shaped model)

from kvq_jax.models import get_model, get_spec
from kvq_jax.scoring import map_scores, score_views


def test_branches_with_different_clip_counts_are_averaged_each_over_its_own():
    """DOVER's test views: 3 technical clips, 1 aesthetic clip per video; a branch score is its map's mean over its
    own clips, which must equal running the clips one by one."""
    model = get_model("tiny_dover", seed=1)
    model.eval()
    rng = np.random.default_rng(0)
    views = {
        "technical": rng.integers(0, 256, (2, 3, 4, 64, 64, 3), dtype=np.uint8),
        "aesthetic": rng.integers(0, 256, (2, 1, 4, 64, 64, 3), dtype=np.uint8),
    }
    scores, maps = jax.jit(lambda v: score_views(model, v))(views)
    assert maps["technical"].shape[:2] == (2, 3) and maps["aesthetic"].shape[:2] == (2, 1)
    spec = get_spec("tiny_dover")
    for b, v in views.items():
        pixels = spec.branch(b).pixels
        per_clip = []
        for c in range(v.shape[1]):  # each clip alone, normalised here with the published ImageNet numbers
            x = (v[:, c : c + 1].astype(np.float32) - np.float32([123.675, 116.28, 103.53])) / np.float32(
                [58.395, 57.12, 57.375]
            )
            per_clip.append(np.asarray(map_scores(model, {b: jnp.asarray(x)})[0][b]))
        np.testing.assert_allclose(scores[b], np.mean(per_clip, axis=0), rtol=2e-5, atol=1e-6)
        assert pixels.mean == (123.675, 116.28, 103.53)
