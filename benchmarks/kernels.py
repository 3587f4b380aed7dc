"""Benchmark the attention kernels: amortized cross-attention and the linear-attention state.

On CUDA, times (``triton.testing.do_bench``, median) the Triton kernels against
PyTorch SDPA and a naive matmul-softmax-matmul, and prints achieved TFLOP/s and
GB/s against the GPU's roofline (peak numbers from a built-in datasheet table).
On a CPU, times the PyTorch paths (median of ``--repeats`` after a warm-up).
Prints a table, writes ``benchmarks/out/kernels.json`` and ``kernels.png``.

    .venv/bin/python benchmarks/kernels.py [--quick] [--dtype bf16] [--batch 4] [--heads 4]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file is named kernels.py: keep its folder off sys.path so that `import kernels`
# finds the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402

# Vendor datasheet peaks, dense (no sparsity): (name substring, 16-bit tensor TFLOP/s,
# fp32 TFLOP/s without tensor cores, memory TB/s). First match wins, so specific first.
PEAKS = [
    ("H100 PCIe", 756.0, 51.0, 2.0),
    ("H100 NVL", 835.0, 60.0, 3.9),
    ("H100", 989.0, 67.0, 3.35),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0, 67.0, 4.8),
    ("A100-SXM4-80GB", 312.0, 19.5, 2.039),
    ("A100", 312.0, 19.5, 1.555),
    ("L40S", 362.0, 91.6, 0.864),
    ("L4", 121.0, 30.3, 0.3),
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Row:
    op: str
    provider: str
    shape: str
    ms: float
    tflops: float
    gbps: float
    roofline_pct: float | None


def peaks(device: torch.device) -> tuple[str, float, float, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p for p in PEAKS if p[0] in name), None)


def bench(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of one call."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()  # warm-up: allocator, lazy init
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """(B, H, m, D) x (B, H, K, D): scores materialized, softmax in fp32."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(s.float(), dim=-1).to(v.dtype), v)


def attention_cases(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> list[tuple[str, str, Callable[[], object], float, float]]:
    """(op, shape, fn, flops, bytes) per provider and shape."""
    B, H = args.batch, args.heads
    dims = (64,) if args.quick else (64, 128)
    ms = (64, 512) if args.quick else (64, 512, 4096)
    ks = (64, 512) if args.quick else (64, 128, 512)
    shapes = [(m, kk) for m in ms for kk in ks] + ([] if args.quick else [(4096, 256)])
    gen = torch.Generator(device=device).manual_seed(0)
    cases = []
    for D in dims:
        for m, K in shapes:
            q = torch.randn(B * m, H, D, device=device, dtype=dtype, generator=gen)
            k = torch.randn(B * K, H, D, device=device, dtype=dtype, generator=gen)
            v = torch.randn(B * K, H, D, device=device, dtype=dtype, generator=gen)
            qo = torch.arange(B + 1, device=device) * m
            ko = torch.arange(B + 1, device=device) * K
            scale = 1.0 / math.sqrt(D)
            # Dense (B, H, len, D) views of the same memory for SDPA and the naive path.
            qd, kd, vd = (t.view(B, -1, H, D).transpose(1, 2) for t in (q, k, v))
            flops = 4.0 * B * H * m * K * D
            nbytes = float(q.element_size() * H * D * B * (2 * m + 2 * K))
            shape = f"D={D} m={m} K={K}"
            provs: dict[str, Callable[[], object]] = {
                "sdpa": lambda qd=qd, kd=kd, vd=vd, s=scale: F.scaled_dot_product_attention(
                    qd, kd, vd, scale=s
                ),
                "naive": lambda qd=qd, kd=kd, vd=vd, s=scale: naive_attention(qd, kd, vd, s),
            }
            if device.type == "cuda":
                from kernels.triton_cross_attention import triton_cross_attention

                out = torch.empty_like(q)
                provs["triton"] = lambda q=q, k=k, v=v, qo=qo, ko=ko, out=out, m=m, K=K: (
                    triton_cross_attention(q, k, v, qo, ko, out=out, max_m=m, max_k=K)
                )
                want = F.scaled_dot_product_attention(qd, kd, vd, scale=scale)
                got = provs["triton"]().view(B, m, H, D).transpose(1, 2)  # type: ignore[union-attr]
                torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)  # verify first
            else:
                provs["torch"] = lambda q=q, k=k, v=v, qo=qo, ko=ko: kernels.attention(
                    q, k, v, qo, ko, backend="torch"
                )
            for name, fn in provs.items():
                cases.append(("attention", f"{name}|{shape}", fn, flops, nbytes))
    return cases


def linear_cases(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> list[tuple[str, str, Callable[[], object], float, float]]:
    H, Fd, D = args.heads, 64, 64
    cases = []
    sizes = (4096,) if args.quick else (4096, 65536, 1_048_576)
    # A 10^6-event history is 1 GiB of fp32 inputs per tensor: GPU only.
    for n in sizes if device.type == "cuda" else [s for s in sizes if s <= 65536]:
        phi = torch.rand(n, H, Fd, device=device, dtype=dtype)
        v = torch.randn(n, H, D, device=device, dtype=dtype)
        flops = 2.0 * n * H * Fd * D
        nbytes = float(phi.element_size() * n * H * (Fd + D) + 4 * H * Fd * D)
        shape = f"n={n} H={H} F={Fd} D={D}"
        provs: dict[str, Callable[[], object]] = {
            "torch": lambda phi=phi, v=v: kernels.linear_attention(phi, v, backend="torch")
        }
        if device.type == "cuda":
            provs["triton"] = lambda phi=phi, v=v: kernels.linear_attention(
                phi, v, backend="triton"
            )
        for name, fn in provs.items():
            cases.append(("linear_state", f"{name}|{shape}", fn, flops, nbytes))
    return cases


def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    peak = peaks(device)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, dtype {dtype}")
        if peak is None:
            print("no peak numbers for this GPU in the table: roofline column left empty")
        else:
            tf = peak[1] if dtype != torch.float32 else peak[2]
            print(
                f"roofline from the built-in datasheet table ({peak[0]}): {tf:g} TFLOP/s "
                f"({'16-bit tensor core' if dtype != torch.float32 else 'fp32'} dense), "
                f"{peak[3]:g} TB/s"
            )
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads), dtype {dtype}; no roofline on CPU")
    print(
        f"{'op':<13} {'provider':<7} {'shape':<24} {'ms':>10} {'TFLOP/s':>9} {'GB/s':>9} roofline"
    )
    rows = []
    with torch.inference_mode():
        for op, key, fn, flops, nbytes in attention_cases(args, device, dtype) + linear_cases(
            args, device, dtype
        ):
            provider, shape = key.split("|")
            t = bench(fn, device, args.repeats)
            pct = None
            if peak is not None:
                tf = peak[1] if dtype != torch.float32 else peak[2]
                attainable = min(tf * 1e12, flops / nbytes * peak[3] * 1e12)
                pct = 100.0 * (flops / (t * 1e-3)) / attainable
            rows.append(Row(op, provider, shape, t, flops / t / 1e9, nbytes / t / 1e6, pct))
            print_row(rows[-1])
    return rows


def print_row(r: Row) -> None:
    roof = "" if r.roofline_pct is None else f"{r.roofline_pct:9.1f}%"
    print(
        f"{r.op:<13} {r.provider:<7} {r.shape:<24} {r.ms:10.3f} {r.tflops:9.3f} {r.gbps:9.1f} {roof}"
    )


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r.op for r in rows})
    fig, axes = plt.subplots(len(ops), 1, figsize=(12, 4.5 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        sel = [r for r in rows if r.op == op]
        shapes = list(dict.fromkeys(r.shape for r in sel))
        provs = list(dict.fromkeys(r.provider for r in sel))
        width = 0.8 / len(provs)
        for i, p in enumerate(provs):
            ms = [
                next((r.ms for r in sel if r.shape == s and r.provider == p), 0.0) for s in shapes
            ]
            ax.bar([x + i * width for x in range(len(shapes))], ms, width, label=p)
        ax.set_xticks(
            [x + 0.4 - width / 2 for x in range(len(shapes))], shapes, rotation=30, ha="right"
        )
        ax.set_yscale("log")
        ax.set_ylabel("median ms (log)")
        ax.set_title(op)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes (D=64, m,K in {64,512})")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--batch", type=int, default=4, help="requests per launch (equal sizes)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="CPU timing repeats (median)")
    # One thread by default: on a small shared machine, multi-threaded timings measure
    # thread-barrier waits behind other processes more than the op.
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--cpu", action="store_true", help="benchmark the CPU even if a GPU is present")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args(argv)
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv, "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    (args.out / "kernels.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1)
    )
    plot(rows, args.out / "kernels.png")
    print(f"wrote {args.out / 'kernels.json'} and {args.out / 'kernels.png'}")


if __name__ == "__main__":
    main()
