"""Shared fixtures. Runs before any test module is imported."""

from __future__ import annotations

import os

# The Triton interpreter must be chosen before any kernel module is imported. A run of the
# gpu-marked tests on a CUDA machine (benchmarks/gpu_check.sh) sets VISTA_GPU_TESTS=1 and
# gets the compiled kernels instead.
if os.environ.get("VISTA_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def fixtures_dir() -> Path:
    return Path(__file__).parent / "fixtures"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No VISTA_* variables from the caller's shell leak into a test."""
    for key in list(os.environ):
        if key.startswith("VISTA_"):
            monkeypatch.delenv(key)


@pytest.fixture
def clock():  # noqa: ANN201 - the store tests' settable clock
    import datetime as dt

    from tests.helpers import T0, FakeClock

    return FakeClock(T0 + dt.timedelta(minutes=5))


@pytest.fixture
def store(tmp_path: Path, clock):  # noqa: ANN001, ANN201
    """A SummaryStore in a fresh folder, with a 1 h staleness limit and the fake clock."""
    from summarizer.store import SummaryStore

    return SummaryStore(str(tmp_path / "db"), max_age_s=3600, refresh_interval_s=60, clock=clock)
