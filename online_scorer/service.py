"""`vista serve`: the online scorer as an HTTP service (FastAPI on uvicorn; the hot
``POST /v1/score`` is answered by a plain ASGI handler in front of the app).

    POST /v1/score            {"user_id": 42, "candidate_ids": [7, 8, 9], "features": [[...]]}
                              or {"requests": [{...}, {...}]}: scores, status and versions
    GET  /v1/summary/{id}     a user's stored summary (``?tokens=true``: the tokens too)
    GET  /healthz             alive
    GET  /readyz              the model is loaded and the store pinned (else 503)
    GET  /metrics             Prometheus text: requests by endpoint and code, latency,
                              batch sizes, queue depth, pinned table and model versions

Dynamic batching (``[serve] batching``, :mod:`online_scorer.batching`): concurrent
requests go through :meth:`OnlineScorer.score_batch` together -- one store read, one
jagged pass per model version -- and are answered one by one; a request's scores are
those it gets alone (to float32 rounding).

Hot model swap: every ``refresh_interval_s`` the service re-reads the serving tag
(:meth:`OnlineScorer.sync`); a version made by a model it does not hold is served only
after that model is loaded from the model folders (``model.model_dir``, its
``.previous``, and every folder under ``pipeline.candidates_dir``, where the retrain DAG
trains the next one). Requests in flight finish on the version and models they started
with; every answer names its (table version, model version) pair.

Bad input is a 4xx whose JSON body carries the message (``{"error": ..., "type": ...}``),
never a 5xx; a store or model problem is a 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import math
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response

from online_scorer.batching import Batcher, ParsedRequest, ShuttingDownError
from online_scorer.metrics import (
    BATCH_CANDIDATE_BUCKETS,
    BATCH_REQUEST_BUCKETS,
    LATENCY_BUCKETS_S,
    Labels,
    Metrics,
)
from online_scorer.requests import InvalidRequestError, check_item_ids, check_user_id
from online_scorer.scorer import ModelVersionError, OnlineScorer, ScoreResult
from summarizer.config import VistaConfig

log = logging.getLogger(__name__)

# The effective config of `vista serve`, handed to worker processes (serve.workers > 1).
CONFIG_ENV = "VISTA_SERVE_CONFIG_JSON"


def model_folders(cfg: VistaConfig) -> list[str]:
    """Where the service looks for a model the serving summaries need (local folders or
    object-store URIs)."""
    from summarizer.data import files

    serving = cfg.model.model_dir.rstrip("/")
    out = [serving, f"{serving}.previous"]
    candidates = cfg.pipeline.candidates_dir
    out += [
        files.join(candidates, name)
        for name, folder in files.list_dir(candidates, cfg.data.storage_options)
        if folder
    ]
    return out


def model_finder(cfg: VistaConfig) -> Callable[[str], str | None]:
    """``find(version)``: the folder among :func:`model_folders` holding that model."""
    from summarizer.model import artifacts

    def find(version: str) -> str | None:
        for folder in model_folders(cfg):
            try:
                _, v = artifacts.describe(folder, cfg.data.storage_options)
            except (OSError, ValueError):  # missing (mid-rename), incomplete or foreign
                continue
            if v == version:
                return folder
        return None

    return find


def result_json(r: ScoreResult) -> dict[str, Any]:
    return {
        "user_id": r.user_id,
        "scores": r.scores,  # float32: written as the shortest float32 repr
        "status": str(r.status),
        "cold_start": r.cold_start,
        "stale": r.stale,
        "table_version": r.table_version,
        "model_version": r.model_version,
        "memory_tokens": r.memory_tokens,
        "memory_skipped": r.memory_skipped,
    }


def parse_request(body: Any, max_candidates: int) -> ParsedRequest:
    """One request object -> (user id, candidate ids, features or None); InvalidRequestError
    names what is wrong (features are checked against the model when scored)."""
    if not isinstance(body, dict):
        raise InvalidRequestError(
            'a request is a JSON object {"user_id": ..., "candidate_ids": [...]}'
        )
    unknown = set(body) - {"user_id", "candidate_ids", "features"}
    if unknown:
        raise InvalidRequestError(f"unknown request fields: {', '.join(sorted(unknown))}")
    for key in ("user_id", "candidate_ids"):
        if key not in body:
            raise InvalidRequestError(f"the request has no {key!r}")
    uid = check_user_id(body["user_id"])
    items = check_item_ids(body["candidate_ids"], max_candidates).numpy()
    return uid, items, body.get("features")


def parse_score_body(raw: bytes, max_candidates: int) -> tuple[list[ParsedRequest], bool]:
    """The body of ``POST /v1/score`` -> (requests, whether it was a batch)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # also integers beyond 64 bits, NaN, deep nesting
        raise InvalidRequestError(f"the body is not JSON: {exc}") from exc
    if isinstance(body, dict) and "requests" in body:
        if set(body) != {"requests"} or not isinstance(body["requests"], list):
            raise InvalidRequestError('a batch is {"requests": [request, ...]} alone')
        if not body["requests"]:
            raise InvalidRequestError("the batch has no requests")
        return [parse_request(r, max_candidates) for r in body["requests"]], True
    return [parse_request(body, max_candidates)], False


def error_status(exc: BaseException) -> int:
    """The HTTP status of a failure: bad input 400, store or model not available 503."""
    from summarizer.store.errors import StoreError

    if isinstance(exc, InvalidRequestError):
        return 400
    if isinstance(exc, ModelVersionError | StoreError | ShuttingDownError):
        return 503
    return 500


class Service:
    """The scorer, its batcher, its pin refresher and its metrics, behind the app.

    Every torch operation of the process runs on one thread (``torch_thread``): PyTorch's
    CPU parallelism (OpenMP, libgomp) keeps a team of worker threads per calling thread,
    and once the process holds more such threads than cores, libgomp stops spinning
    between parallel regions and every matmul pays a wake-up -- measured here: a pass at
    m = 512 takes 1.8 ms from a second thread where it takes 1.0 ms from the only one.
    Scoring (batched or not) and the start-up load run there; a model that a new serving
    version needs is loaded on a short-lived thread of its own, so scoring goes on."""

    def __init__(self, cfg: VistaConfig, scorer: OnlineScorer | None = None) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.torch_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="torch")
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.last_sync_error: str | None = None
        m = self.metrics
        m.counter("vista_requests_total", "HTTP requests by endpoint and status code")
        m.histogram("vista_request_seconds", "request latency by endpoint", LATENCY_BUCKETS_S)
        m.histogram("vista_batch_requests", "requests per scored batch", BATCH_REQUEST_BUCKETS)
        m.histogram(
            "vista_batch_candidates", "candidates per scored batch", BATCH_CANDIDATE_BUCKETS
        )
        m.counter("vista_model_swaps_total", "times the pinned summaries version moved")
        m.counter("vista_refresh_errors_total", "serving-tag refreshes that failed")
        m.gauge(
            "vista_queue_depth",
            "requests waiting for a batch",
            lambda: {(): float(self.batcher.depth if self.batcher else 0)},
        )
        m.gauge("vista_summaries_table_version", "pinned summaries version", self._table_gauge)
        m.gauge("vista_model_loaded", "models held (1 each; default=1: cold start)", self._models)

    def _table_gauge(self) -> dict[Labels, float]:
        if self.scorer is None:
            return {}
        return {(): float(self.scorer.reader.version)}

    def _models(self) -> dict[Labels, float]:
        if self.scorer is None:
            return {}
        default = self.scorer.model_version
        return {
            (("version", v), ("default", str(int(v == default)))): 1.0
            for v in self.scorer.model_versions
        }

    def open_scorer(self) -> OnlineScorer:
        """The scorer for the config: the reader re-pins only when :meth:`sync` runs."""
        return OnlineScorer.from_config(
            self.cfg,
            max_candidates=self.cfg.serve.max_candidates,
            refresh_interval_s=math.inf,
            bank_refresh_interval_s=self.cfg.serve.refresh_interval_s,
        )

    def sync(self) -> bool:
        """Follow the serving tag now (loading the models a new version needs); a failure
        is logged and counted, and the pinned version goes on being served."""
        assert self.scorer is not None
        try:
            moved = self.scorer.sync(model_finder(self.cfg), self.cfg.serve.max_models)
        except Exception as exc:  # noqa: BLE001  keep serving the pinned version
            self.last_sync_error = str(exc)
            self.metrics.inc("vista_refresh_errors_total")
            log.warning("serving-tag refresh failed, still serving the pinned version: %s", exc)
            return False
        self.last_sync_error = None
        if moved:
            self.metrics.inc("vista_model_swaps_total")
        return moved

    async def _refresh_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.cfg.serve.refresh_interval_s)
            # A thread that ends with the refresh: its OpenMP team (if a model load made
            # one) goes with it (see the class docstring).
            once = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="refresh")
            try:
                await loop.run_in_executor(once, self.sync)
            finally:
                once.shutdown(wait=False)

    def _start_torch(self) -> None:
        if self.cfg.serve.torch_threads:
            import torch

            torch.set_num_threads(self.cfg.serve.torch_threads)
        if self.scorer is None:
            self.scorer = self.open_scorer()
        # One pass now, so that the first request does not pay the first pass's set-up
        # (~0.3 s measured in the demo).
        self.scorer.score_batch([(0, np.arange(8))])
        # What start-up made (torch, lance, pyarrow, the model) lives as long as the
        # process: keep it out of the cyclic collector's scans, whose full passes over it
        # otherwise stall every request now and then (the CPython docs' use of freeze).
        gc.collect()
        gc.freeze()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.torch_thread, self._start_torch)
        assert self.scorer is not None
        serve = self.cfg.serve
        if serve.batching:
            self.batcher = Batcher(
                self.scorer.score_batch,
                serve.max_batch_delay_ms / 1e3,
                serve.max_batch_candidates,
                self.torch_thread,
                self.metrics,
            )
            self.batcher.start()
        self._refresher = loop.create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.batcher is not None:
            await self.batcher.stop()
        self.torch_thread.shutdown(wait=True, cancel_futures=True)

    async def score(self, request: ParsedRequest) -> ScoreResult:
        """One request: through the batcher, or (batching off) alone, one pass at a time
        on the torch thread."""
        assert self.scorer is not None
        if self.batcher is not None:
            return await self.batcher.submit(request)
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.torch_thread, self.scorer.score_batch, [request])
        return results[0]


SCORE_PATH = "/v1/score"


class _Front:
    """The ASGI entry: every HTTP request counted by endpoint and status code and timed,
    and ``POST /v1/score`` answered here, without the FastAPI app (its routing, request and
    response objects took ~0.15 ms of the ~0.4 ms a scoring request spends in the service
    outside the scorer: BENCHMARKS.md); every other request goes to the app. (A plain ASGI
    wrapper: Starlette's BaseHTTPMiddleware costs far more per request.)"""

    def __init__(
        self,
        app: Any,
        metrics: Metrics,
        score: Callable[[bytes], Awaitable[tuple[int, bytes]]],
        max_body: int,
    ) -> None:
        self.app, self.metrics, self.score, self.max_body = app, metrics, score, max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        endpoint = "unmatched"
        try:
            if scope["path"] == SCORE_PATH:
                endpoint = SCORE_PATH
                code, body = await self._score(scope, receive)
                allow = [(b"allow", b"POST")] if code == 405 else []
                await _send_json(send_status, code, body, allow)
            else:
                await self.app(scope, receive, send_status)
                route = scope.get("route")
                endpoint = getattr(route, "path", "unmatched")
        finally:
            self.metrics.inc(
                "vista_requests_total", (("endpoint", endpoint), ("code", str(status[0])))
            )
            self.metrics.observe(
                "vista_request_seconds", time.perf_counter() - t0, (("endpoint", endpoint),)
            )

    async def _score(self, scope: Any, receive: Any) -> tuple[int, bytes]:
        if scope["method"] != "POST":
            return error_body(InvalidRequestError("use POST for /v1/score"), 405)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return self._too_big()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return error_body(InvalidRequestError("the client went away"), 400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return self._too_big()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return await self.score(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _too_big(self) -> tuple[int, bytes]:
        return error_body(InvalidRequestError(f"the body is over {self.max_body} bytes"), 413)


async def _send_json(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_body(exc: BaseException, status: int | None = None) -> tuple[int, bytes]:
    """(status, JSON body) of a failure: ``{"error": message, "type": class name}``; a 5xx
    that is not a known unavailability is logged with its traceback."""
    code = error_status(exc) if status is None else status
    if code >= 500 and not isinstance(exc, ModelVersionError | ShuttingDownError):
        log.error("request failed", exc_info=exc)
    return code, orjson.dumps({"error": str(exc), "type": type(exc).__name__})


def create_app(cfg: VistaConfig, scorer: OnlineScorer | None = None) -> Any:
    """The FastAPI app; ``scorer``: an open one (tests; give it ``refresh_interval_s=
    math.inf`` so that only the service moves its pin), else opened from the config at
    start-up."""
    service = Service(cfg, scorer)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="vista-memory scorer", lifespan=lifespan)
    app.state.service = service

    def json_response(obj: Any, status: int = 200) -> Response:
        # orjson: 512 scores in ~10 us, where json.dumps takes ~200 us (measured here).
        body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, status_code=status, media_type="application/json")

    def error(exc: BaseException, status: int | None = None) -> Response:
        code, body = error_body(exc, status)
        return Response(body, status_code=code, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        return json_response({"error": str(exc.detail), "type": "HTTPError"}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error(InvalidRequestError(where or "invalid request"), 400)

    async def score(raw: bytes) -> tuple[int, bytes]:
        """``POST /v1/score`` (served by :class:`_Front`): the body -> (status, JSON)."""
        try:
            parsed, is_batch = parse_score_body(raw, cfg.serve.max_candidates)
        except InvalidRequestError as exc:
            return error_body(exc)
        if len(parsed) == 1:
            try:
                answers: list[Any] = [await service.score(parsed[0])]
            except Exception as exc:  # noqa: BLE001  mapped to its status
                return error_body(exc)
        else:
            answers = await asyncio.gather(
                *(service.score(p) for p in parsed), return_exceptions=True
            )
        failed = [a for a in answers if isinstance(a, BaseException)]
        if failed:  # the worst status wins; its message names the request
            return error_body(max(failed, key=error_status))
        results = [result_json(a) for a in answers]
        body = {"results": results} if is_batch else results[0]
        return 200, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    @app.get("/v1/summary/{user_id}")
    async def summary(user_id: str, tokens: bool = False) -> Response:
        try:
            if not user_id.isdigit():
                raise InvalidRequestError(
                    f"user id must be a non-negative integer, got {user_id!r}"
                )
            if service.scorer is None:
                raise ShuttingDownError("the model is loading")
            s = await run_in_threadpool(service.scorer.get_summary, int(user_id))
        except Exception as exc:  # noqa: BLE001  mapped to its status
            return error(exc)
        out: dict[str, Any] = {
            "user_id": s.user_id,
            "status": str(s.status),
            "model_version": s.model_version,
            "n_events": s.n_events,
            "first_ts": s.first_ts,
            "last_ts": s.last_ts,
            "table_version": s.table_version,
            "tokens_shape": None if s.tokens is None else list(s.tokens.shape),
        }
        if tokens and s.tokens is not None:
            out["tokens"] = np.asarray(s.tokens, dtype=np.float32).tolist()
        if s.tokens is None:
            out["error"] = f"user {s.user_id} has no summary in version {s.table_version}"
            return json_response(out, 404)
        return json_response(out)

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "alive"})

    @app.get("/readyz")
    async def readyz() -> Response:
        sc = service.scorer
        if sc is None:
            return json_response({"ready": False, "why": "the model is loading"}, 503)
        return json_response(
            {
                "ready": True,
                "table_version": sc.reader.version,
                "pinned_tag": sc.reader.pinned_tag,
                "model_versions": sc.model_versions,
                "default_model": sc.model_version,
                "batching": service.batcher is not None,
                "last_refresh_error": service.last_sync_error,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return _Front(app, service.metrics, score, cfg.serve.max_body_bytes)


def app_from_env() -> Any:
    """The app of one worker process when ``serve.workers > 1``: the parent's effective
    config (file, environment and command-line overrides) comes in ``$VISTA_SERVE_CONFIG_JSON``."""
    return create_app(VistaConfig.model_validate_json(os.environ[CONFIG_ENV]))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: a free one), bound before any worker starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(cfg: VistaConfig) -> None:
    """Run the service in the foreground until SIGINT/SIGTERM (``vista serve``).

    Prints ``listening on http://HOST:PORT`` once the socket is bound (port 0: the port
    chosen); ``GET /readyz`` answers 200 once the model is loaded and the store pinned."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    s = cfg.serve
    sock = bind(s.host, s.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(
        f"vista serve: listening on {url} ({s.workers} worker process"
        f"{'es' if s.workers > 1 else ''}, batching {'on' if s.batching else 'off'})",
        flush=True,
    )
    common: dict[str, Any] = {"log_level": "warning", "timeout_graceful_shutdown": 10}
    if s.workers > 1:
        # Each worker imports the app and opens its own scorer: each pins the serving
        # tag on its own (all follow the same tag, each refresh independent).
        os.environ[CONFIG_ENV] = cfg.model_dump_json()
        config = uvicorn.Config(
            "online_scorer.service:app_from_env", factory=True, workers=s.workers, **common
        )
        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), **common))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(1)
