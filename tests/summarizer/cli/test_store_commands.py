"""`vista summary get` and `vista store info|promote|rollback|compact` handlers on a real store."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from summarizer.cli.store import (
    cmd_store_compact,
    cmd_store_info,
    cmd_store_promote,
    cmd_store_rollback,
    cmd_summary_get,
    register,
)
from summarizer.config import StoreConfig, VistaConfig
from summarizer.store import SummaryRecord, SummaryStore

pytestmark = pytest.mark.integration

MV = "0123456789abcdef"


@pytest.fixture
def cfg(tmp_path: Path) -> VistaConfig:
    return VistaConfig(store=StoreConfig(uri=str(tmp_path / "store"), max_age_s=10**9))


def publish(cfg: VistaConfig, marker: int, promote: bool = True) -> int:
    now = dt.datetime.now(dt.UTC)
    recs = [
        SummaryRecord(
            u, MV, np.full((3, 4), 0.5, np.float16), marker, 1_700_000_000, 1_750_000_000, now
        )
        for u in range(5)
    ]
    version = SummaryStore.from_config(cfg.store).publish(recs, promote=promote).version
    assert version is not None
    return version


def ns(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**kw)


def test_register_wires_every_command() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    cases = {
        ("summary", "get", "5", "--json"): cmd_summary_get,
        ("store", "info"): cmd_store_info,
        ("store", "promote", "3"): cmd_store_promote,
        ("store", "rollback", "2"): cmd_store_rollback,
        ("store", "compact", "--keep-hours", "0"): cmd_store_compact,
    }
    for argv, handler in cases.items():
        assert parser.parse_args(argv).func.__wrapped__ is handler.__wrapped__


def test_summary_get_json(cfg: VistaConfig, capsys: pytest.CaptureFixture[str]) -> None:
    version = publish(cfg, marker=7)
    assert cmd_summary_get(cfg, ns(user_id="3", json=True, version=None)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "present" and report["table_version"] == version
    assert report["tag"] == "serving" and report["n_events"] == 7
    assert report["last_event"].startswith("2025-06-15T")
    assert report["tokens"]["shape"] == [3, 4] and report["tokens"]["finite"]
    assert report["tokens"]["norm_max"] == pytest.approx(1.0)


def test_summary_get_text_missing_and_invalid(
    cfg: VistaConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(cfg, marker=1)
    assert cmd_summary_get(cfg, ns(user_id="2", json=False, version=None)) == 0
    out = capsys.readouterr().out
    assert "present" in out and "L2 norm" in out and "3 x 4 float16" in out
    assert cmd_summary_get(cfg, ns(user_id="99", json=False, version=None)) == 1
    assert "not_found" in capsys.readouterr().out
    for bad in ("1 OR 1=1", "-1", "1.5", "true"):
        assert cmd_summary_get(cfg, ns(user_id=bad, json=False, version=None)) == 1
        assert "non-negative integers" in capsys.readouterr().err


def test_store_info(cfg: VistaConfig, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_store_info(cfg, ns(json=False)) == 1  # no folder yet: a clear error
    assert "does not exist" in capsys.readouterr().err
    publish(cfg, marker=1)
    assert cmd_store_info(cfg, ns(json=False)) == 0
    out = capsys.readouterr().out
    assert "summaries: 5 rows" in out and "serving=" in out and "K=3" in out
    assert cmd_store_info(cfg, ns(json=True)) == 0
    info = json.loads(capsys.readouterr().out)
    table = info["tables"][0]
    assert table["name"] == "summaries" and table["disk_bytes"] > 0


def test_store_promote_rollback_compact(
    cfg: VistaConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    good = publish(cfg, marker=1)
    bad = publish(cfg, marker=2, promote=False)
    assert cmd_store_promote(cfg, ns(version=None)) == 0
    assert f"serving version {bad}" in capsys.readouterr().out
    assert cmd_store_rollback(cfg, ns(version=good, no_restore=False)) == 0
    assert f"serving version {good}" in capsys.readouterr().out
    store = SummaryStore.from_config(cfg.store)
    assert store.get(1)[0].n_events == 1
    assert cmd_store_rollback(cfg, ns(version=12345, no_restore=False)) == 1
    assert "no version 12345" in capsys.readouterr().err
    assert cmd_store_compact(cfg, ns(keep_hours=0.0, no_cleanup=False)) == 0
    assert "summaries:" in capsys.readouterr().out
    assert store.open_reader().get(1)[0].n_events == 1
