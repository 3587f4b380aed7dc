"""The whole model: event encoder, a history module (VISTA or a baseline), the ranker.

``ModelSpec.kind`` picks how a user's history becomes memory for the ranker (the kinds
are listed in :mod:`summarizer.config.model`; the baselines' causal forward passes are in
:mod:`summarizer.training.baselines`).

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

import torch
from torch import nn

from kernels import GatheredMemory
from summarizer.config import ModelSpec
from summarizer.model.encoder import EventBatch, EventEncoder, ItemEmbedding, previous_times
from summarizer.model.ranker import CandidateRanker, context_features
from summarizer.model.reconstruction import ReconstructionDecoder
from summarizer.model.summarization import VistaSummarizer


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
