"""The worker side of summarize: fold a partition's events into per-user states, stage them.

A partition arrives as Arrow record batches ordered by user, then fold order
(arrival day ``dt``, then ``ts``, ``item_id``, ``action``), at most
``spark.sql.execution.arrow.maxRecordsPerBatch`` rows each. A user's events
can span several batches; the user's state is carried from one batch to the
next and folded a slice at a time, so no task ever holds more than one batch
of a user's events (the fold-in-pieces law makes that equal to one pass).

Every ``users_per_flush`` finished users, their tokens are read out in one
batched call and both tables' rows (``state`` and ``summaries``) are written
as invisible lance fragments (:meth:`SummaryStore.stage_fragments`). What the
partition returns is small: the staged fragments' metadata and counters. The
driver commits them once (the publish job); nothing large is collected.

This module is plain Python (no Spark import), so it is tested directly and
runs under any engine that can hand it sorted Arrow batches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from batch_jobs.worker import OUTPUT_SCHEMA, WorkerParams, task_device, worker_model
from summarizer.store import (
    STATE,
    SUMMARIES,
    StateColumns,
    SummaryStore,
    state_batch,
    summary_batch,
)


@dataclasses.dataclass
class _User:
    user_id: int
    state: Any  # SummaryState; its kv is block[slot]
    folded: bool  # False: the base state already holds this run's day (rerun), nothing folded
    block: Any  # float64 (n, *state_shape): the states of the users who started in one batch
    slot: int


@dataclasses.dataclass
class PartitionStats:
    events: int = 0
    users: int = 0
    users_skipped: int = 0  # incremental rerun: state already through this day
    new_users: int = 0
    max_events_held: int = 0  # the most events of one user in memory at once
    fragments: int = 0
    tasks: int = 0
    tasks_on_gpu: int = 0
    # Tasks Spark gave a GPU that torch could not use (they folded on the CPU), and why.
    gpu_unusable: int = 0
    gpu_unusable_reason: str = ""

    def add(self, other: PartitionStats) -> None:
        for f in dataclasses.fields(self):
            if f.name == "max_events_held":
                self.max_events_held = max(self.max_events_held, other.max_events_held)
            elif f.name == "gpu_unusable_reason":
                self.gpu_unusable_reason = self.gpu_unusable_reason or other.gpu_unusable_reason
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class PartitionFolder:
    """Folds one partition's sorted batches; :meth:`run` yields OUTPUT_SCHEMA batches.

    The states of the users who start in one batch live in one float64 block (filled from
    the stored rows, converted as they are copied); the fold adds into them in place, and a
    flush reads the finished users' states out of their blocks in runs, straight into the
    stored precision, reads out the tokens from that array and writes both tables' rows
    from arrays. No per-user copies or record objects: an incremental day's cost is per
    touched user, so per-user overhead is most of it.
    """

    def __init__(self, params: WorkerParams) -> None:
        import torch

        from summarizer.store.schema import kv_dtype_of

        torch.set_num_threads(params.torch_threads)  # one thread per Python worker
        self.p = params
        self.stats = PartitionStats(tasks=1)
        placed = task_device(params.device)
        self.device = torch.device(placed.device)
        self.stats.tasks_on_gpu = int(self.device.type == "cuda")
        if placed.unusable:
            self.stats.gpu_unusable = 1
            self.stats.gpu_unusable_reason = f"GPU {placed.gpu_address}: {placed.unusable}"
        self.model = worker_model(
            params.model_dir, params.model_version, params.data_options, placed.device
        )
        self.summ = self.model.require_summarizer()
        self.store = SummaryStore(params.store_uri, storage_options=params.storage_options)
        # Written in the state table's precision (float32; float64 for older tables).
        self.kv_dtype = "float32"
        if self.store.exists(STATE):
            self.kv_dtype = kv_dtype_of(self.store.schema(STATE))
        self.done: list[_User] = []
        self.current: _User | None = None
        self.base: dict[int, tuple[StateColumns, int]] = {}
        self._staged_users = 0

    # -- base states (incremental) ----------------------------------------------------------
    def _load_base(self, user_ids: list[int]) -> None:
        if not self.p.incremental or self.p.base_version is None:
            return
        want = [u for u in user_ids if u not in self.base]
        if want:
            cols = self.store.get_state_columns(want, version=self.p.base_version)
            if cols is not None:
                self.base.update((u, (cols, i)) for i, u in enumerate(cols.user_id.tolist()))

    def _start(self, user_ids: list[int]) -> list[_User]:
        """The users who start in this batch, their states in one new block."""
        import torch

        from summarizer.model.summarization import SummaryState

        found = [self.base.pop(u, None) for u in user_ids]
        for uid, hit in zip(user_ids, found, strict=True):  # before touching any state
            if hit is not None and hit[0].model_version[hit[1]] != self.p.model_version:
                raise RuntimeError(
                    f"user {uid}: stored state was made by model "
                    f"{hit[0].model_version[hit[1]][:12]}, this run uses "
                    f"{self.p.model_version[:12]}; run `vista job summarize --full` under the "
                    "new model first"
                )
        shape = (len(user_ids), *self.summ.state_shape)
        new = any(hit is None for hit in found)
        block = (
            torch.zeros(shape, dtype=torch.float64)
            if new
            else torch.empty(shape, dtype=torch.float64)
        )
        # Stored rows are copied in runs of consecutive slots (new users, who start from
        # zero, break the runs), each run converted to float64 as it is copied.
        slot = 0
        while slot < len(found):
            hit = found[slot]
            if hit is None:
                slot += 1
                continue
            end, rows = slot + 1, [hit[1]]
            while end < len(found) and (nxt := found[end]) is not None and nxt[0] is hit[0]:
                rows.append(nxt[1])
                end += 1
            block[slot:end].copy_(torch.from_numpy(hit[0].kv[np.asarray(rows)]))
            slot = end
        users = []
        for slot, (uid, hit) in enumerate(zip(user_ids, found, strict=True)):
            kv = block[slot]
            if hit is None:
                self.stats.new_users += 1
                users.append(_User(uid, SummaryState(kv, 0, None, None), True, block, slot))
                continue
            cols, row = hit
            through = cols.through_day[row]
            already = through is not None and through >= self.p.through_day
            if already:
                self.stats.users_skipped += 1
            state = SummaryState(kv, cols.n_events[row], cols.first_ts[row], cols.last_ts[row])
            users.append(_User(uid, state, not already, block, slot))
        return users

    # -- the fold ----------------------------------------------------------------------------
    def _fold_batch(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        users = batch.column("user_id").to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        ids = users[starts].tolist()
        # The batch's first user may be the previous batch's last one, continued.
        cont = self.current is not None and self.current.user_id == ids[0]
        self._load_base(ids[1:] if cont else ids)
        order = self._start(ids[1:] if cont else ids)
        if cont:
            assert self.current is not None
            order.insert(0, self.current)
        # Arrow's read-only arrays: _fold takes the segments' rows out of them (copies).
        item = np.asarray(batch.column("item_id").to_numpy(), dtype=np.int64)
        ts = np.asarray(batch.column("ts").to_numpy(), dtype=np.int64)
        action = np.asarray(batch.column("action").to_numpy(), dtype=np.int64)
        weight = np.asarray(
            batch.column("weight").cast(pa.float32()).fill_null(float("nan")).to_numpy(),
            dtype=np.float32,
        )
        todo: list[tuple[_User, int, int]] = []  # segments to fold, in batch order
        for user, a, b in zip(order, starts.tolist(), ends.tolist(), strict=True):
            if user is not self.current:
                self._finish_current()
                self.current = user
            self.stats.events += b - a
            self.stats.max_events_held = max(self.stats.max_events_held, b - a)
            if user.folded:
                todo.append((user, a, b))
        if todo:
            self._fold(todo, item, ts, action, weight)
        if self.current is not None and self.current.block.shape[0] > 1:
            # It may go on for many batches: own its state, so its batch's block can go.
            cur = self.current
            cur.block = cur.block[cur.slot : cur.slot + 1].clone()
            cur.slot, cur.state.kv = 0, cur.block[0]
        if len(self.done) >= self.p.users_per_flush:
            yield self._flush()

    def _fold(
        self,
        todo: list[tuple[_User, int, int]],
        item: np.ndarray,
        ts: np.ndarray,
        action: np.ndarray,
        weight: np.ndarray,
    ) -> None:
        from summarizer.model.encoder import EventBatch

        # One encoder pass for every user of the batch (many users have few events).
        rows = np.concatenate([np.arange(a, b) for _, a, b in todo])
        events = EventBatch.from_numpy(item[rows], ts[rows], action[rows], weight[rows])
        offsets = np.r_[0, np.cumsum([b - a for _, a, b in todo])].tolist()
        # In place: the states are views into their blocks.
        self.summ.fold_segments([u.state for u, _, _ in todo], events, offsets, in_place=True)

    def _finish_current(self) -> None:
        if self.current is not None:
            self.done.append(self.current)
            self.stats.users += 1
            self.current = None

    def _gather(self, users: list[_User]) -> Any:
        """The users' states as one (n, *state_shape) tensor in the stored precision: one
        converting copy per run of users that sit side by side in one block."""
        import torch

        dtype = torch.float32 if self.kv_dtype == "float32" else torch.float64
        out = torch.empty((len(users), *self.summ.state_shape), dtype=dtype)
        i = 0
        while i < len(users):
            block, slot = users[i].block, users[i].slot
            j = i + 1
            while j < len(users) and users[j].block is block and users[j].slot == slot + j - i:
                j += 1
            out[i:j].copy_(block[slot : slot + j - i])
            i = j
        return out

    def _flush(self) -> pa.RecordBatch:
        import torch

        users, self.done = self.done, []
        kv = self._gather(users)
        n = len(users)
        n_events = [u.state.n_events for u in users]
        with torch.no_grad():
            tokens = self.summ.readout_batch(kv, torch.tensor(n_events))
            tokens = tokens.to(device="cpu", dtype=torch.float16)
        ids = [u.user_id for u in users]
        first = [u.state.first_ts for u in users]
        last = [u.state.last_ts for u in users]
        mv, at = self.p.model_version, [self.p.run_time] * n
        states = state_batch(
            ids,
            mv,
            kv.numpy(),
            n_events,
            first,
            last,
            at,
            [self.p.through_day] * n,
            kv_dtype=self.kv_dtype,
        )
        moments = None
        if self.summ.ridge is not None:  # the ridge read-out's moments travel with the tokens
            moments = self.summ.moments_part(kv).reshape(n, -1).float().numpy()
        summaries = summary_batch(ids, mv, tokens.numpy(), n_events, first, last, at, moments)
        staged = [
            self.store.stage_fragments(STATE, states),
            self.store.stage_fragments(SUMMARIES, summaries),
        ]
        self.stats.fragments += sum(len(s.fragments) for s in staged)
        self._staged_users += n
        if self.p.fail_after_users is not None and self._staged_users >= self.p.fail_after_users:
            raise RuntimeError(f"injected failure after staging {self._staged_users} users")
        return pa.RecordBatch.from_pylist(
            [{"kind": s.table, "payload": s.to_json()} for s in staged], schema=OUTPUT_SCHEMA
        )

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                yield from self._fold_batch(batch)
        self._finish_current()
        if self.done:
            yield self._flush()
        stats = json.dumps(dataclasses.asdict(self.stats))
        yield pa.RecordBatch.from_pylist(
            [{"kind": "stats", "payload": stats}], schema=OUTPUT_SCHEMA
        )


def fold_partition(
    batches: Iterable[pa.RecordBatch], params: WorkerParams
) -> Iterator[pa.RecordBatch]:
    """mapInArrow entry point: one partition's sorted events -> staged fragments + stats."""
    yield from PartitionFolder(params).run(batches)
