"""Reference AUCs on the synthetic data from its known structure (no learning).

The generator engages a user with a topic at a fixed rate that depends only on
whether the topic is one of the user's interests, so the best a history-based
model can do is estimate, per candidate topic, the user's engagement rate
with it. Two such counting "oracles", scored on the same test targets as
``vista evaluate`` (temporal split, at most --targets per user, evenly spaced):

* full history: engaged / exposed for the candidate's topic over every earlier event;
* last 100: the same over the 100 events before the target (what truncation sees).

The gap between them is how much the long history is worth on this data.

    .venv/bin/python benchmarks/synthetic_oracle.py DATA_DIR --topics 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from summarizer.data.histories import load_histories, temporal_split  # noqa: E402
from summarizer.training.metrics import compute_metrics  # noqa: E402
from summarizer.training.targets import Window, select_targets  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", help="validated synthetic events folder")
    ap.add_argument("--topics", type=int, required=True, help="synth.n_topics of the data")
    ap.add_argument("--targets", type=int, default=32, help="test targets per user")
    ap.add_argument("--window", type=int, default=100)
    args = ap.parse_args()
    _, t2 = temporal_split(args.data)
    hist = load_histories(args.data)
    targets = select_targets(hist, Window(t2, 2**62), args.targets, rng=None)
    labels, full, recent = [], [], []
    for u in range(hist.n_users):
        a, b = hist.offsets[u], hist.offsets[u + 1]
        topic = hist.item_id[a:b] % args.topics
        y = hist.labels[a:b]
        for p in targets[u]:
            same = topic[:p] == topic[p]
            lo = max(0, p - args.window)
            near = topic[lo:p] == topic[p]
            labels.append(y[p])
            # engaged / exposed with a weak prior, so unseen topics score low but not zero
            full.append((y[:p][same].sum() + 0.1) / (same.sum() + 1))
            recent.append((y[lo:p][near].sum() + 0.1) / (near.sum() + 1))
    lab = np.asarray(labels, np.float32)
    print(f"{len(lab):,} test targets, positive rate {lab.mean():.3f}")
    for name, s in (("full history", full), (f"last {args.window}", recent)):
        m = compute_metrics(
            {
                "label": lab,
                "prob": np.clip(np.asarray(s), 1e-4, 1 - 1e-4),
                "rating_true": np.full(len(lab), np.nan),
            }
        )
        print(f"counting oracle, {name:>12}: AUC {m.auc:.4f}")


if __name__ == "__main__":
    main()
