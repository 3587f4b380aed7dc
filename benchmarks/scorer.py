"""Benchmark: the online scorer on this CPU (K=128 summary tokens, d=64).

A. End to end: ``OnlineScorer.score(user, m candidates)`` against a LanceDB
   store of --users users (store read included) and the model part alone
   (scoring given tokens), p50/p99 over --requests requests, for
   m in {16, 128, 512, 2048}; QPS of ``score`` with 2 threads.
B. Side by side in one run, m=512 candidates, history length n in
   {10^3, 10^4, 10^5, 10^6}: VISTA amortized (tokens -> scores; independent of
   n), regular per-candidate scoring (m passes), and full-history target
   attention over the user's n raw events (their keys/values precomputed,
   the most favourable setting for it: only the attention is timed).
Writes benchmarks/out/scorer.json and benchmarks/out/scorer_vs_history.png.

    .venv/bin/python benchmarks/scorer.py [--users 10000] [--requests 200] [--batches 15]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def publish_random(store, users: int, K: int, d: int, version: str, seed: int = 0) -> None:  # noqa: ANN001
    """Publish and promote ``users`` rows of random K x d tokens (made an hour ago) in
    batches of 2,000: a store to read from, for benchmarks that only time reads."""
    import numpy as np
    import pyarrow as pa

    from summarizer.store import summaries_schema

    rng = np.random.default_rng(seed)
    now = dt.datetime.now(dt.UTC)

    def batches():  # noqa: ANN202
        for lo in range(0, users, 2000):
            ids = np.arange(lo, min(lo + 2000, users))
            tok = rng.standard_normal((len(ids), K * d)).astype(np.float16)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(ids, pa.int64()),
                    pa.array([version] * len(ids)),
                    pa.FixedSizeListArray.from_arrays(pa.array(tok.reshape(-1)), K * d),
                    pa.array(rng.integers(10, 10**6, len(ids)), pa.int64()),
                    pa.array(np.full(len(ids), 1_700_000_000), pa.int64()),
                    pa.array(np.full(len(ids), int(now.timestamp()) - 3600), pa.int64()),
                    pa.array([now] * len(ids), pa.timestamp("us", tz="UTC")),
                ],
                schema=summaries_schema(K, d, version),
            )

    store.publish(batches(), schema=summaries_schema(K, d, version), promote=True)


def build(work: Path, users: int) -> tuple[str, str]:
    import torch

    from summarizer.config import ModelSpec
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel
    from summarizer.store import SummaryStore

    model_dir, store_uri = work / "model", work / "store"
    if (work / "ok").exists():
        return str(model_dir), str(store_uri)
    shutil.rmtree(work, ignore_errors=True)
    torch.manual_seed(0)
    spec = ModelSpec(num_seeds=128, d_model=64)
    version = artifacts.save(VistaModel(spec), model_dir)
    store = SummaryStore(str(store_uri))
    publish_random(store, users, spec.num_seeds, spec.d_model, version)
    (work / "ok").write_text("ok")
    return str(model_dir), str(store_uri)


def part_a(model_dir: str, store_uri: str, users: int, requests: int) -> dict:
    import numpy as np
    import torch

    from online_scorer import OnlineScorer

    scorer = OnlineScorer.open(store_uri, model_dir, max_candidates=4096)
    rng = np.random.default_rng(1)
    out = {}
    for m in (16, 128, 512, 2048):
        items = [rng.integers(0, 10**7, m) for _ in range(requests)]
        uids = rng.integers(0, users, requests)
        for i in range(5):
            scorer.score(int(uids[i]), items[i])
        e2e, model_only = [], []
        for i in range(requests):
            t0 = time.perf_counter()
            scorer.score(int(uids[i]), items[i])
            e2e.append((time.perf_counter() - t0) * 1e3)
        summaries = [scorer.reader.get_one(int(u)) for u in uids]
        model = scorer._models[scorer.model_version]
        for i in range(requests):
            t0 = time.perf_counter()
            scorer._forward(
                model, [summaries[i]], [torch.from_numpy(items[i])], [None], time.time()
            )
            model_only.append((time.perf_counter() - t0) * 1e3)
        # QPS with 2 threads, 2 s
        done = [0, 0]
        stop = time.perf_counter() + 2.0

        def worker(j: int, stop=stop, uids=uids, items=items, done=done) -> None:  # noqa: ANN001
            k = 0
            while time.perf_counter() < stop:
                scorer.score(int(uids[k % requests]), items[k % requests])
                done[j] += 1
                k += 1

        ts = [threading.Thread(target=worker, args=(j,)) for j in range(2)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        qps = sum(done) / (time.perf_counter() - t0)
        out[m] = {
            "e2e_p50_ms": statistics.median(e2e),
            "e2e_p99_ms": pct(e2e, 0.99),
            "model_p50_ms": statistics.median(model_only),
            "model_p99_ms": pct(model_only, 0.99),
            "qps_2_threads": qps,
        }
        print(f"m={m:5}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[m].items()))
    return out


def part_batches(model_dir: str, store_uri: str, users: int, rounds: int) -> dict:
    """The model part of a jagged batch of R requests of 512 candidates (what a batching
    service scores at once), per request: in pieces of at most
    ``SERVING_PIECE_CANDIDATES`` candidates (the default) and in one pass, alternating
    in ``rounds`` rounds (medians of the rounds' medians)."""
    import numpy as np
    import torch

    import summarizer.model.vista_model as vista_model
    from online_scorer import OnlineScorer

    scorer = OnlineScorer.open(store_uri, model_dir, max_candidates=4096)
    model = scorer._models[scorer.model_version]
    rng = np.random.default_rng(3)
    default = vista_model.SERVING_PIECE_CANDIDATES
    out = {}
    for R in (1, 4, 16):
        summaries = [scorer.reader.get_one(int(u)) for u in rng.integers(0, users, R)]
        items = [torch.from_numpy(rng.integers(0, 10**7, 512)) for _ in range(R)]
        reps = max(5, 80 // R)
        medians: dict[str, list[float]] = {"pieces": [], "one_pass": []}
        for _ in range(rounds):
            for name, piece in (("pieces", default), ("one_pass", 10**9)):
                vista_model.SERVING_PIECE_CANDIDATES = piece
                xs = []
                for i in range(reps + 2):
                    t0 = time.perf_counter()
                    scorer._forward(model, summaries, items, [None] * R, time.time())
                    if i >= 2:
                        xs.append((time.perf_counter() - t0) * 1e3 / R)
                medians[name].append(statistics.median(xs))
        vista_model.SERVING_PIECE_CANDIDATES = default
        out[R] = {f"{k}_ms_per_request": statistics.median(v) for k, v in medians.items()}
        print(f"batch of {R:2d} x 512: " + ", ".join(f"{k} {v:.3f}" for k, v in out[R].items()))
    return out


def part_b(model_dir: str, repeats: int) -> dict:
    import numpy as np
    import torch

    from summarizer.model import artifacts
    from summarizer.model.encoder import EventBatch, previous_times
    from summarizer.model.ranker import context_features

    model, _ = artifacts.load(model_dir)
    ranker, m = model.ranker, 512
    rng = np.random.default_rng(2)
    items = torch.from_numpy(rng.integers(0, 10**7, m))
    ctx = context_features(torch.tensor([1000]), torch.tensor([1.0]))

    def run(cand: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q_off = torch.tensor([0, cand.shape[0]])
        kv_off = torch.tensor([0, k.shape[0]])
        return ranker(cand, k, v, q_off, kv_off, ctx)[0]

    def timed(fn) -> float:  # noqa: ANN001
        fn()
        xs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            xs.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(xs)

    out = {}
    with torch.no_grad():
        for n in (10**3, 10**4, 10**5, 10**6):
            ev = EventBatch.from_numpy(
                rng.integers(0, 10**7, n),
                np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)),
                rng.integers(0, 4, n),
                None,
            )
            state, tokens = model.require_summarizer().summarize(ev)

            def vista(tokens=tokens) -> None:  # noqa: ANN001
                cand = ranker.embed_candidates(items)
                k, v = ranker.project_memory(tokens)
                run(cand, k, v)

            def per_candidate(tokens=tokens) -> None:  # noqa: ANN001
                k, v = ranker.project_memory(tokens)
                for j in range(m):
                    run(ranker.embed_candidates(items[j : j + 1]), k, v)

            # Full history: event keys/values precomputed (favourable to it); attention timed.
            enc = torch.cat(
                [
                    model.encoder(
                        ev.slice(a, a + 65536), previous_times(ev.ts[a : a + 65536], None)
                    )
                    for a in range(0, n, 65536)
                ]
            )
            fk, fv = ranker.project_memory(enc)

            def full(fk=fk, fv=fv) -> None:  # noqa: ANN001
                run(ranker.embed_candidates(items), fk, fv)

            reps = max(1, repeats if n <= 10**5 else 3)
            row = {
                "vista_ms": timed(vista),
                "per_candidate_ms": timed(per_candidate) if n == 10**3 else None,
                "full_history_ms": timed(full)
                if reps == repeats
                else statistics.median([timed(full) for _ in range(reps)]),
            }
            if row["per_candidate_ms"] is None:
                row["per_candidate_ms"] = out[10**3]["per_candidate_ms"]  # independent of n
            row["full_over_vista"] = row["full_history_ms"] / row["vista_ms"]
            out[n] = row
            print(f"n={n:>8}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return out


def plot(b: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(b)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(ns, [b[n]["full_history_ms"] for n in ns], "o-", label="full-history target attention")
    ax.plot(
        ns, [b[n]["per_candidate_ms"] for n in ns], "s--", label="VISTA, regular (per candidate)"
    )
    ax.plot(ns, [b[n]["vista_ms"] for n in ns], "^-", label="VISTA, amortized")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("history length n (events)")
    ax.set_ylabel("time to score 512 candidates (ms)")
    ax.set_title("Online cost vs history length (CPU, K=128, d=64)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(HERE / "out" / "scorer"))
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (scorer processes)")
    ap.add_argument("--skip-history", action="store_true", help="part A only")
    ap.add_argument(
        "--batches",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also the model part of batches of 1, 4, 16 requests, pieces vs one pass",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    model_dir, store_uri = build(work, args.users)
    a = part_a(model_dir, store_uri, args.users, args.requests)
    if args.batches:
        a["batches"] = part_batches(model_dir, store_uri, args.users, args.batches)
    out = HERE / "out"
    out.mkdir(parents=True, exist_ok=True)  # a fresh clone has no benchmarks/out/
    if args.skip_history:
        (out / "scorer.json").write_text(json.dumps({"end_to_end": a}, indent=2))
        print(f"wrote {out / 'scorer.json'}")
        return
    b = part_b(model_dir, args.repeats)
    (out / "scorer.json").write_text(json.dumps({"end_to_end": a, "vs_history": b}, indent=2))
    plot(b, out / "scorer_vs_history.png")
    print(f"wrote {out / 'scorer.json'} and {out / 'scorer_vs_history.png'}")


if __name__ == "__main__":
    main()
