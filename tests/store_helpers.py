"""Shared pieces of the store tests: constants, a settable clock, record builders.

The `clock` and `store` fixtures are in conftest.py."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from summarizer.store import SUMMARIES, SummaryRecord, SummaryStore

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
