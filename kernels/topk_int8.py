"""Exact top-k by inner product, screened by an int8 product: the GSU's CPU search.

The exact search's floor on a CPU is the fp32 product itself (m x C x d
multiply-adds: ~4.4 ms for 512 x 10^4 x 64 on this project's two cores). The
integer product of int8-quantized queries and tokens is 4-5x cheaper (VNNI
through ``torch._int_mm``), and its error has a hard bound, so it can decide
which tokens *cannot* be in a candidate's top k; only the few that can are
scored exactly. The answer is the exact one (the same tokens as a float64 brute
force, wherever scores are not tied), not an approximation.

Quantization: query row r with its own scale a_r = max|q_r| / 127; bank tokens in
groups of similar size (max|B_j| within a factor GROUP_SPAN), group g with scale
b_g = its largest max|B_j| / 127 (one outsized token then does not flatten all the
others to zero); q^ = round(q / a), B^ = round(B / b), so ``P = q^ B^T`` is exact
in int32. With h = 1/2 (the rounding error, in scale units) and the L1 norms
A_r = |q^_r|_1, N_j = |B^_j|_1, for token j of group g::

    |q_r . B_j  -  a_r b_g P_rj|  <=  a_r b_g (h A_r + h N_j + d h^2)           (1)

Columns are laid out group by group, each group padded to whole chunks. Per
candidate row (one numba kernel over rows, in parallel):

1. chunk maxima M of P over runs of CHUNK columns (``torch.amax``);
2. about the k-th largest chunk maximum in units of a_r (bisection on M b_g);
   the best token of each of k chunks reaching it is scored exactly: their
   minimum ``low`` is a lower bound of the row's k-th best exact score (k
   distinct tokens);
3. by (1), token j can only reach ``low`` if ``P_rj + h N_j >= low / (a_r b_g) -
   h A_r - d h^2`` (plus a slack for floating-point rounding); chunks are tested
   first with their largest N_j. Tokens passing are scored exactly (float64 dot
   of the float32 inputs) and the best k kept, best first, ties by token index.

Rows whose candidates overflow the per-row buffer (a degenerate query, e.g. all
zeros, where every token ties) are searched by brute force instead. Rows are
processed in blocks of ROW_BLOCK so a block's int32 products stay in cache
between the product, the maxima and the kernel. Non-finite inputs and an
all-zero bank go to the brute force too.

Measured on the project's 2-core CPU (m=512, C=10^4, d=64, k=32): see
BENCHMARKS.md, issue 9, section B.
"""

from __future__ import annotations

import functools
import logging
import math
import threading

import numpy as np
import torch

CHUNK = 32  # tokens per chunk maximum
ROW_BLOCK = 128  # candidate rows per int8 product
H = 0.5 + 1e-4  # rounding error bound in scale units (1/2, plus float32 division error)
GROUP_SPAN = 4.0  # tokens whose max|b_j| differ by up to this factor share an int8 scale
MAX_GROUPS = 8  # smaller tokens than top / GROUP_SPAN**7 share the last group's scale
BISECTIONS = 12  # steps of the k-th largest chunk maximum: a bound needs a good one, not the best
log = logging.getLogger(__name__)
_lock = threading.Lock()  # one kernel at a time, whatever numba's threading layer


def suitable(n_tokens: int, k: int) -> bool:
    """Worth it (and possible: step 2 needs k chunks) for this bank size."""
    return n_tokens >= 2 * CHUNK * k


@functools.cache
def available() -> bool:
    """numba importable and torch's int8 product usable; checked once per process."""
    try:
        import numba  # noqa: F401

        a = torch.ones(2, 8, dtype=torch.int8)
        out = torch._int_mm(a, a.T.contiguous())
        return bool(out[0, 0] == 8)
    except Exception as e:  # pragma: no cover - depends on the installation
        log.warning("int8 GSU search unavailable (%s); using the heap search", e)
        return False


@functools.cache
def _kernels():  # type: ignore[no-untyped-def]
    """Compiled on first use (numba caches the machine code on disk between processes)."""
    import numba
    from numba import njit, prange

    @njit(parallel=True, cache=True, boundscheck=False)
    def token_sizes(bank):
        """max|b_j| of every token (inf where a token is not finite)."""
        C, d = bank.shape
        size = np.empty(C, np.float64)
        for j in prange(C):
            x = 0.0
            finite = True
            for i in range(d):
                y = abs(np.float64(bank[j, i]))
                finite &= y <= 3.5e38  # False for inf and NaN
                x = max(x, y)
            size[j] = x if finite else np.inf
        return size

    @njit(parallel=True, cache=True, boundscheck=False)
    def prepare_bank(bank, size, span_log2, max_groups, ch, h):
        """Tokens grouped by size (max|b_j| within a factor 2**span_log2 a group), each group
        with its own int8 scale and padded to whole chunks -> int8 tokens (Cp, d), the bank
        row of each column (-1: padding), h N_j per column, each chunk's scale."""
        C, d = bank.shape
        top = size.max()
        group = np.empty(C, np.int64)
        counts = np.zeros(max_groups, np.int64)
        gmax = np.zeros(max_groups, np.float64)
        for j in range(C):
            g = max_groups - 1
            if size[j] > 0:
                g = min(g, max(0, int(math.floor(math.log2(top / size[j]) / span_log2))))
            group[j] = g
            counts[g] += 1
            gmax[g] = max(gmax[g], size[j])
        start = np.zeros(max_groups + 1, np.int64)
        for g in range(max_groups):
            start[g + 1] = start[g] + (counts[g] + ch - 1) // ch * ch
        Cp = start[max_groups]
        bq = np.zeros((Cp, d), np.int8)
        tok = np.full(Cp, -1, np.int64)
        norms = np.zeros(Cp, np.float64)
        scale = np.empty(Cp // ch, np.float64)
        for g in range(max_groups):
            scale[start[g] // ch : start[g + 1] // ch] = gmax[g] / 127 if gmax[g] > 0 else 1.0
        pos = np.empty(C, np.int64)  # each token's column: groups in order, tokens in order
        cursor = start[:max_groups].copy()
        for j in range(C):
            pos[j] = cursor[group[j]]
            cursor[group[j]] += 1
        for j in prange(C):
            g = group[j]
            p = pos[j]
            tok[p] = j
            inv = 127 / gmax[g] if gmax[g] > 0 else 1.0
            nrm = 0
            for i in range(d):
                x = np.int8(np.rint(np.float64(bank[j, i]) * inv))
                bq[p, i] = x
                nrm += abs(np.int64(x))
            norms[p] = h * nrm
        return bq, tok, norms, scale

    @njit(cache=True, boundscheck=False)
    def prepare_queries(q, h):
        """Per-row int8 scale a_r -> int8 queries, 1 / a_r, and h A_r + d h^2 + slack."""
        m, d = q.shape
        qq = np.empty((m, d), np.int8)
        inv_a = np.empty(m, np.float64)
        off = np.empty(m, np.float64)
        for r in range(m):
            x = 0.0
            for i in range(d):
                x = max(x, abs(np.float64(q[r, i])))
            a = x / 127 if x > 0 else 1.0  # a zero query: every score 0, every token ties
            nrm = 0
            for i in range(d):
                v = np.int8(np.rint(np.float64(q[r, i]) / a))
                qq[r, i] = v
                nrm += abs(np.int64(v))
            inv_a[r] = 1.0 / a
            off[r] = h * nrm + d * h * h
        return qq, inv_a, off

    @njit(parallel=True, cache=True, boundscheck=False, fastmath={"reassoc", "contract"})
    def select_rows(
        ip,
        M,
        q,
        bank,
        tok,
        inv_a,
        off,
        norms,
        chunk_norms,
        chunk_scale,
        inv_scale,
        k,
        v,
        cidx,
        buf,
        cs,
        cj,
        out_v,
        out_i,
        ncand,
    ):
        """ip (R, Cp) int32 products of R rows, M (R, nc) their chunk maxima; q (R, d) float32
        the rows' queries; bank (C, d) float32; tok (Cp,) the bank row of each column (-1:
        padding); inv_a (R,) = 1 / a_r; off (R,) = h A_r + d h^2 + slack; norms (Cp,) =
        h N_j; chunk_norms (nc,) their chunk maxima; chunk_scale (nc,) the chunk's group
        scale b_g, inv_scale its inverse. Writes the rows' top k (best first) to out_v /
        out_i and the candidate counts to ncand (-1: too many, row not done). v, cidx, buf,
        cs, cj: scratch, one row per thread."""
        rows, nc = M.shape
        ch = ip.shape[1] // nc
        d = bank.shape[1]
        cap = cs.shape[1]
        cap_chunks = buf.shape[1] // ch
        for r in prange(rows):
            th = numba.get_thread_id()
            row = ip[r]
            mrow = M[r]
            qr = q[r]
            vr = v[th]
            idx = cidx[th]
            bf = buf[th]
            # 2. k chunks with the largest maxima (bisection on the value, in units of a_r)
            lo = np.inf
            hi = -np.inf
            for c in range(nc):
                vr[c] = mrow[c] * chunk_scale[c]
                lo = min(lo, vr[c])
                hi = max(hi, vr[c])
            for _ in range(BISECTIONS):  # lo: at least k chunks reach it; hi: fewer above
                mid = 0.5 * (lo + hi)
                cnt = 0
                for c in range(nc):
                    cnt += vr[c] >= mid
                if cnt >= k:
                    lo = mid
                else:
                    hi = mid
            # ... the best token of k of them scored exactly: their minimum ``low`` is a
            # lower bound of the row's k-th best exact score. Chunks are copied out first:
            # independent loads overlap, a branchy scan of the row's chunks in place does not.
            taken = 0
            for c in range(nc):
                if taken < k and vr[c] >= lo:
                    idx[taken] = c
                    taken += 1
            for u in range(taken):
                for j in range(ch):
                    bf[u * ch + j] = row[idx[u] * ch + j]
            for u in range(taken):  # each chunk's best token (branch-free)
                best = 0
                bv = bf[u * ch]
                for j in range(1, ch):
                    x = bf[u * ch + j]
                    best = j if x > bv else best
                    bv = max(bv, x)
                idx[u] = tok[idx[u] * ch + best]
            low = np.inf
            for u in range(taken):  # exact scores; independent loads of bank rows overlap
                bj = bank[idx[u]]
                s = 0.0
                for i in range(d):
                    s += np.float64(qr[i]) * np.float64(bj[i])
                low = min(low, s)
            # 3. every token that can reach ``low``, scored exactly; chunks first, by their
            # maximum and largest norm (integer pre-test), then their tokens
            target = low * inv_a[r]
            off_r = off[r]
            nch = 0
            for c in range(nc):
                idx[nch] = c
                nch += mrow[c] + chunk_norms[c] >= target * inv_scale[c] - off_r
            if nch > cap_chunks:
                ncand[r] = -1
                continue
            for u in range(nch):
                for j in range(ch):
                    bf[u * ch + j] = row[idx[u] * ch + j]
            n = 0
            cjr = cj[th]
            for u in range(nch):  # the candidates' bank rows ...
                c = idx[u]
                t = target * inv_scale[c] - off_r
                ti = math.floor(t - chunk_norms[c])
                for j in range(ch):
                    x = bf[u * ch + j]
                    col = c * ch + j
                    if x >= ti and x + norms[col] >= t and tok[col] >= 0:
                        if n < cap:
                            cjr[n] = tok[col]
                        n += 1
            if n > cap:
                ncand[r] = -1
                continue
            csr = cs[th]
            for u in range(n):  # ... then their exact scores
                bj = bank[cjr[u]]
                s = 0.0
                for i in range(d):
                    s += np.float64(qr[i]) * np.float64(bj[i])
                csr[u] = s
            ncand[r] = n
            # the best k, best first; equal scores by token index (a stable order)
            ov = out_v[r]
            oi = out_i[r]
            filled = 0
            for u in range(n):
                s = csr[u]
                j = cjr[u]
                if filled == k and (s < ov[k - 1] or (s == ov[k - 1] and j > oi[k - 1])):
                    continue
                p = filled if filled < k else k - 1
                while p > 0 and (ov[p - 1] < s or (ov[p - 1] == s and oi[p - 1] > j)):
                    ov[p] = ov[p - 1]
                    oi[p] = oi[p - 1]
                    p -= 1
                ov[p] = s
                oi[p] = j
                if filled < k:
                    filled += 1

    return token_sizes, prepare_bank, prepare_queries, select_rows


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel now, not on the first request."""
    if available():
        rng = np.random.default_rng(0)
        q = rng.standard_normal((4, 8)).astype(np.float32)
        topk(q, rng.standard_normal((2 * CHUNK, 8)).astype(np.float32), 1)


_local = threading.local()


def _buffers(rows: int, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This thread's int32 product and chunk-maximum blocks, reused between calls (a fresh
    5 MB block a request costs its page faults, ~0.3 ms here). Made outside inference mode
    whatever the caller's: an inference tensor could not be written by a later search
    outside it (the scorer searches in inference mode, ``add_model`` warms up outside)."""
    ip, M = getattr(_local, "buffers", (None, None))
    if ip is None or M is None or ip.numel() < rows * nc * CHUNK:
        with torch.inference_mode(False):
            ip = torch.empty(rows * nc * CHUNK, dtype=torch.int32)
            M = torch.empty(rows * nc, dtype=torch.int32)
        _local.buffers = (ip, M)
    return ip[: rows * nc * CHUNK].view(rows, nc * CHUNK), M[: rows * nc].view(rows, nc)


def _brute_force(q: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q.astype(np.float64) @ bank.T.astype(np.float64)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1).astype(np.float32), idx.astype(np.int64)


def topk(q: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) float32 queries, (C, d) float32 bank, 1 <= k, ``suitable(C, k)`` ->
    scores (m, k) float32 and indices (m, k) int64, best first. Uses as many threads as
    torch does."""
    import numba

    if not suitable(bank.shape[0], k):
        raise ValueError(
            f"int8 search needs C >= {2 * CHUNK * k} tokens for k={k}, got {bank.shape[0]}"
        )
    if q.shape[0] == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    threads = torch.get_num_threads()
    with _lock:
        try:
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]  # set at runtime
            # numba's OpenMP pool can resolve to torch's runtime (torch loads it globally)
            # and set its thread count to numba's when it starts: keep the caller's
            _keep_torch_threads(threads)
            return _search(q, bank, k)
        finally:
            _keep_torch_threads(threads)


def _keep_torch_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _search(q: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import numba

    m, d = q.shape
    scores = np.empty((m, k), np.float64)
    idx = np.empty((m, k), np.int64)
    token_sizes, prepare_bank, prepare_queries, kernel = _kernels()
    size = token_sizes(bank)
    top = size.max()  # inf if any token is not finite
    if not (top > 0 and math.isfinite(top)) or not np.isfinite(q).all():
        return _brute_force(q, bank, k)  # nothing to screen with: every score ties or is NaN
    bq_np, tok_np, norms_np, scale_np = prepare_bank(
        bank, size, math.log2(GROUP_SPAN), MAX_GROUPS, CHUNK, H
    )
    qq_np, inv_a, off = prepare_queries(q, H)
    nc = bq_np.shape[0] // CHUNK
    chunk_norms = norms_np.reshape(nc, CHUNK).max(1)
    # floating-point rounding (divisions, the float64 dots) is far below this slack
    off += 2.0 + 1e-6 * 127 * (off / H + norms_np.max() / H)
    pad = torch.from_numpy(np.flatnonzero(tok_np < 0))
    cap = 4 * k + 64
    rows = min(ROW_BLOCK, m)
    T = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set at runtime
    v, cidx = np.empty((T, nc), np.float64), np.empty((T, nc), np.int64)
    buf = np.empty((T, min(nc, cap) * CHUNK), np.int32)
    cs, cj = np.empty((T, cap), np.float64), np.empty((T, cap), np.int64)
    ncand = np.zeros(m, np.int64)
    ip, M = _buffers(rows, nc)
    bqt, qq = torch.from_numpy(bq_np).T, torch.from_numpy(qq_np)
    inv_scale = 1 / scale_np
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        n = r1 - r0
        ipb = ip[:n]
        torch._int_mm(qq[r0:r1], bqt, out=ipb)
        if len(pad):
            ipb[:, pad] = torch.iinfo(torch.int32).min  # padding is never a chunk's best
        torch.amax(ipb.view(n, nc, CHUNK), -1, out=M[:n])
        kernel(
            ipb.numpy(), M[:n].numpy(), q[r0:r1], bank, tok_np, inv_a[r0:r1], off[r0:r1],
            norms_np, chunk_norms, scale_np, inv_scale, k, v, cidx, buf, cs, cj,
            scores[r0:r1], idx[r0:r1], ncand[r0:r1],
        )  # fmt: skip
    over = np.flatnonzero(ncand < 0)
    if len(over):
        scores[over], idx[over] = _brute_force(q[over], bank, k)
    return scores.astype(np.float32), idx
