from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from summarizer.cli import build_parser, main

COMMANDS = [
    ["config", "show"],
    ["data", "synth"],
    ["data", "ingest-movielens"],
    ["data", "validate"],
]


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "summarizer.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for top in {c[0] for c in COMMANDS}:
        assert top in out
    parser = build_parser()
    for path in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*path, "--help"])
        assert exc.value.code == 0


def test_synth_then_validate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISTA_SYNTH__MAX_EVENTS", "2000")
    monkeypatch.setenv("VISTA_SYNTH__BAD_ROW_FRACTION", "0.01")
    assert main(["data", "synth", "--users", "30", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "for 30 users" in out and "longest history: user 0 with 2,000 events" in out
    assert main(["data", "validate", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "quarantined by reason:" in out and "duplicate" in out
    assert (tmp_path / "data" / "valid").is_dir() and (tmp_path / "data" / "quarantine").is_dir()


def test_validate_exits_nonzero_on_schema_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa

    from summarizer.data.events import write_day

    write_day(
        pa.table({"user_id": ["x"], "ts": [1], "item_id": [1], "action": [0]}),
        tmp_path / "e",
        "2024-01-01",
    )
    code = main(
        [
            "data",
            "validate",
            "--input",
            str(tmp_path / "e"),
            "--valid-out",
            str(tmp_path / "v"),
            "--quarantine-out",
            str(tmp_path / "q"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "column 'user_id' has type string; expected int64" in capsys.readouterr().err
