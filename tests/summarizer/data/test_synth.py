from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from summarizer.config import SynthConfig
from summarizer.data import synth
from summarizer.data.events import EVENT_SCHEMA, Action, dataset, sort_events
from summarizer.data.validation import validate_dataset

SMALL = SynthConfig(n_users=40, min_events=20, max_events=5000, giant_users=1, span_days=30, seed=7)


def _read_all(root: Path) -> pa.Table:
    return sort_events(dataset(root).to_table(columns=EVENT_SCHEMA.names))


def test_generator_is_deterministic_by_seed(tmp_path: Path) -> None:
    a = synth.generate(SMALL, tmp_path / "a", progress=False)
    b = synth.generate(SMALL, tmp_path / "b", progress=False)
    synth.generate(SMALL.model_copy(update={"seed": 8}), tmp_path / "c", progress=False)
    assert a.n_events == b.n_events and a.days == b.days
    ta, tb, tc = (_read_all(tmp_path / x) for x in "abc")
    assert ta.equals(tb)
    assert not ta.equals(tc)


def test_a_users_history_depends_only_on_seed_and_id() -> None:
    few = SMALL.model_copy(update={"n_users": 5})
    many = SMALL.model_copy(update={"n_users": 30})
    n_few, n_many = synth.history_lengths(few), synth.history_lengths(many)
    assert np.array_equal(n_few, n_many[:5])
    p1, p2 = synth.user_profile(few, 3, int(n_few[3])), synth.user_profile(many, 3, int(n_many[3]))
    assert synth.generate_user(few, p1).equals(synth.generate_user(many, p2))


def test_history_lengths_are_power_law_with_lifelong_users() -> None:
    cfg = SynthConfig(n_users=20_000, min_events=50, max_events=1_000_000, giant_users=3)
    lengths = synth.history_lengths(cfg)
    assert lengths[:3].tolist() == [1_000_000] * 3
    assert lengths.min() >= 50
    assert np.median(lengths) < 200  # most users are short ...
    top = np.sort(lengths)[::-1]
    assert (
        top[: len(top) // 100].sum() > 0.3 * top.sum()
    )  # ... and the top 1% hold much of the data


def test_events_follow_the_contract_and_time_order() -> None:
    prof = synth.user_profile(SMALL, 0, 3000)
    table = synth.generate_user(SMALL, prof)
    assert table.schema == EVENT_SCHEMA
    ts = table.column("ts").to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert set(np.unique(table.column("action").to_numpy())) <= {a.value for a in Action}


def test_long_range_structure_is_invisible_to_the_last_100_events() -> None:
    cfg = SynthConfig(seed=3)
    shares, hidden = [], []
    for user in range(8):
        prof = synth.user_profile(cfg, user, 20_000)
        table = synth.generate_user(cfg, prof)
        shares.append(synth.long_range_share(cfg, prof, table))
        recent = set(synth.topic_of(table.column("item_id").to_numpy()[-100:], cfg).tolist())
        hidden.append(np.mean([t not in recent for t in prof.old_interests]))
        # Labels depend on old interests late in the history, not only early.
        late = table.slice(int(0.9 * table.num_rows))
        topic = synth.topic_of(late.column("item_id").to_numpy(), cfg)
        pos = late.column("action").to_numpy() >= Action.CLICK
        on_old = np.isin(topic, prof.old_interests)
        assert (
            pos[on_old].mean()
            > 0.7
            > 0.15
            > pos[~on_old & ~np.isin(topic, prof.current_interests)].mean()
        )
    # A tenth of late positives need an old interest the last 100 events do not show ...
    assert np.mean(shares) > 0.10
    # ... because most old interests are absent from them.
    assert np.mean(hidden) > 0.7


def test_injected_bad_rows_are_exactly_what_validation_quarantines(tmp_path: Path) -> None:
    cfg = SMALL.model_copy(update={"bad_row_fraction": 0.02})
    summary = synth.generate(cfg, tmp_path / "events", progress=False, num_actions=8)
    clean = synth.generate(
        SMALL.model_copy(update={"bad_row_fraction": 0.0}), tmp_path / "clean", progress=False
    )
    assert sum(summary.injected_bad_rows.values()) > 50
    assert set(summary.injected_bad_rows) == set(synth.BAD_KINDS)
    report = validate_dataset(
        tmp_path / "events", tmp_path / "valid", tmp_path / "q", 8, progress=False
    )
    assert report.counts == summary.injected_bad_rows
    assert report.n_valid == clean.n_events
    assert _read_all(tmp_path / "valid").equals(_read_all(tmp_path / "clean"))


def test_refuses_to_write_over_existing_data(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(FileExistsError):
        synth.generate(SMALL, tmp_path / "x", progress=False)
