"""Compile every Triton launch configuration for a GPU, on a machine without one.

``triton.compile`` lowers a kernel for a named target (``GPUTarget("cuda", 90, 32)``) with
no device present; the ``ptxas`` shipped in the triton wheel then reports what each
binary needs: registers a thread, spill bytes (values pushed to local memory on every
tile step) and shared memory. :func:`reports` does this for every configuration the
launchers can pick (``launch_configs()`` of each kernel module) on each architecture.

The kernels must be imported compiled, not interpreted: run this where
``TRITON_INTERPRET`` is unset (the tests start it in a subprocess)::

    python -m kernels.aot [--arch 80 --arch 90] [--jobs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import torch

ARCHS = (80, 90)

_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclasses.dataclass(frozen=True)
class Report:
    """One kernel configuration compiled for one architecture."""

    kernel: str
    arch: int
    config: dict[str, Any]
    registers: int = 0
    spill_bytes: int = 0  # stores + loads to local memory, as ptxas counts them
    shared_bytes: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.spill_bytes == 0


def _cross_attention_jobs() -> list[tuple[str, dict[str, str], dict[str, Any], int, int, dict]]:
    from kernels.triton_cross_attention import launch_configs

    jobs = []
    for c in launch_configs():
        t = _DTYPE[c.dtype]
        sig = {n: f"*{t}" for n in ("Q", "K", "V", "KV_BIAS", "MEM_K", "MEM_V", "MEM_BIAS")}
        sig |= {"GATHER_IDX": "*i64", "OUT": f"*{t}"}
        sig |= {n: "*i64" for n in ("q_offsets", "kv_offsets", "mem_offsets")}
        sig |= {
            n: "i64"
            for n in (
                "stride_qm",
                "stride_qh",
                "stride_km",
                "stride_kh",
                "stride_vm",
                "stride_vh",
                "stride_mkm",
                "stride_mkh",
                "stride_mvm",
                "stride_mvh",
                "stride_gm",
                "stride_om",
                "stride_oh",
            )
        }
        sig |= {"qk_scale": "fp32", "bias_scale": "fp32"}
        sig |= {n: "i32" for n in ("num_gather", "head_dim", "has_kv_bias", "has_mem_bias")}
        shown = {"dtype": t, **c.constexprs(), "num_warps": c.num_warps}
        shown.pop("UPCAST_DOT")
        jobs.append(("cross_attention", sig, c.constexprs(), c.num_warps, c.num_stages, shown))
    return jobs


def _linear_attention_jobs() -> list[tuple[str, dict[str, str], dict[str, Any], int, int, dict]]:
    from kernels.triton_linear_attention import launch_configs

    jobs = []
    for c in launch_configs():
        t = _DTYPE[c.dtype]
        sig = {"PHI": f"*{t}", "V": f"*{t}", "STATE_IN": "*fp32", "OUT": "*fp32"}
        sig |= {"PREFIX": "*fp32", "POSITIONS": "*i64", "n": "i64", "num_pos": "i32"}
        sig |= {"split_len": "i64"}
        sig |= {
            n: "i64"
            for n in ("stride_pn", "stride_ph", "stride_vn", "stride_vh", "stride_os", "stride_pp")
        }
        sig |= {"feat": "i32", "head_dim": "i32", "has_state": "i32"}
        shown = {"dtype": t, **c.constexprs(), "num_warps": c.num_warps}
        shown.pop("UPCAST_DOT")
        jobs.append(("linear_attention", sig, c.constexprs(), c.num_warps, c.num_stages, shown))
    return jobs


def _kernel(name: str) -> Any:
    if name == "cross_attention":
        from kernels.triton_cross_attention import _cross_attention_fwd as fn
    else:
        from kernels.triton_linear_attention import _linear_attention_state_fwd as fn
    from triton.runtime.jit import JITFunction

    if not isinstance(fn, JITFunction):
        raise RuntimeError(
            "the kernels were imported under TRITON_INTERPRET=1: compile them in a process "
            "without it (python -m kernels.aot)"
        )
    return fn


def ptxas_path() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _compile(job: tuple[str, dict[str, str], dict[str, Any], int, int, dict], arch: int) -> Report:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, sig, consts, warps, stages, shown = job
    try:
        src = ASTSource(_kernel(name), {**sig, **dict.fromkeys(consts, "constexpr")}, consts)
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": warps, "num_stages": stages},
        )
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(compiled.asm["ptx"])
        try:
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            out = subprocess.run(
                [ptxas_path(), "-v", f"-arch={gpu}", f.name, "-o", os.devnull],
                capture_output=True,
                text=True,
                check=True,
            ).stderr
        finally:
            os.unlink(f.name)
    except Exception as exc:  # noqa: BLE001  a compile error is what this reports
        return Report(name, arch, shown, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return Report(
        name,
        arch,
        shown,
        registers=int(regs.group(1)) if regs else 0,
        spill_bytes=int(spills.group(1)) + int(spills.group(2)) if spills else 0,
        shared_bytes=int(compiled.metadata.shared),
    )


def jobs() -> list[tuple[str, dict[str, str], dict[str, Any], int, int, dict]]:
    """Every launch configuration of every Triton kernel."""
    return _cross_attention_jobs() + _linear_attention_jobs()


def reports(archs: tuple[int, ...] = ARCHS, workers: int = 2) -> list[Report]:
    """Compile everything for every architecture (``workers`` processes)."""
    todo = [(job, arch) for job in jobs() for arch in archs]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_compile, *zip(*todo, strict=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, action="append", help="sm_XX (default: 80 and 90)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write every report here")
    args = ap.parse_args(argv)
    found = reports(tuple(args.arch or ARCHS), args.jobs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in found], f, indent=1)
    bad = [r for r in found if not r.ok]
    for r in bad:
        what = r.error.splitlines()[0] if r.error else f"{r.spill_bytes} spill bytes"
        print(f"sm_{r.arch} {r.kernel} {r.config}: {what}", file=sys.stderr)
    print(f"{len(found)} compiles, {len(bad)} with an error or spills")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
