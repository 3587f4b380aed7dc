"""Training throughput of the default model: targets/s and events/s of training epochs.

Trains the ``[model]`` default (VISTA K=16 + the ridge read-out, its item vectors started
from MF) on a validated events folder with the ``[train]`` defaults, for a fixed number
of epochs without early stopping, and reports per epoch the targets trained (requests
scored against their candidate), the events the causal forward read (every event of
every user with a target, up to its last target) and the wall time; also the MF start's
seconds. Medians over the epochs.

    .venv/bin/python benchmarks/train_throughput.py DATA_DIR --epochs 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from summarizer.config import VistaConfig  # noqa: E402
from summarizer.data.histories import load_histories, temporal_split  # noqa: E402
from summarizer.model.vista_model import VistaModel  # noqa: E402
from summarizer.training import pretrain  # noqa: E402
from summarizer.training.targets import Window, iter_batches, select_targets  # noqa: E402
from summarizer.training.train import batch_loss, make_optimizers  # noqa: E402
from summarizer.training.workflow import model_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", help="validated events folder")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    cfg = VistaConfig()
    tc = cfg.train.replace(threads=args.threads)
    t1, t2 = temporal_split(args.data)
    hist = load_histories(args.data)
    spec = model_spec(cfg, rating_head=bool(np.any(~np.isnan(hist.weight))))
    torch.manual_seed(0)
    model = VistaModel(spec)
    train_w, val_w = Window(-(2**62), t1), Window(t1, t2)
    t0 = time.perf_counter()
    mf_seconds = 0.0
    if model.ridge is not None:
        pretrain.init_ridge_from_mf(model, hist, train_w, val_w, tc.eval_targets_per_user, 0)
        mf_seconds = time.perf_counter() - t0
    optimizers = make_optimizers(model, tc)
    rng = np.random.default_rng(0)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        targets = select_targets(hist, train_w, tc.targets_per_user, rng)
        n_targets = int(sum(len(p) for p in targets))
        n_events = int(sum(int(p[-1]) + 1 for p in targets if len(p)))
        model.train()
        t0 = time.perf_counter()
        for batch in iter_batches(hist, targets, tc, rng):
            loss, _ = batch_loss(model, batch, tc)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
        s = time.perf_counter() - t0
        epochs.append({"epoch": epoch, "targets": n_targets, "events": n_events, "seconds": s})
        print(
            f"epoch {epoch}: {n_targets:,} targets, {n_events:,} events in {s:.1f} s "
            f"({n_targets / s:,.0f} targets/s, {n_events / s:,.0f} events/s)",
            flush=True,
        )
    result = {
        "data": str(args.data),
        "users": hist.n_users,
        "events": hist.n_events,
        "threads": args.threads,
        "spec": spec.model_dump(),
        "mf_start_seconds": mf_seconds,
        "epochs": epochs,
        "median_targets_per_s": statistics.median(e["targets"] / e["seconds"] for e in epochs),
        "median_events_per_s": statistics.median(e["events"] / e["seconds"] for e in epochs),
    }
    print(
        f"median: {result['median_targets_per_s']:,.0f} targets/s, "
        f"{result['median_events_per_s']:,.0f} events/s; MF start {mf_seconds:.1f} s"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
