"""What the online scorer accepts: every check of a scoring request, each raising
:class:`InvalidRequestError` (a ``ValueError``) that names the problem, before any read."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from summarizer.store.errors import InvalidUserIdError
from summarizer.store.read import validate_user_ids


class InvalidRequestError(ValueError):
    """A scoring request is malformed; the message names the problem."""


def check_user_id(user_id: Any) -> int:
    if isinstance(user_id, bool) or not isinstance(user_id, int | np.integer):
        raise InvalidRequestError(f"user id must be a non-negative integer, got {user_id!r}")
    try:
        return int(validate_user_ids(user_id)[0])
    except InvalidUserIdError as exc:
        raise InvalidRequestError(str(exc)) from exc


INT64_MAX = np.iinfo(np.int64).max


def check_item_ids(item_ids: Any, max_candidates: int) -> torch.Tensor:
    try:
        arr = np.asarray(item_ids)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise InvalidRequestError(
            f"candidate item ids must be a flat list of integers ({exc})"
        ) from exc
    if arr.ndim != 1:
        raise InvalidRequestError(f"candidate item ids must be a flat list, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidRequestError("the candidate list is empty")
    if arr.size > max_candidates:
        raise InvalidRequestError(f"{arr.size} candidates; at most {max_candidates} per request")
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise InvalidRequestError(
            f"candidate item ids must be integers, got {arr.dtype} (e.g. {arr[0]!r})"
        )
    if arr.min() < 0:
        raise InvalidRequestError(f"candidate item ids must be non-negative, got {arr.min()}")
    if arr.dtype == np.uint64 and arr.max() > INT64_MAX:  # the cast below would wrap it
        raise InvalidRequestError(
            f"candidate item ids must be at most 2^63-1 (int64), got {int(arr.max())}"
        )
    return torch.from_numpy(arr.astype(np.int64))


def check_features(features: Any, m: int, width: int) -> torch.Tensor | None:
    """Candidate features (m, width) float32 for a model that takes ``width`` of them."""
    if features is None:
        return None
    try:
        arr = np.asarray(features, dtype=np.float32)
    except (ValueError, TypeError) as exc:  # strings, ragged rows, objects
        raise InvalidRequestError(
            f"candidate features must be an ({m}, {width}) array of numbers ({exc})"
        ) from exc
    if arr.shape != (m, width):
        raise InvalidRequestError(
            f"candidate features must have shape ({m}, {width}) for this model, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InvalidRequestError("candidate features contain NaN or Inf")
    return torch.from_numpy(arr)
