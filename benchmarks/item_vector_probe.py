"""How good are item vectors, read by the ridge fold-in? (issue 21)

The ridge read-out scores a candidate from the user's preference in item-vector space,
solved from their history (``classic.fold_in_scores``). With the read-out fixed, the AUC
says how much item structure a source of item vectors holds. Sources, each on the
harness's split and targets (``eval_targets_per_user`` a user), the fold-in's L2 chosen
on validation:

* ``none``: no vectors (the user's mean response plus the item bias);
* ``cooccurrence``: every candidate of the default start's search
  (``classic.cooccurrence_grid``: exposures or engaged events x width);
* ``topic`` (synthetic data, ``--topics N``): the generator's own item topic
  (``item % N``) one-hot, and randomly projected to 64 dimensions -- the ceiling of
  this read-out when item structure is known, not something a model may use.

    .venv/bin/python benchmarks/item_vector_probe.py DATA_DIR [--topics 400] [--out F.jsonl]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from summarizer.data.histories import load_histories, temporal_split  # noqa: E402
from summarizer.training import classic  # noqa: E402
from summarizer.training.metrics import auc_score  # noqa: E402
from summarizer.training.targets import Window  # noqa: E402


def with_vectors(base: classic.MFFit, items: np.ndarray, vec: np.ndarray) -> classic.MFFit:
    """``base``'s biases and mean with other item vectors (rows in ``items`` order)."""
    rows = [base.item_index[int(i)] for i in items]
    item_vec = np.concatenate([vec, base.item_vec[rows, -1:]], 1)
    index = {int(i): j for j, i in enumerate(items)}
    return classic.MFFit(base.mu, base.user_vec, index, item_vec, base.lam)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", help="validated events folder")
    ap.add_argument("--topics", type=int, help="synth.n_topics (adds the 'topic' ceiling)")
    ap.add_argument("--targets", type=int, default=64, help="targets a user per window")
    ap.add_argument("--out", help="append one JSON line a source here")
    args = ap.parse_args()

    hist = load_histories(args.data)
    t1, t2 = temporal_split(args.data)
    val_t = classic.Targets.of(hist, Window(t1, t2), args.targets)
    test_t = classic.Targets.of(hist, Window(t2, 2**62), args.targets)
    y_val, y_test = hist.labels[val_t.idx], hist.labels[test_t.idx]
    print(f"{hist.n_events:,} events, {len(val_t.idx):,} val / {len(test_t.idx):,} test targets")

    def probe(name: str, fit: classic.MFFit, extra: dict[str, object]) -> None:
        t0 = time.perf_counter()
        aucs = {
            lam: auc_score(
                y_val, classic.fold_in_scores(dataclasses.replace(fit, lam=lam), hist, val_t)
            )
            for lam in classic.COOC_L2_GRID
        }
        lam = max(aucs, key=lambda k: aucs[k])
        test = auc_score(
            y_test, classic.fold_in_scores(dataclasses.replace(fit, lam=lam), hist, test_t)
        )
        row = {"source": name, **extra, "fold_in_l2": lam, "val_auc": aucs[lam], "test_auc": test}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name:32s} {extra}  l2 {lam:g}  val {aucs[lam]:.4f}  test {test:.4f}", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    grid = classic.cooccurrence_grid(hist, t1, classic.COOC_FACTORS_GRID)
    base = grid[0][2]
    items = np.array(sorted(base.item_index), dtype=np.int64)
    probe("none", with_vectors(base, items, np.zeros((len(items), 0))), {})
    for k, engaged, fit in grid:
        probe("cooccurrence", fit, {"factors": k, "engaged_only": engaged})
    if args.topics:
        onehot = np.zeros((len(items), args.topics))
        onehot[np.arange(len(items)), items % args.topics] = 1.0
        probe("topic (ceiling)", with_vectors(base, items, onehot), {"dim": args.topics})
        proj = np.random.default_rng(0).normal(size=(args.topics, 64)) / 8.0
        probe("topic, projected", with_vectors(base, items, onehot @ proj), {"dim": 64})


if __name__ == "__main__":
    main()
