"""The GPU figures of issue 24, measured on a CUDA machine (benchmarks/gpu_check.sh runs it):

A. cross-attention, 256 requests x 512 candidates x K = 128 tokens, d = 128 (4 heads of
   32 -- and 1 head of 128), fp16: Triton against torch SDPA on the padded batch and
   against the memory-bandwidth floor (bytes of q, k, v and the output once / peak GB/s);
B. the model part of scoring on CUDA: one request of m = 512 and a jagged batch of 256
   requests x 512 candidates (VistaModel.score_requests, K = 128, d = 64);
C. summarizing 10^6 events: the linear-attention state (kernels.linear_attention, the
   Triton streaming kernel) and the summarizer's fold on CUDA tensors;
D. the GSU's top-k on the GPU (kernels.topk, FAISS).

Each part records its figures or the error it met (the script always finishes). Writes
benchmarks/out/gpu_check.json and gpu_check.md.

    .venv/bin/python benchmarks/gpu_check.py
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402


def bench(fn: Callable[[], Any], reps: int = 50) -> float:
    """Median milliseconds of ``fn`` on the GPU (CUDA events, after a warm-up)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def peak_bandwidth_gbs() -> float | None:
    """Datasheet memory bandwidth of this GPU (the kernels benchmark's table)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_kernels", HERE / "kernels.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    name = torch.cuda.get_device_name()
    for sub, _tc, _fp32, tbs in mod.PEAKS:
        if sub in name:
            return tbs * 1000.0
    return None


def part_a() -> dict[str, Any]:
    import torch.nn.functional as F

    import kernels

    out: dict[str, Any] = {}
    B, M, K = 256, 512, 128
    for H, D in ((4, 32), (1, 128)):
        q = torch.randn(B * M, H, D, device="cuda", dtype=torch.float16)
        k = torch.randn(B * K, H, D, device="cuda", dtype=torch.float16)
        v = torch.randn_like(k)
        qo = torch.arange(0, B * M + 1, M, device="cuda")
        ko = torch.arange(0, B * K + 1, K, device="cuda")
        triton_ms = bench(lambda q=q, k=k, v=v, qo=qo, ko=ko: kernels.attention(q, k, v, qo, ko))
        qp, kp, vp = (t.view(B, -1, H, D).transpose(1, 2) for t in (q, k, v))
        sdpa_ms = bench(lambda qp=qp, kp=kp, vp=vp: F.scaled_dot_product_attention(qp, kp, vp))
        bytes_moved = 2 * (q.numel() * 2 + k.numel() + v.numel())  # q in, out; k, v once
        peak = peak_bandwidth_gbs()
        floor_ms = bytes_moved / (peak * 1e9) * 1e3 if peak else None
        out[f"h{H}_d{D}"] = {
            "triton_ms": triton_ms,
            "sdpa_padded_ms": sdpa_ms,
            "floor_ms": floor_ms,
            "over_floor": triton_ms / floor_ms if floor_ms else None,
            "sdpa_over_triton": sdpa_ms / triton_ms,
        }
    return out


def part_b() -> dict[str, Any]:
    from summarizer.config import ModelSpec
    from summarizer.model.vista_model import ScoringRequest, VistaModel

    torch.manual_seed(0)
    model = VistaModel(ModelSpec(num_seeds=128, d_model=64)).eval().cuda()

    def requests(n: int) -> list[ScoringRequest]:
        return [
            ScoringRequest(
                item_ids=torch.randint(0, 10**7, (512,), device="cuda"),
                tokens=torch.randn(128, 64, device="cuda"),
                n_events=1000,
                hours_since_last=3.0,
            )
            for _ in range(n)
        ]

    one, many = requests(1), requests(256)
    with torch.inference_mode():
        return {
            "m512_ms": bench(lambda: model.score_requests(one)),
            "batch_256x512_ms": bench(lambda: model.score_requests(many), reps=20),
        }


def part_c() -> dict[str, Any]:
    import kernels
    from summarizer.config import ModelSpec
    from summarizer.model.encoder import EventBatch
    from summarizer.model.vista_model import VistaModel

    n = 10**6
    out: dict[str, Any] = {}
    phi = torch.rand(n, 8, 32, device="cuda", dtype=torch.float16)  # L x H = 2 x 4 heads
    v = torch.randn(n, 8, 17, device="cuda", dtype=torch.float16)
    out["linear_attention_state_1e6_ms"] = bench(lambda: kernels.linear_attention(phi, v), 20)
    torch.manual_seed(0)
    model = VistaModel(ModelSpec()).eval().cuda()
    summ = model.require_summarizer()
    g = torch.Generator().manual_seed(1)
    events = EventBatch.from_numpy(
        torch.randint(0, 10**7, (n,), generator=g).numpy(),
        torch.sort(torch.randint(1_600_000_000, 1_700_000_000, (n,), generator=g)).values.numpy(),
        torch.randint(0, 4, (n,), generator=g).numpy(),
        None,
    )
    try:
        events = events.to("cuda")  # type: ignore[attr-defined]
    except AttributeError:
        out["fold_note"] = "EventBatch has no .to(): the fold reads CPU events"
    t0 = time.perf_counter()
    summ.summarize(events)
    torch.cuda.synchronize()
    out["summarize_1e6_s"] = time.perf_counter() - t0
    return out


def part_d() -> dict[str, Any]:
    import numpy as np

    import kernels

    rng = np.random.default_rng(0)
    q = rng.standard_normal((512, 64)).astype(np.float32)
    bank = rng.standard_normal((10_000, 64)).astype(np.float32)
    kernels.topk(q, bank, 32, backend="faiss")
    t0 = time.perf_counter()
    for _ in range(20):
        kernels.topk(q, bank, 32, backend="faiss")
    return {"faiss_topk_512x10000_k32_ms": (time.perf_counter() - t0) / 20 * 1e3}


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: gpu_check measures nothing here")
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    for name, part in (("A", part_a), ("B", part_b), ("C", part_c), ("D", part_d)):
        try:
            results[name] = part()
        except Exception:  # noqa: BLE001  recorded, the other parts still run
            results[name] = {"error": traceback.format_exc(limit=3)}
        print(name, json.dumps(results[name], default=str), flush=True)
    out = HERE / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    lines = [f"GPU: {results['gpu']}, torch {results['torch']}, {results['date']}", ""]
    lines += ["| part | figure | value |", "|---|---|---:|"]
    for name in "ABCD":
        for k, val in _flat(results[name]):
            shown = f"{val:.4g}" if isinstance(val, float) and math.isfinite(val) else str(val)
            lines.append(f"| {name} | {k} | {shown.splitlines()[-1][:80]} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


if __name__ == "__main__":
    main()
