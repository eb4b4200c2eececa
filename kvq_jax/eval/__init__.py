"""Evaluation: VQA correlation metrics (SciPy), the NTIRE 2024 KVQ challenge score and the Codalab submission
writer.

CLIs: ``python -m kvq_jax.eval.score`` and ``python -m kvq_jax.eval.submit``.
"""

from kvq_jax.eval.challenge import (
    ChallengeScore,
    Pair,
    Pairs,
    ScoreInputError,
    bootstrap_ci,
    challenge_score,
    logistic_scores,
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
    rmse,
    srocc,
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
    "logistic_scores",
    "map_predictions",
    "pair_accuracy",
    "plcc",
    "read_pairs",
    "read_scores_csv",
    "read_video_names",
    "rmse",
    "srocc",
    "write_submission",
]


def __getattr__(name: str):
    """Lazy ``write_submission``: an eager import would make ``python -m kvq_jax.eval.submit`` warn."""
    if name == "write_submission":
        from kvq_jax.eval.submit import write_submission

        return write_submission
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
