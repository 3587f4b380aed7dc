"""A synthetic lifelong-history generator with known long-range structure.

The generative process (all draws from ``numpy.random.default_rng([seed, user])``,
so a user's history depends only on the seed and the user id):

* **Items and topics.** ``n_topics * items_per_topic`` items; item ``i`` belongs
  to topic ``i % n_topics``. Within a topic, popularity is skewed (index
  ``floor(items_per_topic * U**2)``).
* **History length.** Pareto with tail index ``length_alpha`` and scale
  ``min_events``, capped at ``max_events``; the first ``giant_users`` users get
  exactly ``max_events`` (lifelong users, 10^6 events at full scale).
* **Interests.** Each user has ``n_old_interests`` long-term topics and
  ``n_current_interests`` current topics (disjoint). The user's taste is stable:
  an exposure to any interest topic is engaged with probability
  ``p_positive_interest``, any other topic with ``p_positive_other``.
* **What the user is shown drifts.** In the first ``early_fraction`` of the
  history, an exposure comes from the old interests with probability
  ``early_focus_weight``; afterwards from the current interests with
  probability ``focus_weight``. Every other exposure is a uniformly random
  topic. So old interests are visited heavily early and only at the random
  rate since: with the defaults, a user's last 100 events hold about 5 events
  of their 24 old topics, and most old topics do not appear there at all.
* **Labels.** An engaged exposure is ``CLICK`` (or ``LIKE`` with probability
  0.3), an ignored one ``IMPRESSION``; the label is ``action >= CLICK``. Later
  labels therefore depend on the recent focus (current interests) *and* on old
  interests that only the whole history reveals: random exposures to an old
  topic are engaged as often as current-interest ones. ``long_range_share``
  measures the share of late positives explained by an old interest absent
  from the preceding 100 events.
* **Bad rows.** A ``bad_row_fraction`` of corrupted copies (nulls, negative
  ids or times, future times, unknown actions, exact duplicates) is appended,
  arriving on their source row's day, so validation has real work; the clean
  events are untouched.
* **Time.** Each user's events are spread uniformly over a span of
  ``U(0.3, 1) * span_days`` days ending on ``end_date`` (UTC), so long users
  are active every day and nightly partitions are non-empty.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from summarizer.config import SynthConfig
from summarizer.data import files
from summarizer.data.events import EVENT_SCHEMA, Action, day_bounds, write_partitioned
from summarizer.data.validation import REASONS

LIKE_SHARE = 0.3


@dataclasses.dataclass(frozen=True)
class UserProfile:
    user_id: int
    n_events: int
    old_interests: np.ndarray
    current_interests: np.ndarray


@dataclasses.dataclass
class SynthSummary:
    n_users: int
    n_events: int
    days: list[str]
    longest_user: int
    longest_events: int
    out_dir: str
    injected_bad_rows: dict[str, int]


def topic_of(item_id: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    return np.asarray(item_id) % cfg.n_topics


def history_lengths(cfg: SynthConfig) -> np.ndarray:
    """Power-law history lengths for every user (deterministic by seed)."""
    rng = np.random.default_rng([cfg.seed, 0x1E27])
    u = rng.random(cfg.n_users)
    lengths = np.floor(cfg.min_events * (1.0 - u) ** (-1.0 / cfg.length_alpha))
    lengths = np.minimum(lengths, cfg.max_events).astype(np.int64)
    lengths[: min(cfg.giant_users, cfg.n_users)] = cfg.max_events
    return np.maximum(lengths, 1)


def user_profile(cfg: SynthConfig, user_id: int, n_events: int) -> UserProfile:
    rng = np.random.default_rng([cfg.seed, user_id])
    topics = rng.permutation(cfg.n_topics)
    n_old = min(cfg.n_old_interests, cfg.n_topics - 1)
    n_cur = min(cfg.n_current_interests, cfg.n_topics - n_old)
    return UserProfile(
        user_id=user_id,
        n_events=n_events,
        old_interests=np.sort(topics[:n_old]),
        current_interests=np.sort(topics[n_old : n_old + n_cur]),
    )


def generate_user(cfg: SynthConfig, profile: UserProfile) -> pa.Table:
    """One user's whole history, sorted by time."""
    n = profile.n_events
    # A separate stream from the profile's, so lengths never shift the interests.
    rng = np.random.default_rng([cfg.seed, profile.user_id, 1])
    early = np.arange(n) < int(cfg.early_fraction * n)
    focus_p = np.where(early, cfg.early_focus_weight, cfg.focus_weight)
    focused = rng.random(n) < focus_p
    old_pick = profile.old_interests[rng.integers(0, len(profile.old_interests), n)]
    cur_pick = profile.current_interests[rng.integers(0, len(profile.current_interests), n)]
    topic = np.where(focused, np.where(early, old_pick, cur_pick), rng.integers(0, cfg.n_topics, n))
    rank = np.floor(cfg.items_per_topic * rng.random(n) ** 2).astype(np.int64)
    item = topic + cfg.n_topics * rank

    interest = np.isin(topic, profile.old_interests) | np.isin(topic, profile.current_interests)
    p_pos = np.where(interest, cfg.p_positive_interest, cfg.p_positive_other)
    positive = rng.random(n) < p_pos
    like = rng.random(n) < LIKE_SHARE
    action = np.where(positive, np.where(like, Action.LIKE, Action.CLICK), Action.IMPRESSION)

    _, end = day_bounds(cfg.end_date)
    span = int(rng.uniform(0.3, 1.0) * cfg.span_days * 86_400)
    ts = np.sort(rng.integers(end - span, end, n))
    return pa.table(
        {
            "user_id": pa.array(np.full(n, profile.user_id, dtype=np.int64)),
            "ts": pa.array(ts.astype(np.int64)),
            "item_id": pa.array(item.astype(np.int64)),
            "action": pa.array(action.astype(np.int16)),
            "weight": pa.nulls(n, pa.float32()),
        },
        schema=EVENT_SCHEMA,
    )


# Every quarantine reason but a bad weight (synthetic events carry none) and an id above
# 2^63-1 (they are written as int64), in REASONS' order.
BAD_KINDS = tuple(r for r in REASONS if r not in ("invalid_weight", "id_out_of_range"))


def inject_bad_rows(
    table: pa.Table, fraction: float, rng: np.random.Generator, num_actions: int
) -> tuple[pa.Table, np.ndarray, dict[str, int]]:
    """Append corrupted copies of random rows, the way real logs go wrong.

    The original rows are untouched, so validation must give back exactly the
    clean data plus a quarantine of the appended rows. Returns the table, each
    row's arrival time (a bad copy arrives with its source row) and the number
    injected per kind (the quarantine reason validation should assign).
    """
    n_bad = int(round(fraction * table.num_rows))
    ts_all = table.column("ts").to_numpy()
    if n_bad == 0:
        return table, ts_all, {}
    src = rng.integers(0, table.num_rows, n_bad)
    kind = rng.integers(0, len(BAD_KINDS), n_bad)
    cols = {
        c: table.column(c).to_numpy(zero_copy_only=False)[src]
        for c in ("user_id", "ts", "item_id", "action")
    }
    user, ts, item, action = (
        cols[c].astype(np.int64) for c in ("user_id", "ts", "item_id", "action")
    )
    null = {c: np.zeros(n_bad, dtype=bool) for c in ("user_id", "ts", "item_id", "action")}
    names = np.array(BAD_KINDS)[kind]
    null["user_id"] |= names == "null_user_id"
    null["ts"] |= names == "null_ts"
    null["item_id"] |= names == "null_item_id"
    null["action"] |= names == "null_action"
    user = np.where(names == "negative_id", -user - 1, user)
    ts = np.where(names == "negative_ts", -ts, ts)
    ts = np.where(names == "future_ts", ts + 400 * 86_400, ts)
    action = np.where(names == "action_out_of_range", num_actions + 3, action)
    # A duplicate is an exact copy, which needs every other field intact (it is).
    bad = pa.table(
        {
            "user_id": pa.array(user, mask=null["user_id"]),
            "ts": pa.array(ts, mask=null["ts"]),
            "item_id": pa.array(item, mask=null["item_id"]),
            "action": pa.array(action.astype(np.int16), mask=null["action"]),
            "weight": pa.nulls(n_bad, pa.float32()),
        },
        schema=EVENT_SCHEMA,
    )
    kinds, counts = np.unique(names, return_counts=True)
    return (
        pa.concat_tables([table, bad]),
        np.concatenate([ts_all, ts_all[src]]),
        {str(k): int(c) for k, c in zip(kinds, counts, strict=True)},
    )


def profiles(cfg: SynthConfig) -> list[UserProfile]:
    return [user_profile(cfg, u, int(n)) for u, n in enumerate(history_lengths(cfg))]


def generate(
    cfg: SynthConfig,
    out_dir: str | os.PathLike[str],
    progress: bool = True,
    flush_rows: int = 4_000_000,
    num_actions: int = 8,
    options: Mapping[str, str] | None = None,
) -> SynthSummary:
    """Write the whole synthetic dataset as day-partitioned Parquet under ``out_dir`` (a
    local folder or an object-store URI; ``options``: its storage options).

    Users are generated one at a time and flushed in bounded groups (one file
    per group and day), so memory stays bounded for 10^7+ events.
    """
    from tqdm import tqdm

    out = str(out_dir)
    if files.list_dir(out, options):
        raise FileExistsError(f"{out} is not empty; synth writes a fresh dataset")
    all_profiles = profiles(cfg)
    pending: list[pa.Table] = []
    pending_rows = 0
    part = 0
    days: set[str] = set()
    injected: dict[str, int] = {}
    total = 0

    def flush() -> None:
        nonlocal pending, pending_rows, part
        if pending:
            table = pa.concat_tables(pending)
            rng = np.random.default_rng([cfg.seed, 0xBAD, part])
            table, arrival, counts = inject_bad_rows(table, cfg.bad_row_fraction, rng, num_actions)
            for kind, count in counts.items():
                injected[kind] = injected.get(kind, 0) + count
            days.update(
                write_partitioned(
                    table, out, name=f"part-{part:05d}", arrival_ts=arrival, options=options
                )
            )
            part += 1
        pending, pending_rows = [], 0

    bar = not progress or not sys.stderr.isatty()  # a bar on a terminal only
    for prof in tqdm(all_profiles, desc="synth", unit="user", disable=bar):
        table = generate_user(cfg, prof)
        pending.append(table)
        pending_rows += table.num_rows
        total += table.num_rows
        if pending_rows >= flush_rows:
            flush()
    flush()
    longest = max(all_profiles, key=lambda p: p.n_events)
    return SynthSummary(
        n_users=cfg.n_users,
        n_events=total,
        days=sorted(days),
        longest_user=longest.user_id,
        longest_events=longest.n_events,
        out_dir=str(out),
        injected_bad_rows=dict(sorted(injected.items())),
    )


def long_range_share(
    cfg: SynthConfig, profile: UserProfile, table: pa.Table, window: int = 100, tail: float = 0.1
) -> float:
    """Share of the positives in the last ``tail`` of a history explained only by old interests.

    A positive counts when its topic is one of the user's old interests, not a
    current one, and absent from the ``window`` events just before it: the
    signal a model truncated to the last ``window`` events cannot see.
    """
    item = table.column("item_id").to_numpy()
    action = table.column("action").to_numpy()
    topic = topic_of(item, cfg)
    n = len(topic)
    start = max(window, int((1.0 - tail) * n))
    hits = positives = 0
    old = set(profile.old_interests.tolist()) - set(profile.current_interests.tolist())
    for t in range(start, n):
        if action[t] < Action.CLICK:
            continue
        positives += 1
        tp = int(topic[t])
        if tp in old and tp not in set(topic[t - window : t].tolist()):
            hits += 1
    return hits / positives if positives else 0.0
