"""A small Python client of `vista serve`.

    with ScorerClient("http://127.0.0.1:8080") as client:
        result = client.score(42, [7, 8, 9])          # a ScoreResult, as OnlineScorer.score
        results = client.score_batch([(42, [7, 8]), (43, [9])])
        summary = client.summary(42)                   # a dict (None: no summary)

Bad input raises :class:`InvalidRequestError` with the service's message (a 4xx);
a store or model that is not available, or a service that cannot be reached, raises
:class:`ServiceError` (a 5xx, or no answer). One HTTP connection is kept alive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import orjson

from online_scorer.requests import InvalidRequestError
from online_scorer.scorer import ScoreResult
from summarizer.store import SummaryStatus


class ServiceError(RuntimeError):
    """The service answered with a 5xx, or not at all; ``status`` is None for no answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def request_json(user_id: Any, candidate_ids: Any, features: Any = None) -> dict[str, Any]:
    """One request as the service takes it (numpy arrays become lists)."""
    out: dict[str, Any] = {
        "user_id": int(user_id) if isinstance(user_id, np.integer) else user_id,
        "candidate_ids": _plain(candidate_ids),
    }
    if features is not None:
        out["features"] = _plain(features)
    return out


def _plain(values: Any) -> Any:
    """An array as orjson writes it: numeric numpy arrays as they are (fast), anything else
    as nested lists (the service names what is wrong with it)."""
    arr = values if isinstance(values, np.ndarray) else None
    if arr is None:
        try:
            arr = np.asarray(values)
        except (ValueError, TypeError):  # ragged
            return values
    if arr.dtype.kind in "iuf" and arr.flags.c_contiguous:
        return arr
    return arr.tolist()


def result_from_json(obj: dict[str, Any]) -> ScoreResult:
    return ScoreResult(
        user_id=int(obj["user_id"]),
        scores=np.asarray(obj["scores"], dtype=np.float32),
        status=SummaryStatus(obj["status"]),
        table_version=int(obj["table_version"]),
        model_version=str(obj["model_version"]),
        memory_tokens=int(obj["memory_tokens"]),
        memory_skipped=bool(obj["memory_skipped"]),
    )


class ScorerClient:
    """Speaks to one `vista serve` address."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ScorerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            if body is None:
                response = self._http.request(method, path)
            else:
                content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
                response = self._http.request(
                    method, path, content=content, headers={"content-type": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise ServiceError(f"{self.url}{path}: {exc}") from exc
        if response.status_code >= 500:
            raise ServiceError(
                f"{self.url}{path}: {response.status_code} {_message(response)}",
                response.status_code,
            )
        return response

    def score(self, user_id: Any, candidate_ids: Any, features: Any = None) -> ScoreResult:
        """One user's candidates, scored by the service (probabilities in request order)."""
        response = self._call("POST", "/v1/score", request_json(user_id, candidate_ids, features))
        _raise_for_request(response)
        return result_from_json(orjson.loads(response.content))

    def score_batch(self, requests: Sequence[Sequence[Any]]) -> list[ScoreResult]:
        """Several requests ``(user_id, candidate_ids[, features])`` in one HTTP call."""
        body = {"requests": [request_json(*r) for r in requests]}
        response = self._call("POST", "/v1/score", body)
        _raise_for_request(response)
        return [result_from_json(r) for r in orjson.loads(response.content)["results"]]

    def summary(self, user_id: Any, tokens: bool = False) -> dict[str, Any] | None:
        """The user's stored summary as the service reports it; None if it has none."""
        path = f"/v1/summary/{user_id}" + ("?tokens=true" if tokens else "")
        response = self._call("GET", path)
        if response.status_code == 404 and response.json().get("status") == "not_found":
            return None
        _raise_for_request(response)
        return dict(response.json())

    def healthy(self) -> bool:
        try:
            return self._call("GET", "/healthz").status_code == 200
        except ServiceError:
            return False

    def ready(self) -> dict[str, Any]:
        """What ``/readyz`` says (``ready`` False while the model loads)."""
        try:
            return dict(self._call("GET", "/readyz").json())
        except ServiceError as exc:
            return {"ready": False, "why": str(exc)}

    def metrics(self) -> str:
        return self._call("GET", "/metrics").text


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _raise_for_request(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise InvalidRequestError(f"{response.status_code}: {_message(response)}")
