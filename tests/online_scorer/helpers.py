"""Helpers of the scorer tests: the model spec, a settable clock and stored summaries."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from summarizer.config import ModelSpec
from summarizer.model.encoder import EventBatch
from summarizer.model.vista_model import ScoringRequest, VistaModel
from summarizer.store import SummaryRecord

SPEC = ModelSpec(
    num_seeds=8, d_model=16, num_heads=2, feature_dim=8, num_layers=1, item_buckets=1024
)


T0 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


USERS = [1, 2, 3, 5, 8]


class Clock:
    def __init__(self) -> None:
        self.t = (T0 + dt.timedelta(hours=1)).timestamp()

    def __call__(self) -> float:
        return self.t


def stored_summaries(
    model: VistaModel, version: str, users: list[int], seed: int
) -> list[SummaryRecord]:
    summ = model.require_summarizer()
    out = []
    for u in users:
        rng = np.random.default_rng([seed, u])
        n = 20 + 7 * u
        events = EventBatch.from_numpy(
            rng.integers(0, 500, n),
            np.sort(rng.integers(1_700_000_000, int(T0.timestamp()), n)),
            rng.integers(0, 4, n),
            None,
        )
        state, tokens = summ.summarize(events)
        moments = None
        if summ.ridge is not None:
            moments = summ.moments_part(state.kv).reshape(-1).numpy().astype(np.float32)
        out.append(
            SummaryRecord(
                u,
                version,
                tokens.numpy().astype(np.float16),
                state.n_events,
                state.first_ts,
                state.last_ts,
                T0,
                moments,
            )
        )
    return out


# The state read-out (tokens = the state's rows, read by each candidate): 1 layer x 8 features.
STATE_SPEC = SPEC.replace(values="events", readout="state")
RIDGE_SPEC = SPEC.replace(ridge_dim=4)


def randomize_ridge(model: VistaModel) -> None:
    """Draw a ridge read-out's tables at random (they start near zero): the tests then see
    its scores move."""
    if model.ridge is not None:
        for table in (model.ridge.vec_a, model.ridge.vec_b, model.ridge.bias):
            torch.nn.init.normal_(table.weight, std=0.3)
        model.ridge.set_mean_response(0.3)


def expected_scores(w: dict[str, Any], rec: SummaryRecord | None, items: list[int]) -> np.ndarray:
    """The model's own scoring of these tokens (float16 as stored) and moments."""
    tokens = None if rec is None else torch.from_numpy(rec.tokens.astype(np.float32))
    n = 0 if rec is None else rec.n_events
    hours = 0.0 if rec is None else (w["clock"]() - rec.last_ts) / 3600.0
    moments = None if rec is None or rec.moments is None else torch.from_numpy(rec.moments)
    request = ScoringRequest(torch.tensor(items), tokens, n, hours, moments=moments)
    return torch.sigmoid(w["model"].score_request(request)).numpy()


@contextlib.contextmanager
def running_server(app: Any, timeout_s: float = 30.0) -> Iterator[str]:
    """The app served by uvicorn on a free 127.0.0.1 port in a thread of this process;
    yields its URL and stops it (graceful shutdown, bounded) on exit."""
    import uvicorn

    from online_scorer.service import bind

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"
