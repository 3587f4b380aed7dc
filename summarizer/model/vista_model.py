"""The whole model: event encoder, a history module (VISTA or a baseline), the ranker.

``ModelSpec.kind`` picks how a user's history becomes memory for the ranker (the kinds
are listed in :mod:`summarizer.config.model`; the baselines' causal forward passes are in
:mod:`summarizer.training.baselines`).

``gsu_k > 0`` on a ``vista`` model adds the general search unit to VISTA: each
candidate also attends to its top-``gsu_k`` tokens of the user's memory bank --
the events before the summary, served as TWIN-V2 cluster tokens with a
log(size) bias (a raw event is a cluster of one) -- in a softmax of their own
whose result is added to the summary attention's. The search score is the ranker's own attention
logit summed over heads (TWIN's consistent GSU), so training teaches the search
and the attention together.

All share the encoder, item table and ranker, so they differ only in how much
of the history they can use and at what online cost.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import torch
from torch import nn

from kernels import GatheredMemory, topk
from summarizer.config import ModelSpec
from summarizer.model.dv365 import DV365
from summarizer.model.encoder import EventBatch, EventEncoder, ItemEmbedding, previous_times
from summarizer.model.hstu import HSTU
from summarizer.model.longer import Longer
from summarizer.model.ranker import CandidateRanker, context_rows
from summarizer.model.reconstruction import ReconstructionDecoder
from summarizer.model.ridge import RidgeMemory
from summarizer.model.summarization import VistaSummarizer
from summarizer.model.transact2 import TransActV2

# Candidates one serving pass scores at once (VistaModel.score_requests): about what keeps
# the pass's activations in this CPU's caches at d = 64 (chosen among 512..4096).
SERVING_PIECE_CANDIDATES = 2048


@dataclasses.dataclass(frozen=True)
class ScoringRequest:
    """One request to :meth:`VistaModel.score_requests`: a user's memory and the candidates.

    ``tokens`` (K, d): the user's summary tokens (None: no summary, the cold-start path);
    ``recent``: raw events since the summary (its last ``recent_window`` are attended with
    the tokens; ``recent_prev_ts`` is the time of the event before the first of them);
    ``bank``: the user's GSU memory bank, tokens (C, d) and sizes (C,) (None: one event
    each), for models with a GSU; ``moments``: the summary's second moments, for models
    with a ridge read-out; ``n_events``/``hours_since_last``: the request's context
    (events behind the memory, hours since the last of them)."""

    item_ids: torch.Tensor  # int64 (m,)
    tokens: torch.Tensor | None
    n_events: int = 0
    hours_since_last: float = 0.0
    features: torch.Tensor | None = None  # float32 (m, candidate_features)
    recent: EventBatch | None = None
    recent_prev_ts: int | None = None
    bank: tuple[torch.Tensor, torch.Tensor | None] | None = None
    # Ridge read-out: the summary's second moments (k+1, k+2) (None: no history); every
    # recent event is folded into them before the solve.
    moments: torch.Tensor | None = None


class VistaModel(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d, h = spec.d_model, spec.num_heads
        self.items = ItemEmbedding(spec.item_buckets, d)
        self.encoder = EventEncoder(self.items, spec.num_actions, d)
        self.ridge = (
            RidgeMemory(spec.item_buckets, spec.ridge_dim, spec.ridge_l2)
            if spec.kind == "vista" and spec.ridge_dim
            else None
        )
        self.ranker = CandidateRanker(
            self.items,
            d,
            h,
            spec.candidate_features,
            spec.rating_head,
            gsu_gate=(spec.gsu_gate if spec.kind == "vista" and spec.uses_memory_bank else None),
            state_tokens=spec.num_seeds if spec.kind == "vista" and spec.readout == "state" else 0,
            ridge=self.ridge is not None,
        )
        self.summarizer: VistaSummarizer | None = None
        self.recon: ReconstructionDecoder | None = None
        self.history_layer: nn.Module | None = None
        self.fusion: nn.ModuleDict | None = None
        self.hstu: HSTU | None = None
        self.longer: Longer | None = None
        self.transact2: TransActV2 | None = None
        self.dv365: DV365 | None = None
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
                self.ridge,
            )
            self.recon = ReconstructionDecoder(d, h)
        elif spec.kind == "linkedin":
            self.history_layer = nn.TransformerEncoderLayer(
                d, h, 2 * d, dropout=0.0, batch_first=True, norm_first=True
            )
        elif spec.kind == "hstu":
            self.hstu = HSTU(d, h, spec.num_layers, spec.last_k)
        elif spec.kind == "longer":
            self.longer = Longer(d, h, spec.num_layers, spec.last_k)
        elif spec.kind == "dv365":
            self.dv365 = DV365(d, h, spec.last_k, spec.num_seeds)
        elif spec.kind == "transact2":
            self.transact2 = TransActV2(d, h, 1, spec.last_k)  # one layer, as the TransAct row
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
        """(all parameters, parameters outside the hashed item tables)."""
        total = sum(p.numel() for p in self.parameters())
        table = sum(p.numel() for p in self.sparse_tables())
        return total, total - table

    def sparse_tables(self) -> list[torch.Tensor]:
        """The hashed item tables (sparse gradients: a step touches the batch's rows only)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding) and m.sparse]

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
        gsu_backend: str | None = None,
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
                _, top = topk(flat_q, flat_k[start : start + c], G, backend=gsu_backend)
                idx[a:b, : top.shape[1]] = torch.from_numpy(top)
            start += c
            offsets.append(start)
        return GatheredMemory(idx, k, v, torch.tensor(offsets), bias)

    # ---- serving ------------------------------------------------------------------------------
    def require_summarizer(self) -> VistaSummarizer:
        self.spec.require_summarizer()
        assert self.summarizer is not None  # every 'vista' model has one
        return self.summarizer

    @torch.no_grad()
    def memory(
        self, tokens: torch.Tensor | None, recent: EventBatch | None, prev_ts: int | None
    ) -> torch.Tensor:
        """A request's memory: summary tokens (K, d) then its recent events (of the events
        since the summary, the last ``recent_window``; ``prev_ts`` is the time of the event
        before the first given)."""
        return self._memory(tokens, recent, prev_ts)

    def _memory(
        self, tokens: torch.Tensor | None, recent: EventBatch | None, prev_ts: int | None
    ) -> torch.Tensor:
        parts = [] if tokens is None else [tokens.float()]
        w = self.spec.recent_window
        if recent is not None and len(recent) and w:
            if len(recent) > w:  # the last w; the gap of the first is to the latest dropped
                dropped = int(recent.ts[: len(recent) - w].max())
                prev_ts = dropped if prev_ts is None else max(prev_ts, dropped)
                recent = recent.slice(len(recent) - w, len(recent))
            parts.append(self.mark_recent(self.encoder(recent, previous_times(recent.ts, prev_ts))))
        if not parts:
            return torch.zeros(0, self.spec.d_model)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def rank(
        self,
        cand: torch.Tensor,
        q: torch.Tensor,
        memory: torch.Tensor,
        q_offsets: torch.Tensor,
        memory_offsets: torch.Tensor,
        context: torch.Tensor,
        *,
        gathered: GatheredMemory | None = None,
        summaries: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        ridge: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage 2 over assembled memory: the one ranker call of serving
        (:meth:`score_requests`) and of the VISTA training forward
        (:mod:`summarizer.training.forward`).

        cand (M, d) embedded candidates, q (M, H, D) their queries; memory (N, d) every
        request's tokens back to back (``memory_offsets`` (R+1,)); context (R, 2);
        ``gathered``: each candidate's GSU picks; ``summaries``: (tokens (K, d) of one
        request, None) or (tokens (R', K, d), each candidate's row) for the state read
        (readout "state"; ignored by other read-outs); ``ridge``: each candidate's ridge
        score (M,) (a ridge read-out). Returns (logits, ratings)."""
        k, v = self.ranker.project_memory(memory)
        state = summaries if self.ranker.state_q is not None else None
        return self.ranker(
            cand,
            k,
            v,
            q_offsets,
            memory_offsets,
            context,
            memory=gathered,
            q=q,
            state=state,
            ridge=ridge,
        )

    def score_requests(
        self, requests: Sequence[ScoringRequest], gsu_backend: str | None = None
    ) -> list[torch.Tensor]:
        """Score a jagged batch of requests: each request's candidates attend to its own
        memory (summary tokens, recent window, GSU picks of its bank), never to another
        request's or to each other. Logits (m_r,) per request, in order.

        The batch goes through in pieces of at most :data:`SERVING_PIECE_CANDIDATES`
        candidates (whole requests, a larger request cut into slices of its candidates),
        one jagged pass each: a piece's activations stay in the cores' caches, where one
        pass over a 16-request batch spills to memory (measured here at 16 x 512
        candidates, K = 128, d = 64: about 0.97 ms a request in one pass, 0.70-0.94 in
        pieces of 2,048; BENCHMARKS.md). A candidate's score does not depend on the
        piece it is in."""
        if torch.is_grad_enabled():  # the scorer calls it under inference_mode already
            with torch.no_grad():
                return self._score_in_pieces(requests, gsu_backend)
        return self._score_in_pieces(requests, gsu_backend)

    def _score_in_pieces(
        self, requests: Sequence[ScoringRequest], gsu_backend: str | None
    ) -> list[torch.Tensor]:
        limit = SERVING_PIECE_CANDIDATES
        pieces: list[list[ScoringRequest]] = [[]]
        size, slices = 0, []  # slices: how many sub-requests each request became
        for r in requests:
            m = len(r.item_ids)
            subs = [r]
            if m > limit:
                subs = [
                    dataclasses.replace(
                        r,
                        item_ids=r.item_ids[a : a + limit],
                        features=None if r.features is None else r.features[a : a + limit],
                    )
                    for a in range(0, m, limit)
                ]
            slices.append(len(subs))
            for sub in subs:
                if pieces[-1] and size + len(sub.item_ids) > limit:
                    pieces.append([])
                    size = 0
                pieces[-1].append(sub)
                size += len(sub.item_ids)
        logits = [x for piece in pieces for x in self._score_requests(piece, gsu_backend)]
        out, i = [], 0
        for n in slices:
            out.append(logits[i] if n == 1 else torch.cat(logits[i : i + n]))
            i += n
        return out

    def _score_requests(
        self, requests: Sequence[ScoringRequest], gsu_backend: str | None
    ) -> list[torch.Tensor]:
        if not requests:
            return []
        spec, ranker = self.spec, self.ranker
        counts = [len(r.item_ids) for r in requests]
        features = None
        if spec.candidate_features:
            features = torch.cat(
                [
                    torch.zeros(len(r.item_ids), spec.candidate_features)
                    if r.features is None
                    else r.features
                    for r in requests
                ]
            )
        items = (
            requests[0].item_ids
            if len(requests) == 1
            else torch.cat([r.item_ids for r in requests])
        )
        cand = ranker.embed_candidates(items, features)
        q = ranker.queries(cand)
        parts = [self._memory(r.tokens, r.recent, r.recent_prev_ts) for r in requests]
        # Offsets from Python ints: one small tensor each (per-request overhead, ~us a call).
        q_offsets = torch.tensor([0, *itertools.accumulate(counts)])
        memory_offsets = torch.tensor([0, *itertools.accumulate(len(p) for p in parts)])
        context = context_rows(
            [r.n_events for r in requests], [r.hours_since_last for r in requests]
        )
        gathered = None
        if any(r.bank is not None for r in requests):
            gathered = self.gather_banks(q, q_offsets, [r.bank for r in requests], gsu_backend)
        logits, _ = self.rank(
            cand,
            q,
            torch.cat(parts) if len(parts) > 1 else parts[0],
            q_offsets,
            memory_offsets,
            context,
            gathered=gathered,
            summaries=self._summary_rows(requests, counts),
            ridge=self._ridge_scores(requests, counts, items),
        )
        return list(logits.split(counts))

    def _ridge_scores(
        self, requests: Sequence[ScoringRequest], counts: list[int], items: torch.Tensor
    ) -> torch.Tensor | None:
        """Each candidate's ridge score: its request's moments (zeros: no history) with the
        request's recent events folded in, solved, read with the candidate's item vector."""
        if self.ridge is None:
            return None
        shape = self.ridge.moments_shape
        moments = []
        for r in requests:
            m = torch.zeros(shape) if r.moments is None else r.moments.reshape(shape).float()
            if r.recent is not None and len(r.recent):
                m = m + self.ridge.moments(r.recent)
            moments.append(m)
        w = self.ridge.solve(torch.stack(moments))
        per_cand = torch.repeat_interleave(w, torch.tensor(counts), dim=0)
        return self.ridge.scores(per_cand, items)

    def _summary_rows(
        self, requests: Sequence[ScoringRequest], counts: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The state read's input (readout "state"): each request's summary tokens, zeros
        (no history) for a request without a summary."""
        if self.ranker.state_q is None:
            return None
        K, d = self.spec.num_seeds, self.spec.d_model
        rows = [torch.zeros(K, d) if r.tokens is None else r.tokens.float() for r in requests]
        if len(rows) == 1:  # one request: each candidate reads the same (K, d) rows
            return rows[0], None
        per_cand = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts))
        return torch.stack(rows), per_cand

    def score_request(
        self, request: ScoringRequest, gsu_backend: str | None = None
    ) -> torch.Tensor:
        """One request: :meth:`score_requests` of a batch of one. Logits (m,)."""
        return self.score_requests([request], gsu_backend)[0]

    def score_tokens(
        self,
        tokens: torch.Tensor | None,
        item_ids: torch.Tensor,
        features: torch.Tensor | None,
        n_events: int,
        hours_since_last: float,
    ) -> torch.Tensor:
        """Score candidates against summary tokens alone (None: no history). Logits (m,)."""
        return self.score_request(
            ScoringRequest(item_ids, tokens, n_events, hours_since_last, features=features)
        )
