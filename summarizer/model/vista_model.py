"""The whole model: event encoder, a history module (VISTA or a baseline), the ranker.

``ModelSpec.kind`` picks how a user's history becomes memory for the ranker:

* ``vista``   K summary tokens read out of the quasi-linear-attention state (the product);
* ``none``    no history (the cold-start floor);
* ``mean``    mean of all event encodings, one token;
* ``din``     DIN-style target attention over the last ``last_k`` events;
* ``linkedin`` last ``last_k`` events through a self-attention layer, then candidates
  cross-attend (append + cross-attention);
* ``transact`` TransAct-style early fusion: each of the last ``last_k`` events is
  concatenated with the candidate, a transformer layer mixes them, pooled;
* ``full``    target attention over the entire history (the expensive upper bound);
* ``sim``     SIM soft search: each candidate attends to its own top-``gsu_k`` events of the
  whole history, chosen by the general search unit (``kernels.topk``).

``gsu_k > 0`` on a ``vista`` model adds the general search unit to VISTA: each
candidate also attends to its top-``gsu_k`` tokens of the user's memory bank --
the events before the summary, served as TWIN-V2 cluster tokens with a
log(size) bias (a raw event is a cluster of one) -- in a softmax of their own
whose result is added to the summary attention's (``gsu_softmax="shared"``: in
the summary tokens' softmax). The search score is the ranker's own attention
logit summed over heads (TWIN's consistent GSU), so training teaches the search
and the attention together.

All share the encoder, item table and ranker, so they differ only in how much
of the history they can use and at what online cost.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import torch
from torch import nn

from kernels import GatheredMemory
from summarizer.model.encoder import EventBatch, EventEncoder, ItemEmbedding, previous_times
from summarizer.model.ranker import CandidateRanker, context_features
from summarizer.model.summarization import VistaSummarizer

Kind = Literal["vista", "none", "mean", "din", "linkedin", "transact", "full", "sim"]
KINDS: tuple[str, ...] = ("vista", "none", "mean", "din", "linkedin", "transact", "full", "sim")
MEMORIES: tuple[str, ...] = ("events", "clusters")
GSU_SOFTMAXES: tuple[str, ...] = ("separate", "shared")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Architecture hyper-parameters; saved as the model's JSON config."""

    kind: str = "vista"
    num_seeds: int = 64
    d_model: int = 64
    num_heads: int = 4
    feature_dim: int = 32
    feature_map: str = "silu"  # VISTA's quasi-linear SiLU map, "softmax" slots, or "seed"
    values: str = "projected"  # summed values: learned W_v e per layer, or the encoded events
    # Seed read-out: VISTA's transformer layers, "pool" (read only), or "state" (no seeds: the
    # tokens are the state rows, read by each candidate; num_seeds = num_layers * feature_dim).
    readout: str = "transformer"
    num_layers: int = 2
    item_buckets: int = 1 << 17
    num_actions: int = 8
    chunk_size: int = 4096
    last_k: int = 100
    recent_window: int = 32  # VISTA: raw events since the last summary, attended with the tokens
    candidate_features: int = 0
    rating_head: bool = False
    gsu_k: int = 0  # memory tokens each candidate gathers (vista: optional; sim: required)
    # What the bank holds in training/evaluation: the raw earlier events (SIM) or TWIN-V2
    # cluster tokens of them (what the cluster job serves). Serving reads whatever is stored.
    memory: str = "events"
    # How the GSU picks meet the summary: their own softmax, added to the summary attention
    # ("separate"), or one softmax over both ("shared"; stalled training, BENCHMARKS.md).
    gsu_softmax: str = "separate"
    # A learnable per-head gate on the separate GSU attention (VISTA), started at this value;
    # None: no gate (the picks' attention is added as it is). Measured in BENCHMARKS.md:
    # None best on the synthetic data, 0.0 (start as the summary alone) on ml-latest-small.
    gsu_gate: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"unknown model kind {self.kind!r}; expected one of {', '.join(KINDS)}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            )
        if not 1 <= self.num_seeds <= 512:
            raise ValueError(f"num_seeds must be in 1..512, got {self.num_seeds}")
        if self.gsu_k < 0:
            raise ValueError(f"gsu_k must be >= 0, got {self.gsu_k}")
        if self.kind == "sim" and self.gsu_k < 1:
            raise ValueError("kind 'sim' retrieves per candidate: gsu_k must be >= 1")
        if self.memory not in MEMORIES:
            raise ValueError(
                f"unknown memory {self.memory!r}; expected one of {', '.join(MEMORIES)}"
            )
        if self.gsu_softmax not in GSU_SOFTMAXES:
            raise ValueError(
                f"unknown gsu_softmax {self.gsu_softmax!r}; expected one of "
                f"{', '.join(GSU_SOFTMAXES)}"
            )
        if self.kind == "vista" and self.readout == "state":
            rows = self.num_layers * self.feature_dim
            if self.num_seeds != rows:
                raise ValueError(
                    f'readout "state" gives num_layers x feature_dim = {rows} tokens: '
                    f"num_seeds must be {rows}, got {self.num_seeds}"
                )
            if self.feature_map == "seed":
                raise ValueError(
                    'readout "state" needs the silu or softmax feature map, not "seed"'
                )
        if self.gsu_k and self.kind not in ("vista", "sim"):
            raise ValueError(f"gsu_k applies to kinds vista and sim, not {self.kind!r}")

    @property
    def uses_memory_bank(self) -> bool:
        """Candidates gather top-k tokens from a memory bank (GSU)."""
        return self.gsu_k > 0

    def require_summarizer(self) -> None:
        """Raise unless this kind of model summarizes histories (only 'vista' does)."""
        if self.kind != "vista":
            raise ValueError(
                f"model kind {self.kind!r} has no summarizer; only 'vista' models summarize"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"model config has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class ReconstructionDecoder(nn.Module):
    """VISTA's auxiliary loss: from the summary tokens alone, reconstruct past events.

    A query made from an event's relative position in the history attends to
    the tokens and predicts that event's encoding; the next event (relative
    position 1) is always among the targets. Forces the seeds to keep the
    whole history, not only what the ranking label needs today.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.Linear(4, dim), nn.GELU(), nn.Linear(dim, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    @staticmethod
    def position_features(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        r = t.float() / p.clamp(min=1).float()
        return torch.stack(
            [
                r,
                torch.sin(torch.pi * r),
                torch.cos(torch.pi * r),
                torch.log1p((p - t).float()) / 14,
            ],
            -1,
        )

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """tokens (B, K, d); positions t (B, R) of events to rebuild in histories of length p (B,)."""
        q = self.query(self.position_features(t, p.unsqueeze(1)))
        return self.out(self.attn(q, tokens, tokens, need_weights=False)[0])


class VistaModel(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d, h = spec.d_model, spec.num_heads
        self.items = ItemEmbedding(spec.item_buckets, d)
        self.encoder = EventEncoder(self.items, spec.num_actions, d)
        self.ranker = CandidateRanker(
            self.items,
            d,
            h,
            spec.candidate_features,
            spec.rating_head,
            spec.gsu_softmax,
            gsu_gate=(
                spec.gsu_gate
                if spec.kind == "vista" and spec.uses_memory_bank and spec.gsu_softmax == "separate"
                else None
            ),
            state_tokens=spec.num_seeds if spec.kind == "vista" and spec.readout == "state" else 0,
        )
        self.summarizer: VistaSummarizer | None = None
        self.recon: ReconstructionDecoder | None = None
        self.history_layer: nn.Module | None = None
        self.fusion: nn.Module | None = None
        self.recent_type = nn.Parameter(torch.zeros(d))
        # Memory-bank tokens (GSU) are tagged too; only models that use a bank have the tag,
        # so the weights of models without one are unchanged.
        self.memory_type = nn.Parameter(torch.zeros(d)) if spec.uses_memory_bank else None
        if spec.kind == "vista":
            self.summarizer = VistaSummarizer(
                self.encoder,
                spec.num_seeds,
                d,
                h,
                spec.feature_dim,
                spec.num_layers,
                spec.chunk_size,
                spec.feature_map,
                spec.values,
                spec.readout,
            )
            self.recon = ReconstructionDecoder(d, h)
        elif spec.kind == "linkedin":
            self.history_layer = nn.TransformerEncoderLayer(
                d, h, 2 * d, dropout=0.0, batch_first=True, norm_first=True
            )
        elif spec.kind == "transact":
            self.fusion = nn.ModuleDict(
                {
                    "mix_in": nn.Linear(2 * d, d),
                    "layer": nn.TransformerEncoderLayer(
                        d, h, 2 * d, dropout=0.0, batch_first=True, norm_first=True
                    ),
                    "mix_out": nn.Linear(2 * d, d),
                }
            )

    # ---- parameter accounting -------------------------------------------------------------
    def parameter_counts(self) -> tuple[int, int]:
        """(all parameters, parameters outside the hashed item table)."""
        total = sum(p.numel() for p in self.parameters())
        table = sum(p.numel() for p in self.items.parameters())
        return total, total - table

    def mark_recent(self, encoded: torch.Tensor) -> torch.Tensor:
        """Tag encoded raw events so the ranker can tell them from summary tokens."""
        return encoded + self.recent_type

    def mark_memory(self, encoded: torch.Tensor) -> torch.Tensor:
        """Tag memory-bank tokens (encoded events, or cluster means of them)."""
        if self.memory_type is None:
            raise ValueError("this model has no memory bank (ModelSpec.gsu_k == 0)")
        return encoded + self.memory_type

    @torch.no_grad()
    def bank_embeddings(self, events: EventBatch, prev_ts: int | None = None) -> torch.Tensor:
        """Memory-bank tokens of raw events (n, d): their encodings, as the ranker sees them.
        TWIN-V2 cluster tokens are means of these (``summarizer.memory.clustering``)."""
        return self.encoder(events, previous_times(events.ts, prev_ts))

    @torch.no_grad()
    def gather_banks(
        self,
        q: torch.Tensor,
        q_offsets: torch.Tensor,
        banks: list[tuple[torch.Tensor, torch.Tensor | None] | None],
        gsu_backend: str = "auto",
    ) -> GatheredMemory | None:
        """The GSU for a jagged batch of requests: each candidate's top-``gsu_k`` tokens of its
        own request's memory bank, with bias log(size).

        q: (M, H, D) candidate queries, ``q_offsets`` (R+1,); ``banks[r]``: request r's bank,
        tokens (C, d) unmarked (event encodings or cluster means) and sizes (C,) (None: one
        event each), or None. None when the model has no GSU or no request has a bank.
        """
        present = [b for b in banks if b is not None and b[0].shape[0]]
        if not self.spec.uses_memory_bank or not present:
            return None
        from kernels import topk

        G = self.spec.gsu_k
        tokens = torch.cat([b[0].float() for b in present])
        k, v = self.ranker.project_memory(self.mark_memory(tokens))  # all banks in one matmul
        flat_k = k.reshape(k.shape[0], -1).numpy()
        bias = torch.cat(
            [
                torch.zeros(b[0].shape[0])
                if b[1] is None
                else torch.log(torch.as_tensor(b[1], dtype=torch.float32).clamp(min=1))
                for b in present
            ]
        )
        idx = torch.full((q.shape[0], G), -1, dtype=torch.long)
        offsets, start = [0], 0
        for r, bank in enumerate(banks):
            c = 0 if bank is None else int(bank[0].shape[0])
            a, b = int(q_offsets[r]), int(q_offsets[r + 1])
            if c and b > a:
                flat_q = q[a:b].reshape(b - a, -1).float().numpy()
                _, top = topk.topk(flat_q, flat_k[start : start + c], G, backend=gsu_backend)  # type: ignore[arg-type]
                idx[a:b, : top.shape[1]] = torch.from_numpy(top)
            start += c
            offsets.append(start)
        return GatheredMemory(idx, k, v, torch.tensor(offsets), bias)

    # ---- serving-side helpers (VISTA) ------------------------------------------------------
    def require_summarizer(self) -> VistaSummarizer:
        self.spec.require_summarizer()
        assert self.summarizer is not None  # every 'vista' model has one
        return self.summarizer

    @torch.no_grad()
    def memory(
        self, tokens: torch.Tensor | None, recent: EventBatch | None, prev_ts: int | None
    ) -> torch.Tensor:
        """A request's memory: summary tokens (K, d) then its recent events (the last
        ``recent_window`` events since the summary; ``prev_ts`` is the time of the
        event before the first of them)."""
        parts = [] if tokens is None else [tokens]
        w = self.spec.recent_window
        if recent is not None and len(recent) and w:
            recent = (
                recent.slice(max(0, len(recent) - w), len(recent)) if len(recent) > w else recent
            )
            parts.append(self.mark_recent(self.encoder(recent, previous_times(recent.ts, prev_ts))))
        if not parts:
            return torch.zeros(0, self.spec.d_model)
        return torch.cat(parts, 0)

    @torch.no_grad()
    def score_memory(
        self,
        memory: torch.Tensor,
        item_ids: torch.Tensor,
        features: torch.Tensor | None,
        n_events: int,
        hours_since_last: float,
        bank: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        gsu_backend: str = "auto",
        summary: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score one request's candidates against its memory tokens (N, d). Logits (m,).

        ``bank``: the user's memory bank (tokens (C, d), sizes (C,) or None) for models with
        a GSU (``spec.gsu_k``): each candidate also attends to its top-k bank tokens.
        ``summary``: the request's summary tokens (K, d) again, for the candidates' own read
        of them (readout "state"; None: no summary, the read is zero)."""
        cand = self.ranker.embed_candidates(item_ids, features)
        q = self.ranker.queries(cand)
        k, v = self.ranker.project_memory(memory)
        ctx = context_features(torch.tensor([n_events]), torch.tensor([hours_since_last]))
        gathered = self.gather_banks(q, torch.tensor([0, q.shape[0]]), [bank], gsu_backend)
        logits, _ = self.ranker(
            cand,
            k,
            v,
            torch.tensor([0, cand.shape[0]]),
            torch.tensor([0, k.shape[0]]),
            ctx,
            memory=gathered,
            q=q,
            state=self.state_read_input(summary),
        )
        return logits

    def state_read_input(
        self, summary: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The ranker's ``state`` argument for one request's summary tokens (None when the
        model has no state read; zeros -- no history -- when the request has no summary)."""
        if self.ranker.state_q is None:
            return None
        if summary is None:
            summary = torch.zeros(self.spec.num_seeds, self.spec.d_model)
        return summary.float(), None

    @torch.no_grad()
    def score_tokens(
        self,
        tokens: torch.Tensor | None,
        item_ids: torch.Tensor,
        features: torch.Tensor | None,
        n_events: int,
        hours_since_last: float,
    ) -> torch.Tensor:
        """Score candidates against summary tokens alone (None: no history). Logits (m,)."""
        return self.score_memory(
            self.memory(tokens, None, None),
            item_ids,
            features,
            n_events,
            hours_since_last,
            summary=tokens,
        )
