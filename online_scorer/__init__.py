"""The online side: fetch a user's summary tokens by id, score candidates in one pass."""

from online_scorer.requests import InvalidRequestError
from online_scorer.scorer import (
    ModelVersionError,
    OnlineScorer,
    ScoreResult,
    Summary,
)

__all__ = ["InvalidRequestError", "ModelVersionError", "OnlineScorer", "ScoreResult", "Summary"]
