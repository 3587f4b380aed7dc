"""`vista serve` on a real uvicorn server on a free 127.0.0.1 port: every endpoint, 4xx
bodies for bad input, concurrent requests equal one-by-one scoring (batched or not), a
model swap under load loses no request and mixes no versions, /metrics parses as
Prometheus text, and the `vista serve` / `vista score --url` commands as processes."""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from online_scorer import InvalidRequestError, OnlineScorer
from online_scorer.client import ScorerClient
from online_scorer.service import create_app
from summarizer.config import VistaConfig
from summarizer.model import artifacts
from summarizer.model.vista_model import VistaModel
from summarizer.store import SummaryStore
from tests.online_scorer.helpers import (
    SPEC,
    USERS,
    Clock,
    expected_scores,
    running_server,
    stored_summaries,
)

pytestmark = pytest.mark.network

COLD = 99  # a user with no summary


def make_world(tmp: Path, **serve: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    version = artifacts.save(VistaModel(SPEC).eval(), tmp / "model")
    model, _ = artifacts.load(tmp / "model")
    clock = Clock()
    store = SummaryStore(str(tmp / "db"), max_age_s=86400, clock=clock)
    recs = stored_summaries(model, version, USERS, seed=0)
    table_version = store.publish(recs, promote=True).version
    cfg = VistaConfig.model_validate(
        {
            "store": {"uri": str(tmp / "db"), "max_age_s": 86400},
            "model": {"model_dir": str(tmp / "model")},
            "pipeline": {"candidates_dir": str(tmp / "candidates")},
            "serve": {"max_candidates": 64, "refresh_interval_s": 0.05, **serve},
        }
    )
    scorer = OnlineScorer(
        store, [str(tmp / "model")], max_candidates=64, clock=clock, refresh_interval_s=math.inf
    )
    return {
        "tmp": tmp,
        "model": model,
        "version": version,
        "table_version": table_version,
        "store": store,
        "clock": clock,
        "scorer": scorer,
        "cfg": cfg,
        "records": {r.user_id: r for r in recs},
    }


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    return make_world(tmp_path)


def expected(w: dict[str, Any], user: int, items: list[int]) -> np.ndarray:
    return expected_scores(w, w["records"].get(user), items)


def test_every_endpoint(world: dict[str, Any]) -> None:
    with (
        running_server(create_app(world["cfg"], world["scorer"])) as url,
        ScorerClient(url) as client,
    ):
        assert client.healthy()
        ready = client.ready()
        assert ready["ready"] and ready["table_version"] == world["table_version"]
        assert ready["model_versions"] == [world["version"]] and ready["batching"]

        result = client.score(5, [3, 17, 250, 9999])
        assert result.model_version == world["version"] and not result.cold_start
        assert result.table_version == world["table_version"]
        np.testing.assert_allclose(result.scores, expected(world, 5, [3, 17, 250, 9999]), atol=1e-6)
        cold = client.score(COLD, [3, 17])
        assert cold.cold_start and cold.model_version == world["version"]

        batch = client.score_batch([(1, [4, 5]), (COLD, [6]), (8, [7, 8, 9])])
        assert [r.user_id for r in batch] == [1, COLD, 8]
        for r, (u, items) in zip(batch, [(1, [4, 5]), (COLD, [6]), (8, [7, 8, 9])], strict=True):
            np.testing.assert_allclose(r.scores, expected(world, u, items), atol=1e-6)

        summary = client.summary(5, tokens=True)
        assert summary is not None
        rec = world["records"][5]
        assert summary["status"] == "present" and summary["n_events"] == rec.n_events
        assert summary["tokens_shape"] == [SPEC.num_seeds, SPEC.d_model]
        np.testing.assert_array_equal(
            np.asarray(summary["tokens"], np.float32), rec.tokens.astype(np.float32)
        )
        assert "tokens" not in (client.summary(5) or {})
        assert client.summary(COLD) is None
        missing = httpx.get(f"{url}/v1/summary/{COLD}")
        assert missing.status_code == 404 and missing.json()["status"] == "not_found"

        families = {f.name: f for f in text_string_to_metric_families(client.metrics())}
    requests = families["vista_requests"]  # the parser drops a counter's _total
    by_endpoint = {
        (s.labels["endpoint"], s.labels["code"]): s.value
        for s in requests.samples
        if s.name == "vista_requests_total"
    }
    assert by_endpoint[("/v1/score", "200")] == 3
    assert by_endpoint[("/v1/summary/{user_id}", "404")] == 2
    latency = families["vista_request_seconds"]
    count = [s for s in latency.samples if s.name.endswith("_count")]
    assert sum(s.value for s in count) >= 8
    assert families["vista_summaries_table_version"].samples[0].value == world["table_version"]
    loaded = families["vista_model_loaded"].samples
    assert [s.labels["version"] for s in loaded] == [world["version"]]
    assert families["vista_batch_requests"].type == "histogram"
    assert families["vista_queue_depth"].samples[0].value == 0


BAD_BODIES: list[tuple[Any, str]] = [
    (b"{not json", "not JSON"),
    ([1, 2], "JSON object"),
    ({"candidate_ids": [1]}, "no 'user_id'"),
    ({"user_id": 1}, "no 'candidate_ids'"),
    ({"user_id": "7", "candidate_ids": [1]}, "user id"),
    ({"user_id": -3, "candidate_ids": [1]}, "user id"),
    ({"user_id": True, "candidate_ids": [1]}, "user id"),
    ({"user_id": 2**63, "candidate_ids": [1]}, "user id"),
    ({"user_id": 1, "candidate_ids": []}, "empty"),
    ({"user_id": 1, "candidate_ids": [[1, 2], [3]]}, "flat list"),
    ({"user_id": 1, "candidate_ids": ["a", "b"]}, "integers"),
    ({"user_id": 1, "candidate_ids": [1.5]}, "integers"),
    ({"user_id": 1, "candidate_ids": [-1]}, "non-negative"),
    ({"user_id": 1, "candidate_ids": [2**63]}, "2^63-1"),
    (b'{"user_id": 1, "candidate_ids": [1180591620717411303424]}', "integers"),
    ({"user_id": 1, "candidate_ids": [1e400]}, "not JSON"),
    ({"user_id": 1, "candidate_ids": list(range(65))}, "at most 64"),
    ({"user_id": 1, "candidate_ids": [1], "extra": 1}, "unknown request fields"),
    ({"user_id": 1, "candidate_ids": [1, 2], "features": [["x"], ["y"]]}, "features"),
    ({"user_id": 1, "candidate_ids": [1, 2], "features": [[1.0], [2.0, 3.0]]}, "features"),
    ({"user_id": 1, "candidate_ids": [1, 2], "features": [[1.0], [2.0]]}, "shape"),
    ({"requests": []}, "no requests"),
    ({"requests": {"user_id": 1}}, "a batch"),
    ({"requests": [{"user_id": 1, "candidate_ids": [1]}, {"user_id": -1}]}, "no 'candidate_ids'"),
]


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_bad_input_is_a_4xx_naming_the_problem(tmp_path: Path, batching: bool) -> None:
    w = make_world(tmp_path, batching=batching, max_body_bytes=4096)
    with running_server(create_app(w["cfg"], w["scorer"])) as url, httpx.Client() as http:
        for body, words in BAD_BODIES:
            content = body if isinstance(body, bytes) else json.dumps(body)
            r = http.post(f"{url}/v1/score", content=content)
            assert r.status_code == 400, (body, r.status_code, r.text)
            assert words in r.json()["error"], (body, r.json())
        big = http.post(f"{url}/v1/score", content=b"[" + b"1," * 4000 + b"1]")
        assert big.status_code == 413 and "4096 bytes" in big.json()["error"]
        for path, code, words in [
            ("/v1/summary/abc", 400, "non-negative integer"),
            ("/v1/summary/-1", 400, "non-negative integer"),
            (f"/v1/summary/{2**64}", 400, "user id"),
            ("/v1/summary/5?tokens=maybe", 400, "tokens"),
            ("/v2/nothing", 404, "Not Found"),
        ]:
            r = http.get(f"{url}{path}")
            assert r.status_code == code and words in r.json()["error"], (path, r.text)
        r = http.get(f"{url}/v1/score")
        assert r.status_code == 405 and "POST" in r.json()["error"]
        assert r.headers["allow"] == "POST"
        # The service still answers afterwards.
        assert http.post(f"{url}/v1/score", json={"user_id": 1, "candidate_ids": [1]}).is_success
        with ScorerClient(url) as client, pytest.raises(InvalidRequestError, match="negative"):
            client.score(1, [-5])


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_concurrent_requests_equal_one_by_one(tmp_path: Path, batching: bool) -> None:
    # A long batching window, so that concurrent requests do share passes.
    w = make_world(tmp_path, batching=batching, max_batch_delay_ms=50.0)
    rng = np.random.default_rng(3)
    work = [
        (int(u), rng.integers(0, 5000, int(rng.integers(1, 64))).tolist())
        for u in rng.choice([*USERS, COLD, 77], 48)
    ]
    with running_server(create_app(w["cfg"], w["scorer"])) as url:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            clients = [ScorerClient(url) for _ in range(16)]
            futures = [
                pool.submit(clients[i % 16].score, u, items) for i, (u, items) in enumerate(work)
            ]
            answers = [f.result(timeout=60) for f in futures]
            for c in clients:
                c.close()
        metrics = httpx.get(f"{url}/metrics").text
    for (u, items), got in zip(work, answers, strict=True):
        assert got.user_id == u and len(got.scores) == len(items)
        alone = w["scorer"].score(u, items).scores
        np.testing.assert_allclose(got.scores, alone, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got.scores, expected(w, u, items), atol=1e-6, rtol=0)
    batches = {
        s.name: s.value
        for f in text_string_to_metric_families(metrics)
        if f.name == "vista_batch_requests"
        for s in f.samples
    }
    if batching:
        assert batches["vista_batch_requests_sum"] == len(work)
        assert batches["vista_batch_requests_count"] < len(work)  # some passes were shared
    else:
        assert not batches


def test_model_swap_under_load_loses_no_request(world: dict[str, Any]) -> None:
    w = world
    torch.manual_seed(1)
    new_dir = w["tmp"] / "candidates" / "next"
    new_version = artifacts.save(VistaModel(SPEC).eval(), new_dir)
    new_model, _ = artifacts.load(new_dir)
    assert new_version != w["version"]
    new_records = stored_summaries(new_model, new_version, USERS, seed=1)
    worlds = {
        w["version"]: w,
        new_version: {**w, "model": new_model, "records": {r.user_id: r for r in new_records}},
    }
    stop_at = time.monotonic() + 30
    seen: list[tuple[int, str, int, list[int], np.ndarray]] = []
    errors: list[BaseException] = []

    def load(client: ScorerClient, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop_at and len(seen) < 4000:
            u = int(rng.choice([*USERS, COLD]))
            items = rng.integers(0, 5000, 8).tolist()
            try:
                r = client.score(u, items)
            except BaseException as exc:  # noqa: BLE001  every failure is a test failure
                errors.append(exc)
                return
            seen.append((r.table_version, r.model_version, u, items, r.scores))

    with running_server(create_app(w["cfg"], w["scorer"])) as url:
        clients = [ScorerClient(url) for _ in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(load, c, i) for i, c in enumerate(clients)]
            while len(seen) < 50 and time.monotonic() < stop_at:
                time.sleep(0.01)
            new_table = w["store"].publish(new_records, promote=True).version
            while time.monotonic() < stop_at:  # the service follows the tag by itself
                if any(s[0] == new_table for s in seen[-20:]) and len(seen) > 200:
                    break
                time.sleep(0.02)
            stop_at = time.monotonic()
            for f in futures:
                f.result(timeout=30)
        ready = clients[0].ready()
        for c in clients:
            c.close()
    assert not errors, errors[:3]
    pairs = {(t, m) for t, m, *_ in seen}
    assert pairs == {(w["table_version"], w["version"]), (new_table, new_version)}, pairs
    assert ready["table_version"] == new_table and ready["default_model"] == new_version
    # Each answer is what its own pair scores (one per user and pair checked).
    checked = set()
    for _t, m, u, items, scores in seen:
        if (m, u) not in checked:
            checked.add((m, u))
            np.testing.assert_allclose(scores, expected(worlds[m], u, items), atol=1e-6)
    assert len(checked) == 2 * (len(USERS) + 1)


def test_vista_serve_and_score_url_as_processes(world: dict[str, Any]) -> None:
    """`vista serve --port 0` with two worker processes, `vista score --url` against it,
    stopped by its PID (and its process group)."""
    w = world
    cfg_file = w["tmp"] / "vista.toml"
    cfg_file.write_text(
        f'[store]\nuri = "{w["tmp"] / "db"}"\nmax_age_s = 86400\n'
        f'[model]\nmodel_dir = "{w["tmp"] / "model"}"\n'
        "[serve]\nmax_candidates = 64\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISTA_")}
    env["VISTA_CONFIG"] = str(cfg_file)
    vista = str(Path(sys.executable).with_name("vista"))
    proc = subprocess.Popen(
        [vista, "serve", "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].split()[0]
        deadline = time.monotonic() + 90
        with ScorerClient(url) as client:
            while not client.ready().get("ready"):
                assert proc.poll() is None and time.monotonic() < deadline, "no ready server"
                time.sleep(0.2)
            got = client.score(5, [3, 17, 250])
        # The service runs on the real clock (the hours since the user's last event).
        here = OnlineScorer.open(str(w["tmp"] / "db"), str(w["tmp"] / "model"), max_age_s=86400)
        np.testing.assert_allclose(got.scores, here.score(5, [3, 17, 250]).scores, atol=1e-6)
        out = subprocess.run(
            [vista, "score", "--url", url, "--json", "5", "3", "17", "250"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["via"] == url and report["model_version"] == w["version"]
        np.testing.assert_allclose(
            [report["scores"][k] for k in ("3", "17", "250")], got.scores, atol=1e-5
        )
        bad = subprocess.run(
            [vista, "score", "--url", url, "5", "--", "-4"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert bad.returncode == 2 and "non-negative" in bad.stderr, bad.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode is not None
    down = subprocess.run(
        [vista, "score", "--url", url, "5", "3"], capture_output=True, text=True, env=env
    )
    assert down.returncode == 1 and "error" in down.stderr
