"""Evaluation: VQA correlation metrics (SciPy reference + jitted JAX), the NTIRE 2024 KVQ challenge score
and the Codalab submission writer.

CLIs: ``python -m kvq_jax.eval.score`` and ``python -m kvq_jax.eval.submit``.
"""

from kvq_jax.eval.challenge import (
    ChallengeScore,
    Pair,
    Pairs,
    ScoreInputError,
    bootstrap_ci,
    challenge_score,
    pair_accuracy,
    read_pairs,
    read_scores_csv,
    read_video_names,
)
from kvq_jax.eval.metrics import (
    correlations,
    fit_logistic4,
    krocc,
    linear_rescale,
    logistic4,
    map_predictions,
    plcc,
    plcc_jax,
    rankdata_jax,
    rmse,
    srocc,
    srocc_jax,
)

__all__ = [
    "ChallengeScore",
    "Pair",
    "Pairs",
    "ScoreInputError",
    "bootstrap_ci",
    "challenge_score",
    "correlations",
    "fit_logistic4",
    "krocc",
    "linear_rescale",
    "logistic4",
    "map_predictions",
    "pair_accuracy",
    "plcc",
    "plcc_jax",
    "rankdata_jax",
    "read_pairs",
    "read_scores_csv",
    "read_video_names",
    "rmse",
    "srocc",
    "srocc_jax",
    "write_submission",
]


def __getattr__(name: str):
    """Lazy ``write_submission``: an eager import would make ``python -m kvq_jax.eval.submit`` warn."""
    if name == "write_submission":
        from kvq_jax.eval.submit import write_submission

        return write_submission
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
