"""The one filesystem layer of data locations: local paths made absolute, object-store
options checked by name, whole-file writes, listings and moves (object storage itself is
exercised against a real S3-compatible server in tests/batch_jobs/test_standalone_s3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from summarizer.data import files


def test_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert files.absolute("data/events") == str(tmp_path / "data" / "events")
    assert files.absolute(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert files.absolute("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert files.is_remote("s3://b/p") and files.is_remote("gs://b/p")
    assert not files.is_remote("/tmp/x") and not files.is_remote("C:/x")
    assert files.join("s3://b/p/", "dt=2026-01-01", "part.parquet") == (
        "s3://b/p/dt=2026-01-01/part.parquet"
    )
    with pytest.raises(ValueError, match="unsupported location scheme 'hdfs'"):
        files.absolute("hdfs://nn/events")


def test_object_store_options_are_checked_by_name() -> None:
    with pytest.raises(files.StorageOptionError, match="aws_secret_acess_key"):
        files.filesystem("s3://b/p", {"aws_secret_acess_key": "x"})  # misspelled
    fs, path = files.filesystem(
        "s3://b/p", {"aws_endpoint": "http://127.0.0.1:9", "aws_region": "us-east-1"}
    )
    assert path == "b/p" and type(fs).__name__ == "S3FileSystem"
    assert files.understood_options({"timeout": "3", "region": "eu"}) == {"region": "eu"}


def test_local_files(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    files.write_text(files.join(root, "a", "r.json"), "{}")
    files.write_bytes(files.join(root, "a", "x.parquet"), b"1")
    files.write_bytes(files.join(root, "a", ".hidden.parquet"), b"1")
    assert files.read_text(files.join(root, "a", "r.json")) == "{}"
    assert files.list_dir(root) == [("a", True)]
    assert files.files_with_suffix(files.join(root, "a"), ".parquet") == [
        files.join(root, "a", "x.parquet")
    ]
    assert files.stat(files.join(root, "a", "x.parquet")).size == 1  # type: ignore[union-attr]
    assert files.stat(files.join(root, "nope")) is None
    files.move(files.join(root, "a", "x.parquet"), files.join(root, "b", "y.parquet"))
    assert files.exists(files.join(root, "b", "y.parquet"))
    assert not files.exists(files.join(root, "a", "x.parquet"))
    files.delete(files.join(root, "a"))
    assert files.list_dir(root) == [("b", True)]
    assert files.list_dir(files.join(root, "missing")) == []
    with pytest.raises(FileNotFoundError):
        files.read_bytes(files.join(root, "missing.json"))
