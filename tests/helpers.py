"""Shared pieces of the tests: the repository's paths, the store tests' constants, settable
clock and record builders, and the model tests' small spec, random events and one-user batches.

The `clock` and `store` fixtures are in tests/conftest.py, the `model` fixture in
tests/summarizer/conftest.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from summarizer.config import ModelSpec
from summarizer.model.encoder import EventBatch
from summarizer.model.summarization import SummaryState, VistaSummarizer
from summarizer.store import SUMMARIES, SummaryRecord, SummaryStore
from summarizer.training.targets import TargetBatch

REPO = Path(__file__).resolve().parents[1]
# Real data beside the project (tests that use it are skipped where it is absent).
SHARED_DATA = REPO.parent / "shared" / "data"

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
MV = "0123456789abcdef"
K, D = 4, 8


class FakeClock:
    def __init__(self, now: dt.datetime) -> None:
        self.t = now.timestamp()

    def __call__(self) -> float:
        return self.t


def records(ids, marker: int = 0, seed: int = 0, mv: str = MV, at: dt.datetime = T0):
    rng = np.random.default_rng(seed)
    return [
        SummaryRecord(
            int(u), mv, rng.standard_normal((K, D)).astype(np.float16), marker, 100 + u, 200 + u, at
        )
        for u in ids
    ]


def rows_of(store: SummaryStore, table: str = SUMMARIES) -> pa.Table:
    return store.location.open(table).to_table()


# -- the model tests --------------------------------------------------------------------------


SMALL = ModelSpec(
    num_seeds=8,
    d_model=32,
    num_heads=4,
    feature_dim=8,
    num_layers=2,
    item_buckets=1024,
    chunk_size=7,
)


def random_events(n: int, seed: int = 0, with_weight: bool = False) -> EventBatch:
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 5, n) if with_weight else None
    return EventBatch.from_numpy(
        rng.integers(0, 5000, n),
        np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)),
        rng.integers(0, 4, n),
        w,
    )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def back_to_back(events: list[EventBatch]) -> tuple[EventBatch, list[int]]:
    """Users' events laid back to back, and the offsets of each user's segment."""
    joined = EventBatch(
        *(torch.cat([getattr(e, f) for e in events]) for f in EventBatch.__dataclass_fields__)
    )
    return joined, np.r_[0, np.cumsum([len(e) for e in events])].tolist()


def assert_folds_like_one_at_a_time(
    summ: VistaSummarizer,
    states: list[SummaryState],
    events: list[EventBatch],
    got: list[SummaryState],
) -> None:
    for state, ev, out in zip(states, events, got, strict=True):
        want = summ.fold(state, ev)
        assert (out.n_events, out.first_ts, out.last_ts) == (
            want.n_events,
            want.first_ts,
            want.last_ts,
        )
        assert torch.allclose(out.kv, want.kv, rtol=1e-5, atol=1e-5)


def one_user_batch(
    events: EventBatch,
    positions: list[int],
    items: list[list[int]],
    now: int,
    summary_pos: list[int] | None = None,
) -> TargetBatch:
    counts = [len(x) for x in items]
    flat = [i for x in items for i in x]
    return TargetBatch(
        events=events,
        offsets=torch.tensor([0, len(events)]),
        req_user=torch.zeros(len(positions), dtype=torch.long),
        req_pos=torch.tensor(positions),
        req_ts=torch.full((len(positions),), now),
        cand_offsets=torch.tensor(np.r_[0, np.cumsum(counts)]),
        cand_item=torch.tensor(flat),
        cand_label=torch.zeros(len(flat)),
        cand_rating=torch.full((len(flat),), float("nan")),
        req_summary_pos=None if summary_pos is None else torch.tensor(summary_pos),
    )
