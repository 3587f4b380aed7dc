"""Benchmark: `vista serve` under load on loopback, beside the in-process scorer.

Side by side in one run, m candidates a request (default 512) against a store of --users
users (K=128 summary tokens, d=64; the store of benchmarks/scorer.py):

  (a) in-process: ``OnlineScorer.score`` from the main thread (one caller), then from 2
      threads (closed loop; torch's 2 threads each, and 1 each), no HTTP;
  (b) the service without batching (`vista serve --no-batching`);
  (c) the service with dynamic batching (`vista serve`).

Both services run at once, each as its own process (`vista serve --port 0`) on 127.0.0.1;
the load comes from this process over keep-alive HTTP/1.1 connections (a minimal asyncio
client on uvloop: pre-encoded request bodies, responses read by Content-Length, every
answer's status checked and one in 50 parsed; its garbage collector off while measuring).
Client and servers share the machine's cores, as a co-located client would.

1. One client at a time, interleaved in --rounds rounds of 1 s each: in-process, service
   without batching, service with batching (medians of the rounds' p50s).
2. For each service: closed loop with c = 1, 2, 4, 8, 16, 32 connections (QPS, p50, p99),
   then open loop at fixed offered rates (fractions of the closed-loop saturation QPS;
   arrivals on a fixed schedule, latency from each request's scheduled time, so queueing
   counts). Bounded: --seconds a point.
3. Saturation side by side, interleaved in --rounds rounds: in-process from 2 threads,
   each service at the largest connection count (the ratios in "targets").

Writes benchmarks/out/serve.json and benchmarks/out/serve_latency.png (latency against
offered load).

    .venv/bin/python benchmarks/serve.py [--users 10000] [--m 512] [--seconds 4]
        [--serve-conf "workers = 2; torch_threads = 1"]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import importlib.util
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def summary(lat_ms: list[float], seconds: float, errors: int) -> dict:
    return {
        "requests": len(lat_ms),
        "qps": len(lat_ms) / seconds,
        "p50_ms": statistics.median(lat_ms) if lat_ms else float("nan"),
        "p99_ms": pct(lat_ms, 0.99),
        "errors": errors,
    }


def build_store(work: Path, users: int) -> tuple[str, str]:
    """The scorer benchmark's store and model (K=128, d=64), made once under ``work``."""
    spec = importlib.util.spec_from_file_location("bench_scorer", HERE / "scorer.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build(work, users)


def bodies(users: int, m: int, n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "user_id": rng.randrange(users),
                "candidate_ids": [rng.randrange(10**7) for _ in range(m)],
            },
            separators=(",", ":"),
        ).encode()
        for _ in range(n)
    ]


# -- in-process ------------------------------------------------------------------------
def in_process(
    model_dir: str, store_uri: str, work: list[bytes], seconds: float
) -> tuple[Any, Any, dict]:
    """``score`` with no HTTP: one caller on the main thread (torch's 2 threads), then two
    caller threads with torch's 2 threads each and with 1 each (PyTorch's OpenMP keeps a
    worker team per calling thread: two callers with 2 threads each oversubscribe the 2
    cores). The best two-caller figure is the baseline the service is held to."""
    import numpy as np
    import torch

    from online_scorer import OnlineScorer

    scorer = OnlineScorer.open(store_uri, model_dir, max_candidates=4096)
    reqs = []
    for b in work:
        d = json.loads(b)
        reqs.append((d["user_id"], np.asarray(d["candidate_ids"], dtype=np.int64)))

    def loop(j: int, step: int, stop: float, lat: list[float], threads: int) -> None:
        torch.set_num_threads(threads)
        k = j
        while time.perf_counter() < stop:
            u, items = reqs[k % len(reqs)]
            t0 = time.perf_counter()
            scorer.score(u, items)
            lat.append((time.perf_counter() - t0) * 1e3)
            k += step

    for u, items in reqs[:20]:
        scorer.score(u, items)
    out = {}
    lat: list[float] = []
    t0 = time.perf_counter()
    loop(0, 1, t0 + seconds, lat, 2)
    out["threads_1"] = summary(lat, time.perf_counter() - t0, 0)
    print(f"in-process, 1 caller (main thread): {fmt(out['threads_1'])}", flush=True)
    for torch_threads in (2, 1):
        lats: list[list[float]] = [[], []]
        stop = time.perf_counter() + seconds
        ts = [
            threading.Thread(target=loop, args=(j, 2, stop, lats[j], torch_threads))
            for j in range(2)
        ]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        key = f"threads_2_torch_{torch_threads}"
        out[key] = summary(lats[0] + lats[1], time.perf_counter() - t0, 0)
        print(f"in-process, 2 callers x {torch_threads} torch threads: {fmt(out[key])}", flush=True)
    torch.set_num_threads(2)
    best = 2 if out["threads_2_torch_2"]["qps"] >= out["threads_2_torch_1"]["qps"] else 1
    out["threads_2"] = out[f"threads_2_torch_{best}"]
    out["threads_2_best_torch_threads"] = best

    def rate(secs: float) -> float:
        """QPS of two callers for ``secs`` (torch threads as the better setting above)."""
        lats: list[list[float]] = [[], []]
        stop = time.perf_counter() + secs
        ts = [threading.Thread(target=loop, args=(j, 2, stop, lats[j], best)) for j in range(2)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        torch.set_num_threads(2)
        return (len(lats[0]) + len(lats[1])) / (time.perf_counter() - t0)

    return scorer, rate, out


# -- the load generator ------------------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection; ``post`` returns the status (body read whole)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, body: bytes, check: bool = False) -> int:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None
        self.writer.write(
            b"POST /v1/score HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        payload = await self.reader.readexactly(length)
        if check and status == 200:
            assert len(json.loads(payload)["scores"]) > 0
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def closed_loop(
    host: str, port: int, work: list[bytes], clients: int, seconds: float
) -> dict:
    conns = [Connection(host, port) for _ in range(clients)]
    lat: list[float] = []
    errors = [0]
    stop = time.perf_counter() + seconds

    async def client(j: int) -> None:
        k = j
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status = await conns[j].post(work[k % len(work)], check=k % 50 == 0)
            if status == 200:
                lat.append((time.perf_counter() - t0) * 1e3)
            else:
                errors[0] += 1
            k += clients

    t0 = time.perf_counter()
    await asyncio.gather(*(client(j) for j in range(clients)))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return summary(lat, elapsed, errors[0])


async def open_loop(host: str, port: int, work: list[bytes], rate: float, seconds: float) -> dict:
    """Requests sent on a fixed schedule at ``rate`` per second, each on an idle connection
    (64 opened beforehand; more when none is idle); latency from the scheduled send time."""
    idle: list[Connection] = [Connection(host, port) for _ in range(64)]
    await asyncio.gather(*(c.connect() for c in idle))
    lat: list[float] = []
    errors = [0]
    tasks = []

    async def one(k: int, due: float) -> None:
        conn = idle.pop() if idle else Connection(host, port)
        try:
            status = await conn.post(work[k % len(work)])
        except (OSError, asyncio.IncompleteReadError):
            errors[0] += 1
            conn.close()
            return
        if status == 200:
            lat.append((time.perf_counter() - due) * 1e3)
        else:
            errors[0] += 1
        idle.append(conn)

    n = int(rate * seconds)
    t0 = time.perf_counter() + 0.05
    for k in range(n):
        due = t0 + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    for c in idle:
        c.close()
    out = summary(lat, elapsed, errors[0])
    out["offered_qps"] = rate
    return out


def fmt(r: dict) -> str:
    offered = f"offered {r['offered_qps']:.0f}/s, " if "offered_qps" in r else ""
    return (
        f"{offered}QPS {r['qps']:.0f}, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
        f"{r['requests']} requests, {r['errors']} errors"
    )


# -- one service --------------------------------------------------------------------------
def start_service(
    work_dir: Path, model_dir: str, store_uri: str, batching: bool, extra: str = ""
) -> tuple[subprocess.Popen, str, int]:
    """`vista serve --port 0` on 127.0.0.1 for this store and model; ``extra``: more [serve]
    lines, ';'-separated."""
    cfg = work_dir / "serve.toml"
    cfg.write_text(
        f'[store]\nuri = "{store_uri}"\n[model]\nmodel_dir = "{model_dir}"\n'
        '[serve]\nhost = "127.0.0.1"\nport = 0\nmax_candidates = 4096\n'
        f"batching = {'true' if batching else 'false'}\n"
        + "".join(f"{line.strip()}\n" for line in extra.split(";") if line.strip())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISTA_")}
    env["VISTA_CONFIG"] = str(cfg)
    vista = str(Path(sys.executable).with_name("vista"))
    proc = subprocess.Popen(
        [vista, "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on http://" not in line:
        stop_service(proc)
        raise RuntimeError(f"vista serve did not start: {line}")
    hostport = line.split("listening on http://")[1].split()[0]
    host, port = hostport.rsplit(":", 1)
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://{hostport}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_service(proc)
            raise RuntimeError("vista serve never became ready")
        time.sleep(0.2)
    return proc, host, int(port)


def stop_service(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def sweep(name: str, host: str, port: int, work: list[bytes], args: argparse.Namespace) -> dict:
    """Closed loop over the connection counts, then open loop at fractions of the best
    closed-loop QPS."""
    import uvloop

    out: dict = {"closed": {}, "open": []}

    async def run() -> None:
        for c in args.clients:
            r = await closed_loop(host, port, work, c, args.seconds)
            out["closed"][c] = r
            print(f"{name}, closed loop, {c:2d} connections: {fmt(r)}", flush=True)
        saturation = max(r["qps"] for r in out["closed"].values())
        out["saturation_qps"] = saturation
        for f in args.fractions:
            r = await open_loop(host, port, work, f * saturation, args.seconds)
            r["fraction"] = f
            out["open"].append(r)
            print(f"{name}, open loop at {f:.0%} of {saturation:.0f}/s: {fmt(r)}", flush=True)

    uvloop.run(run())
    import httpx

    out["metrics"] = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
    return out


def one_client(
    scorer_score: Any, services: dict[str, tuple[str, int]], work: list[bytes], rounds: int
) -> dict:
    """One client at a time, side by side: in rounds, 1 s each of in-process ``score`` (on
    this process's main thread) and one connection to each service; medians of the
    rounds' p50s."""
    import numpy as np
    import uvloop

    reqs = [
        (d["user_id"], np.asarray(d["candidate_ids"], dtype=np.int64))
        for d in (json.loads(b) for b in work)
    ]
    p50s: dict[str, list[float]] = {"in_process": [], **{n: [] for n in services}}
    for _ in range(rounds):
        lat: list[float] = []
        stop = time.perf_counter() + 1.0
        k = 0
        while time.perf_counter() < stop:
            u, items = reqs[k % len(reqs)]
            t0 = time.perf_counter()
            scorer_score(u, items)
            lat.append((time.perf_counter() - t0) * 1e3)
            k += 1
        p50s["in_process"].append(statistics.median(lat))
        for name, (host, port) in services.items():
            r = uvloop.run(closed_loop(host, port, work, 1, 1.0))
            p50s[name].append(r["p50_ms"])
    out = {f"{n}_p50_ms": statistics.median(v) for n, v in p50s.items()}
    out["rounds"] = p50s
    print(
        "one client at a time, medians of "
        + str(rounds)
        + " rounds: "
        + ", ".join(f"{n} {statistics.median(v):.2f} ms" for n, v in p50s.items()),
        flush=True,
    )
    return out


def throughput(
    in_process_rate: Any, services: dict[str, tuple[str, int]], work: list[bytes], args: Any
) -> dict:
    """Saturation QPS side by side, interleaved in --rounds rounds of --seconds each: the
    in-process scorer from 2 threads (the better of torch 2 or 1 threads a caller) and each
    service in closed loop at the largest connection count; medians of the rounds (the
    sweep's single points drift too much on this shared machine to pick from)."""
    import uvloop

    qps: dict[str, list[float]] = {"in_process_2_threads": [], **{n: [] for n in services}}
    for _ in range(args.rounds):
        qps["in_process_2_threads"].append(in_process_rate(args.seconds))
        for name, (host, port) in services.items():
            c = max(args.clients)
            qps[name].append(uvloop.run(closed_loop(host, port, work, c, args.seconds))["qps"])
    out = {f"{n}_qps": statistics.median(v) for n, v in qps.items()}
    out["rounds"] = qps
    print(
        f"saturation QPS, medians of {args.rounds} interleaved rounds: "
        + ", ".join(f"{n} {statistics.median(v):.0f}" for n, v in qps.items()),
        flush=True,
    )
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in (("service_batching", "tab:blue"), ("service_no_batching", "tab:red")):
        pts = results[name]["open"]
        qps = [p["qps"] for p in pts]
        ax.plot(qps, [p["p50_ms"] for p in pts], "o-", color=color, label=f"{name} p50")
        ax.plot(qps, [p["p99_ms"] for p in pts], "s--", color=color, alpha=0.6, label=f"{name} p99")
    ip = results["in_process"]["threads_2"]["qps"]
    ax.axvline(ip, color="grey", linestyle=":", label=f"in-process 2 threads, {ip:.0f}/s")
    ax.set_xlabel("answered requests per second (offered load on a fixed schedule)")
    ax.set_ylabel("latency, ms (from scheduled send)")
    ax.set_yscale("log")
    ax.set_title(f"vista serve on 127.0.0.1, m = {results['m']} candidates, 2 cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/vista-bench-serve", help="store and model (kept)")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--m", type=int, default=512, help="candidates a request")
    ap.add_argument("--seconds", type=float, default=4.0, help="per measurement point")
    ap.add_argument("--clients", default="1,2,4,8,16,32")
    ap.add_argument("--fractions", default="0.1,0.3,0.5,0.7,0.85,1.0")
    ap.add_argument("--rounds", type=int, default=7, help="of the one-client comparison")
    ap.add_argument(
        "--serve-conf",
        default="",
        help="extra [serve] settings for both services, ';'-separated (e.g. 'torch_threads = 1')",
    )
    ap.add_argument("--out", default=str(HERE / "out"))
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.fractions = [float(f) for f in args.fractions.split(",")]
    import torch
    import uvloop

    torch.set_num_threads(2)
    work_dir = Path(args.work)
    model_dir, store_uri = build_store(work_dir, args.users)
    work = bodies(args.users, args.m, 200)
    results: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "m": args.m,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "serve_conf": args.serve_conf,
    }
    scorer, rate, results["in_process"] = in_process(model_dir, store_uri, work, args.seconds)
    names = {"service_no_batching": False, "service_batching": True}
    procs = {}
    try:
        for name, batching in names.items():
            procs[name] = start_service(work_dir, model_dir, store_uri, batching, args.serve_conf)
        services = {n: (h, p) for n, (_, h, p) in procs.items()}
        for host, port in services.values():  # warm-up
            uvloop.run(closed_loop(host, port, work, 4, min(1.0, args.seconds)))
        # The load generator's own collector pauses (this process holds torch) would count
        # as service latency: none during the measurements.
        gc.collect()
        gc.freeze()
        gc.disable()
        results["one_client"] = one_client(scorer.score, services, work, args.rounds)
        for name, (host, port) in services.items():
            results[name] = sweep(name, host, port, work, args)
        results["throughput"] = throughput(rate, services, work, args)
    finally:
        gc.enable()
        for proc, _, _ in procs.values():
            stop_service(proc)
    one, b = results["one_client"], results["service_batching"]
    at70 = next((p for p in b["open"] if abs(p["fraction"] - 0.7) < 1e-9), None)
    tp = results["throughput"]
    results["targets"] = {
        "batching_qps_over_in_process_2_threads": tp["service_batching_qps"]
        / tp["in_process_2_threads_qps"],
        "no_batching_qps_over_in_process_2_threads": tp["service_no_batching_qps"]
        / tp["in_process_2_threads_qps"],
        "batching_p99_ms_at_70pct": None if at70 is None else at70["p99_ms"],
        "one_client_batching_p50_minus_in_process_ms": one["service_batching_p50_ms"]
        - one["in_process_p50_ms"],
        "one_client_no_batching_p50_minus_in_process_ms": one["service_no_batching_p50_ms"]
        - one["in_process_p50_ms"],
    }
    print(json.dumps(results["targets"], indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(results, indent=2, default=str))
    plot(results, out / "serve_latency.png")
    print(f"wrote {out / 'serve.json'} and {out / 'serve_latency.png'}")


if __name__ == "__main__":
    main()
