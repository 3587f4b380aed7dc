"""GPU-readiness without a GPU: every configuration the Triton launchers can pick compiles
for sm_80 and sm_90, with no register spills (ptxas -v of the triton wheel); and the
launchers only ever pick configurations from that list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import triton_cross_attention as ca
from kernels import triton_linear_attention as la
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_every_launch_configuration_compiles_for_sm80_and_sm90_without_spills(
    tmp_path: Path,
) -> None:
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "kernels.aot", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
        check=False,
    )
    reports = json.loads(out.read_text())
    bad = [r for r in reports if r["error"] or r["spill_bytes"]]
    assert run.returncode == 0 and not bad, (bad[:5], run.stderr[-3000:])
    configs = len(ca.launch_configs()) + len(la.launch_configs())
    assert len(reports) == 2 * configs and {r["arch"] for r in reports} == {80, 90}
    assert all(r["registers"] > 0 for r in reports)


DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32])


@settings(max_examples=200, deadline=None)
@given(
    dtype=DTYPES,
    head_dim=st.integers(1, ca.MAX_HEAD_DIM),
    max_m=st.integers(1, 100_000),
    gather=st.booleans(),
    tf32=st.booleans(),
)
def test_the_cross_attention_launcher_picks_only_listed_configurations(
    dtype: torch.dtype, head_dim: int, max_m: int, gather: bool, tf32: bool
) -> None:
    assert ca.launch_config(dtype, head_dim, max_m, gather, tf32) in ca.launch_configs()


@settings(max_examples=200, deadline=None)
@given(dtype=DTYPES, feat=st.integers(1, 512), head_dim=st.integers(1, 512), tf32=st.booleans())
def test_the_linear_attention_launcher_picks_only_listed_configurations(
    dtype: torch.dtype, feat: int, head_dim: int, tf32: bool
) -> None:
    assert la.launch_config(dtype, feat, head_dim, tf32) in la.launch_configs()
