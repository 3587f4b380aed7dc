"""Stage 1: VISTA-style summarization with quasi-linear attention.

K learned virtual seed tokens read a user's whole history through linear
attention with a SiLU feature map. Per layer l and head h the history enters
only through the running sum

    S[l, h] = sum_t silu(W_k^l e_t)_h (x) (W_v^l e_t)_h          (F x D per head)

normalized by the event count n at read-out, so:
* cost is linear in n and memory is independent of n (events stream in chunks);
* folding new events is ``S += sum over the new events`` -- the same state as
  summarizing everything again (fp64 accumulation keeps the difference at
  rounding level), at a cost proportional to the new events;
* a user with 10^6 events and one with 10^2 give tokens on the same scale.

Read-out (cost independent of n): for each layer, seeds query the state
(``silu(W_q x) S / n``), then attend to each other, then an MLP. With no
events S = 0 and the tokens are the model's no-history summary.
``values="events"`` sums the encoded events themselves instead of a learned value
projection (the state read-out's choice).

``readout="state"`` skips the seeds: the K = num_layers x feature_dim tokens are the
normalized state rows themselves (token (l, f): feature f's value sum in layer l, every
head side by side), and each candidate reads them with its own weights
(``CandidateRanker.read_state``): sum_k silu(W c)_{h,k} token_k[h] -- a linear-attention
read of the whole history addressed by the candidate, which a fixed set of seed queries
cannot give. On the synthetic data this took VISTA alone from 0.53 to 0.84-0.87 test AUC
(softmax slots: above last-100 DIN); on ml-latest-small it is 0.02 below the seed read-out
(BENCHMARKS.md, issue 3).

Options that no table showed winning were removed (BENCHMARKS.md keeps their figures):
the "seed" feature map (each seed a capped softmax over the events) and the "pool"
read-out (the read added to each seed, nothing learned after it).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernels import linear_attention
from summarizer.model.encoder import EventBatch, EventEncoder, previous_times
from summarizer.model.ridge import RidgeMemory

FEATURE_MAPS = ("silu", "softmax")
VALUE_MODES = ("projected", "events")
READOUTS = ("transformer", "state")


SHORT_SEGMENT = 64  # segments up to this many events are summed batched, by length bucket
# Without gradients, read-out runs over this many bytes of one activation (users x K x d
# float32) at a time: every layer is a few passes over its activations, and a pass that
# stays in a core's cache instead of going to memory made the seed read-out of 2,048
# users 2.4x faster on one thread (128 users for K = d = 64; same results bit for bit).
READOUT_PASS_BYTES = 1 << 21


def _segment_previous_times(
    ts: np.ndarray, starts: np.ndarray, lengths: np.ndarray, before: list[int | None]
) -> np.ndarray:
    """:func:`previous_times` of back-to-back segments at once: within segment k (events
    ``starts[k]`` to ``starts[k] + lengths[k]``, which cover ``ts``), each event's running
    maximum of the times before it, starting from ``before[k]`` (None: its first time)."""
    prev = np.empty_like(ts)
    if not len(ts):
        return prev
    prev[1:] = ts[:-1]
    prev[starts] = [ts[a] if t is None else t for a, t in zip(starts.tolist(), before, strict=True)]
    # One running maximum for all segments: each segment is lifted above the previous one.
    low = int(prev.min())
    span = int(prev.max()) - low + 1
    seg = np.repeat(np.arange(len(starts), dtype=np.int64), lengths) * span
    return np.maximum.accumulate(prev - low + seg) - seg + low


@dataclasses.dataclass
class SummaryState:
    """What a user's summary needs to absorb new events without re-reading old ones."""

    # float64, VistaSummarizer.state_shape: sum of phi(k) (x) [v, 1] (L, H, F, D+1); with a
    # ridge read-out, that flattened and then the history's second moments (ridge.py).
    kv: torch.Tensor
    n_events: int
    first_ts: int | None
    last_ts: int | None

    def clone(self) -> SummaryState:
        return SummaryState(self.kv.clone(), self.n_events, self.first_ts, self.last_ts)


class SeedReadoutLayer(nn.Module):
    def __init__(self, dim: int, heads: int, feature_dim: int) -> None:
        super().__init__()
        self.heads, self.feature_dim, self.head_dim = heads, feature_dim, dim // heads
        self.norm_q = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, heads * feature_dim)
        # The mean over many events of silu(k) (x) v is small (random signs cancel); normalizing
        # what the seeds read lets the history steer them from the first step.
        self.norm_read = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, kv_mean: torch.Tensor) -> torch.Tensor:
        """x: (B, K, d) seeds, or (K, d) when every user's are the same (the first layer:
        its queries are then computed once, not per user); kv_mean: (B, H, F, D) normalized
        state of this layer."""
        B = kv_mean.shape[0]
        K, d = x.shape[-2:]
        phi_q = F.silu(self.q(self.norm_q(x))).view(-1, K, self.heads, self.feature_dim)
        if x.dim() == 2:
            read = torch.einsum("khf,bhfd->bkhd", phi_q[0], kv_mean).reshape(B, K, d)
        else:
            read = torch.einsum("bkhf,bhfd->bkhd", phi_q, kv_mean).reshape(B, K, d)
        x = x.expand(B, K, d)
        x = x + self.out(self.norm_read(read))
        x = x + self._seed_attention(self.norm_self(x))
        return x + self.ff(self.norm_ff(x))

    def _seed_attention(self, h: torch.Tensor) -> torch.Tensor:
        """The seeds' self-attention: ``self_attn(h, h, h)`` with the module's own weights,
        through scaled_dot_product_attention (2.3x faster than nn.MultiheadAttention's path
        at 1,553 users x 64 seeds on one thread; read-out is most of an incremental day)."""
        B, K, d = h.shape
        a = self.self_attn
        qkv = F.linear(h, a.in_proj_weight, a.in_proj_bias)
        q, k, v = qkv.view(B, K, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return F.linear(o.transpose(1, 2).reshape(B, K, d), a.out_proj.weight, a.out_proj.bias)


class VistaSummarizer(nn.Module):
    """Events -> state (fold) -> K x d summary tokens (readout)."""

    def __init__(
        self,
        encoder: EventEncoder,
        num_seeds: int,
        dim: int,
        heads: int,
        feature_dim: int,
        layers: int,
        chunk_size: int = 4096,
        feature_map: str = "silu",
        values: str = "projected",
        readout: str = "transformer",
        ridge: RidgeMemory | None = None,
    ) -> None:
        super().__init__()
        self.ridge = ridge
        if dim % heads:
            raise ValueError(f"d_model {dim} is not divisible by num_heads {heads}")
        self.encoder = encoder
        self.num_seeds, self.dim, self.heads, self.feature_dim, self.layers = (
            num_seeds,
            dim,
            heads,
            feature_dim,
            layers,
        )
        self.head_dim = dim // heads
        self.chunk_size = chunk_size
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        self.feature_map = feature_map
        if values not in VALUE_MODES:
            raise ValueError(f"values must be one of {VALUE_MODES}, got {values!r}")
        # "projected": per-layer learned values W_v e (VISTA); "events": the encoded event itself,
        # head h reading its slice of e (every layer sums the same values).
        self.values = values
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        # readout "state" needs num_seeds == layers * feature_dim: ModelSpec checks it (it
        # knows the model kind too).
        self.key_dim = feature_dim  # F features per head
        self.state_rows = feature_dim
        # One matmul gives every layer's keys (and projected values).
        self.value_dim = self.head_dim if values == "projected" else 0
        self.kv = nn.Linear(dim, layers * heads * (self.key_dim + self.value_dim))
        # "state" has no seeds: the tokens are the state's rows (see readout_batch).
        seeded = readout != "state"
        self.seeds = nn.Parameter(torch.randn(num_seeds, dim) * 0.02) if seeded else None
        self.readout_layers = nn.ModuleList(
            SeedReadoutLayer(dim, heads, feature_dim) for _ in range(layers if seeded else 0)
        )
        self.final_norm = nn.LayerNorm(dim) if seeded else None

    @property
    def attention_shape(self) -> tuple[int, int, int, int]:
        # The last value column is a constant 1, so the state also carries each feature's
        # key mass sum_t phi(k_t) -- mergeable like the rest.
        return (self.layers, self.heads, self.state_rows, self.head_dim + 1)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The state buffer: the attention sums, and with a ridge read-out the second
        moments after them in one flat vector (one array to store, fold and copy)."""
        if self.ridge is None:
            return self.attention_shape
        return (math.prod(self.attention_shape) + math.prod(self.ridge.moments_shape),)

    def attention_part(self, kv: torch.Tensor) -> torch.Tensor:
        """The attention sums (..., L, H, F, D+1) of state buffers (..., *state_shape): a view."""
        if self.ridge is None:
            return kv
        n = math.prod(self.attention_shape)
        return kv[..., :n].view(*kv.shape[:-1], *self.attention_shape)

    def moments_part(self, kv: torch.Tensor) -> torch.Tensor:
        """The second moments (..., k+1, k+2) of state buffers (ridge read-out only): a view."""
        if self.ridge is None:
            raise ValueError("this summarizer has no ridge read-out (ModelSpec.ridge_dim == 0)")
        n = math.prod(self.attention_shape)
        return kv[..., n:].view(*kv.shape[:-1], *self.ridge.moments_shape)

    def empty_state(self) -> SummaryState:
        return SummaryState(torch.zeros(self.state_shape, dtype=torch.float64), 0, None, None)

    def keys_values(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded events (n, d) -> feature-mapped keys (n, L, H, F) and values (n, L, H, D+1)."""
        n = e.shape[0]
        kv = self.kv(e).view(n, self.layers, self.heads, self.key_dim + self.value_dim)
        k = kv[..., : self.key_dim]
        if self.values == "projected":
            v = kv[..., self.key_dim :]
        else:
            v = e.view(n, 1, self.heads, self.head_dim).expand(n, self.layers, -1, -1)
        phi = F.silu(k) if self.feature_map == "silu" else torch.softmax(k, dim=-1)
        ones = kv.new_ones(n, self.layers, self.heads, 1)
        return phi, torch.cat([v, ones], dim=-1)

    def state_sum(self, phi_k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """sum_t phi_k[t] (x) v[t] per layer and head, (L, H, F, D+1) fp32, through
        :func:`kernels.linear_attention` (layers x heads as its heads): the Triton streaming
        kernel for CUDA tensors without gradients, the torch path otherwise."""
        n, L, H, Fd = phi_k.shape
        Dv = v.shape[-1]
        result = linear_attention(phi_k.reshape(n, L * H, Fd), v.reshape(n, L * H, Dv))
        return result.state.view(L, H, Fd, Dv)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are: the fold encodes events and sums their states
        there (the Triton kernel on a GPU) and adds the sums into the states where those
        are (float64 states stay on the CPU, as the batch job keeps them)."""
        return self.kv.weight.device

    @torch.no_grad()
    def fold(self, state: SummaryState, events: EventBatch) -> SummaryState:
        """Absorb new events into a copy of the state.

        Events come in fold order (time order; a batch job uses arrival day, then
        time). ``first_ts``/``last_ts`` are the earliest and latest event times seen.
        """
        out = state.clone()
        n = len(events)
        dev = self.device
        for start in range(0, n, self.chunk_size):
            chunk = events.slice(start, start + self.chunk_size)
            on_dev = chunk.to(dev)
            e = self.encoder(on_dev, previous_times(on_dev.ts, out.last_ts))
            phi_k, v = self.keys_values(e)
            self.attention_part(out.kv).add_(self.state_sum(phi_k, v).to(out.kv.device))
            if self.ridge is not None:
                self.moments_part(out.kv).add_(self.ridge.moments(on_dev).to(out.kv.device))
            out.n_events += len(chunk)
            lo, hi = int(chunk.ts.min()), int(chunk.ts.max())
            out.first_ts = lo if out.first_ts is None else min(out.first_ts, lo)
            out.last_ts = hi if out.last_ts is None else max(out.last_ts, hi)
        return out

    @torch.no_grad()
    def fold_segments(
        self,
        states: list[SummaryState],
        events: EventBatch,
        offsets: list[int],
        *,
        in_place: bool = False,
    ) -> list[SummaryState]:
        """Fold consecutive segments of ``events`` into their states, one state each.

        ``events[offsets[i]:offsets[i+1]]`` belong to ``states[i]``. Equals calling
        :meth:`fold` per segment, but batched: all events are encoded in one pass, the
        gaps of every segment come from one segmented running maximum, and the sums of
        short segments (the many users of an incremental day with a few events each)
        are one batched matmul per length bucket instead of one small einsum per user.
        ``in_place``: update and return the given states (the caller owns them, e.g.
        views into one buffer) instead of copies; they must be distinct states whose
        ``kv`` do not overlap (one state per user, as the batch job keeps them).
        """
        if len(offsets) != len(states) + 1 or offsets[0] != 0 or offsets[-1] != len(events):
            raise ValueError(
                f"{len(states)} states need {len(states) + 1} offsets from 0 to {len(events)}"
            )
        out = states if in_place else [st.clone() for st in states]
        dev = self.device
        first = 0
        for lo in range(0, len(events), self.chunk_size):  # the memory bound of fold()
            hi = min(lo + self.chunk_size, len(events))
            while offsets[first + 1] <= lo:
                first += 1
            parts = []  # (state index, start, stop) of the segments inside [lo, hi)
            i = first
            while i < len(out) and offsets[i] < hi:
                a, b = max(offsets[i], lo), min(offsets[i + 1], hi)
                if b > a:
                    parts.append((i, a - lo, b - lo))
                i += 1
            piece = events.slice(lo, hi)
            ts = piece.ts.numpy()
            starts = np.array([a for _, a, _ in parts], dtype=np.int64)
            lengths = np.array([b - a for _, a, b in parts], dtype=np.int64)
            before = [out[i].last_ts for i, _, _ in parts]
            prev = torch.from_numpy(_segment_previous_times(ts, starts, lengths, before))
            phi_k, v = self.keys_values(self.encoder(piece.to(dev), prev.to(dev)))
            self._add_segment_sums(out, parts, starts, lengths, phi_k, v)
            if self.ridge is not None:
                self._add_segment_moments(out, parts, piece)
            t_min = np.minimum.reduceat(ts, starts).tolist()
            t_max = np.maximum.reduceat(ts, starts).tolist()
            for (i, a, b), t0, t1 in zip(parts, t_min, t_max, strict=True):
                st = out[i]
                st.n_events += b - a
                st.first_ts = t0 if st.first_ts is None else min(st.first_ts, t0)
                st.last_ts = t1 if st.last_ts is None else max(st.last_ts, t1)
        return out

    def _add_segment_sums(
        self,
        out: list[SummaryState],
        parts: list[tuple[int, int, int]],
        starts: np.ndarray,
        lengths: np.ndarray,
        phi_k: torch.Tensor,
        v: torch.Tensor,
    ) -> None:
        """out[i].kv += sum over its events of phi_k (x) v, for each part (i, start, stop)
        (``starts``, ``lengths``: the parts' starts and lengths as arrays)."""
        n = phi_k.shape[0]
        bucket = np.where(
            lengths <= SHORT_SEGMENT, 1 << np.ceil(np.log2(np.maximum(lengths, 1))).astype(int), 0
        )
        # float32 sums added into float64 states: the in-place add converts exactly,
        # without a float64 copy of the sums.
        for j in np.flatnonzero(bucket == 0).tolist():  # long segments: one kernel call each
            i, a, b = parts[j]
            kv = out[i].kv
            self.attention_part(kv).add_(self.state_sum(phi_k[a:b], v[a:b]).to(kv.device))
        short = np.flatnonzero(bucket > 0)
        if not len(short):
            return
        # Padded to their bucket's length with a zero row (index n), summed by one bmm.
        phi_z = torch.cat([phi_k, phi_k.new_zeros(1, *phi_k.shape[1:])])
        v_z = torch.cat([v, v.new_zeros(1, *v.shape[1:])])
        for width in np.unique(bucket[short]).tolist():
            sel = short[bucket[short] == width]
            offs = np.arange(width)
            rows = np.where(offs < lengths[sel, None], starts[sel, None] + offs, n)
            r = torch.from_numpy(rows).to(phi_k.device)
            sums = torch.einsum("bplhf,bplhd->blhfd", phi_z[r], v_z[r])
            sums = sums.to(out[parts[sel[0]][0]].kv.device)  # one copy per bucket
            for k, j in enumerate(sel.tolist()):
                self.attention_part(out[parts[j][0]].kv).add_(sums[k])

    def _add_segment_moments(
        self, out: list[SummaryState], parts: list[tuple[int, int, int]], piece: EventBatch
    ) -> None:
        """out[i]'s second moments += those of its events in ``piece`` (ridge read-out)."""
        assert self.ridge is not None
        x, y = self.ridge.features(piece.to(self.device))
        xy = torch.cat([x, y.unsqueeze(1)], 1)
        for i, a, b in parts:
            kv = out[i].kv
            self.moments_part(kv).add_((x[a:b].T @ xy[a:b]).to(kv.device))

    def readout_batch(self, kv: torch.Tensor, n_events: torch.Tensor) -> torch.Tensor:
        """State buffers (B, *state_shape) and counts (B,) -> tokens (B, K, d) (the ridge
        read-out's moments are read by the candidates themselves), on the model's device.
        Differentiable."""
        dev = self.device
        return self.readout_attention(self.attention_part(kv).to(dev), n_events.to(dev))

    def readout_attention(self, kv: torch.Tensor, n_events: torch.Tensor) -> torch.Tensor:
        """Attention sums (B, L, H, F, D+1) and counts (B,) -> tokens (B, K, d)."""
        B = kv.shape[0]
        step = max(1, READOUT_PASS_BYTES // (4 * self.num_seeds * self.dim))
        if step < B and not torch.is_grad_enabled():  # users are independent: in pieces
            parts = [
                self.readout_attention(kv[i : i + step], n_events[i : i + step])
                for i in range(0, B, step)
            ]
            return torch.cat(parts)
        values, mass = kv[..., :-1], kv[..., -1:]
        if self.feature_map == "silu":
            # VISTA's quasi-linear attention: normalize by the event count.
            kv_mean = (values / n_events.clamp(min=1).to(kv.dtype).view(B, 1, 1, 1, 1)).float()
        else:
            # Softmax features assign each event to slots: each slot's mean value (one
            # pseudo-count keeps empty slots at 0).
            kv_mean = (values / (mass + 1.0)).float()
        if self.seeds is None or self.final_norm is None:
            # "state": token (l, f) is feature f's normalized value sum in layer l, the heads
            # side by side -- (B, L, H, F, D) -> (B, L*F, H*D). Nothing learned in between:
            # candidates read these rows themselves (CandidateRanker.read_state).
            L, H, Fd, D = kv_mean.shape[1:]
            return kv_mean.permute(0, 1, 3, 2, 4).reshape(B, L * Fd, H * D)
        x = self.seeds  # (K, d): the first layer's queries are the same for every user
        for layer, block in enumerate(self.readout_layers):
            x = block(x, kv_mean[:, layer])
        return self.final_norm(x)

    @torch.no_grad()
    def readout(self, state: SummaryState) -> torch.Tensor:
        """One state -> its (K, d) summary tokens."""
        return self.readout_batch(state.kv.unsqueeze(0), torch.tensor([state.n_events]))[0]

    @torch.no_grad()
    def summarize(self, events: EventBatch) -> tuple[SummaryState, torch.Tensor]:
        state = self.fold(self.empty_state(), events)
        return state, self.readout(state)
