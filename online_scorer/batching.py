"""Dynamic batching for the service: concurrent requests scored in one jagged pass.

Requests go into a queue; one loop takes them out in batches and hands each batch to
:meth:`OnlineScorer.score_batch` on the service's single torch thread (the model's matmuls
already use every core), then answers each request with its own result. A request's candidates
attend to its own memory only, so its scores are those it gets alone (to float32
rounding; tested).

When a batch closes: the loop takes every request already waiting; it then waits for
more, up to ``max_delay_s`` after the first, only while requests are arriving closer
together than that (the last gap between two arrivals) -- a lone client never waits for
company that will not come, while concurrent clients answered by one pass send their
next requests within a round trip and join the next batch. A batch also closes at
``max_candidates`` candidates. While a pass runs, new requests queue up for the next.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from online_scorer.metrics import Metrics
from online_scorer.scorer import ScoreResult

# (user id, candidate ids, candidate features or None), checked by parse_request.
ParsedRequest = tuple[int, np.ndarray, Any]


class ShuttingDownError(RuntimeError):
    """The service stopped before the request was scored."""


@dataclasses.dataclass
class _Pending:
    request: ParsedRequest
    future: asyncio.Future[ScoreResult]


class Batcher:
    """Requests in, one ``score_batch`` call per batch, answers out."""

    def __init__(
        self,
        score_batch: Callable[[Sequence[ParsedRequest]], list[ScoreResult]],
        max_delay_s: float,
        max_candidates: int,
        executor: concurrent.futures.Executor,
        metrics: Metrics | None = None,
    ) -> None:
        """``executor``: where passes run, one at a time (the service's single torch
        thread)."""
        self.score_batch = score_batch
        self.max_delay_s, self.max_candidates = max_delay_s, max_candidates
        self.metrics = metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = executor
        self._task: asyncio.Task[None] | None = None
        self._last_arrival = -math.inf
        self._gap = math.inf  # seconds between the last two arrivals

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self.queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self.queue.empty():  # answered, not left hanging
            p = self.queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(ShuttingDownError("the service is shutting down"))

    async def submit(self, request: ParsedRequest) -> ScoreResult:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._gap, self._last_arrival = now - self._last_arrival, now
        fut: asyncio.Future[ScoreResult] = loop.create_future()
        self.queue.put_nowait(_Pending(request, fut))
        return await fut

    async def _collect(self) -> list[_Pending]:
        first = await self.queue.get()
        batch, n = [first], len(first.request[1])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        while n < self.max_candidates:
            if not self.queue.empty():
                item = self.queue.get_nowait()
            elif self._gap <= self.max_delay_s and loop.time() < deadline:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await self.queue.get()
                except TimeoutError:
                    break
            else:
                break
            batch.append(item)
            n += len(item.request[1])
        return batch

    def _score_isolated(self, requests: list[ParsedRequest]) -> list[ScoreResult | BaseException]:
        """The batch in one pass; if it fails, each request alone, so that only the ones at
        fault get their error (features of the wrong width, tokens of a model not held)."""
        try:
            return list(self.score_batch(requests))
        except Exception as exc:  # noqa: BLE001  handed to the request(s) it belongs to
            if len(requests) == 1:
                return [exc]
        out: list[ScoreResult | BaseException] = []
        for r in requests:
            try:
                out.append(self.score_batch([r])[0])
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                continue
            if self.metrics is not None:
                self.metrics.observe("vista_batch_requests", len(live))
                self.metrics.observe("vista_batch_candidates", sum(len(p.request[1]) for p in live))
            results = await loop.run_in_executor(
                self.executor, self._score_isolated, [p.request for p in live]
            )
            for p, r in zip(live, results, strict=True):
                if p.future.done():  # the client went away
                    continue
                if isinstance(r, BaseException):
                    p.future.set_exception(r)
                else:
                    p.future.set_result(r)
