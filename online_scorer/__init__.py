"""The online side: fetch a user's summary tokens by id, score candidates in one pass."""

from online_scorer.scorer import (
    InvalidRequestError,
    ModelVersionError,
    OnlineScorer,
    ScoreResult,
    Summary,
)

__all__ = ["InvalidRequestError", "ModelVersionError", "OnlineScorer", "ScoreResult", "Summary"]
