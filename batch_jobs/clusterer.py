"""The worker side of the cluster job: TWIN-V2 memory banks, whole histories or one more day.

A partition arrives like summarize's (:mod:`batch_jobs.fold`): Arrow batches
ordered by user, then fold order. Each user's events are encoded by the
model's event encoder (the tokens the ranker attends to; a bank belongs to one
model version) and:

* **full**: the user's whole history is clustered (:func:`cluster_history`:
  engagement levels, recursive k-means, at most C clusters of at most γ
  events). k-means needs every event of the user at once, so unlike the
  summarize fold a task holds one user's events and embeddings in memory
  (10^6 events x d=64: about 260 MB of float32 embeddings);
* **incremental** (day D): the day's events join the nearest cluster of their
  level in the user's stored bank (:func:`assign_new`, exact running sums).
  A user whose bank would break the bounds (a cluster above γ, or a level
  with no cluster), who has no bank yet, or whose bank was made by another
  model version (after a retrain) is sent back to the driver, which
  re-clusters just those users from their whole history. A bank already
  through D is left alone, so a rerun of D is a no-op.

Banks are staged as invisible lance fragments every ``users_per_flush`` users;
the driver commits them once (:func:`batch_jobs.cluster.run_cluster`).
Plain Python (no Spark import), so it is tested directly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from batch_jobs.worker import OUTPUT_SCHEMA, WorkerParams, worker_model
from summarizer.memory.clustering import (
    MemoryBank,
    assign_new,
    cluster_history,
    engagement_levels,
)
from summarizer.store import MEMORY_BANK, MemoryBankRecord, SummaryStore, memory_bank_schema
from summarizer.training.banks import encode_events


@dataclasses.dataclass
class ClusterStats:
    events: int = 0
    users: int = 0
    clustered: int = 0  # whole history clustered
    appended: int = 0  # a day added to the stored bank
    skipped: int = 0  # bank already through this day (rerun)
    recluster: int = 0  # sent back to the driver for a whole-history clustering
    clusters: int = 0
    max_events_held: int = 0
    fragments: int = 0

    def add(self, other: ClusterStats) -> None:
        for f in dataclasses.fields(self):
            if f.name == "max_events_held":
                self.max_events_held = max(self.max_events_held, other.max_events_held)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class PartitionClusterer:
    """Clusters one partition's users; :meth:`run` yields OUTPUT_SCHEMA batches."""

    def __init__(self, params: WorkerParams) -> None:
        import torch

        torch.set_num_threads(params.torch_threads)
        if params.cluster is None:
            raise ValueError("the cluster job's workers need WorkerParams.cluster")
        self.p, self.cluster = params, params.cluster
        self.model = worker_model(params.model_dir, params.model_version, params.data_options)
        self.store = SummaryStore(params.store_uri, storage_options=params.storage_options)
        self.schema = memory_bank_schema(
            self.cluster.max_clusters, self.model.spec.d_model, params.model_version
        )
        self.stats = ClusterStats()
        self.done: list[MemoryBankRecord] = []
        self.recluster: list[int] = []
        self._staged_users = 0
        self._user: int | None = None
        self._parts: list[tuple[np.ndarray, ...]] = []
        self.base: dict[int, MemoryBankRecord | None] = {}

    def _load_banks(self, users: np.ndarray) -> None:
        """Stored banks of a batch's users, in one read of the version the run started from
        (so every worker reads the same banks)."""
        if not self.p.incremental or self.p.base_version is None:
            return
        want = [int(u) for u in np.unique(users) if int(u) not in self.base]
        if want:
            got = self.store.get_memory_banks(want, version=self.p.base_version)
            self.base.update({u: got.get(u) for u in want})

    def _finish_user(self) -> None:
        if self._user is None:
            return
        uid, parts, self._user, self._parts = self._user, self._parts, None, []
        item, ts, action, weight = (np.concatenate(c) for c in zip(*parts, strict=True))
        n = len(item)
        self.stats.users += 1
        self.stats.events += n
        self.stats.max_events_held = max(self.stats.max_events_held, n)
        level = engagement_levels(action, weight)
        if not self.p.incremental:
            emb = encode_events(self.model, item, ts, action, weight, None)
            bank = cluster_history(emb, item, action, level, self.cluster)
            self.stats.clustered += 1
            self._add(uid, bank, int(ts.max()))
            return
        base = self.base.pop(uid, None)
        # No bank yet, or one made by another model (after a retrain): its tokens are in
        # the wrong embedding space, so the whole history is clustered again.
        if base is None or not base.has_batch_state or base.model_version != self.p.model_version:
            self.recluster.append(uid)
            self.stats.recluster += 1
            return
        if base.through_day is not None and base.through_day >= self.p.through_day:
            self.stats.skipped += 1
            return
        emb = encode_events(self.model, item, ts, action, weight, base.last_ts)
        bank, needs = assign_new(base.to_bank(), emb, level, self.cluster)
        if needs:
            self.recluster.append(uid)
            self.stats.recluster += 1
            return
        self.stats.appended += 1
        last = int(ts.max()) if base.last_ts is None else max(int(ts.max()), base.last_ts)
        self._add(uid, bank, last)

    def _add(self, user_id: int, bank: MemoryBank, last_ts: int) -> None:
        self.stats.clusters += len(bank)
        self.done.append(
            MemoryBankRecord.from_bank(
                bank,
                user_id,
                self.p.model_version,
                self.p.run_time,
                last_ts=last_ts,
                through_day=self.p.through_day,
            )
        )

    def _flush(self) -> Iterator[pa.RecordBatch]:
        if self.done:
            records, self.done = self.done, []
            staged = self.store.stage_fragments(MEMORY_BANK, records, schema=self.schema)
            self.stats.fragments += len(staged.fragments)
            self._staged_users += len(records)
            if (
                self.p.fail_after_users is not None
                and self._staged_users >= self.p.fail_after_users
            ):
                raise RuntimeError(f"injected failure after staging {self._staged_users} users")
            yield pa.RecordBatch.from_pylist(
                [{"kind": MEMORY_BANK, "payload": staged.to_json()}], schema=OUTPUT_SCHEMA
            )

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if not batch.num_rows:
                continue
            users = batch.column("user_id").to_numpy()
            self._load_banks(users)
            cols = (
                np.array(batch.column("item_id").to_numpy(), dtype=np.int64),
                np.array(batch.column("ts").to_numpy(), dtype=np.int64),
                np.array(batch.column("action").to_numpy(), dtype=np.int64),
                np.array(
                    batch.column("weight").cast(pa.float32()).fill_null(float("nan")).to_numpy(),
                    dtype=np.float32,
                ),
            )
            starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
            ends = np.r_[starts[1:], len(users)]
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                uid = int(users[a])
                if uid != self._user:
                    self._finish_user()
                    self._user = uid
                self._parts.append(tuple(c[a:b] for c in cols))
            if len(self.done) >= self.p.users_per_flush:
                yield from self._flush()
        self._finish_user()
        yield from self._flush()
        rows = [{"kind": "stats", "payload": json.dumps(dataclasses.asdict(self.stats))}]
        if self.recluster:
            rows.append({"kind": "recluster", "payload": json.dumps(self.recluster)})
        yield pa.RecordBatch.from_pylist(rows, schema=OUTPUT_SCHEMA)


def cluster_partition(
    batches: Iterable[pa.RecordBatch], params: WorkerParams
) -> Iterator[pa.RecordBatch]:
    """mapInArrow entry point: one partition's sorted events -> staged banks + stats."""
    yield from PartitionClusterer(params).run(batches)
