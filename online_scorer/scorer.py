"""OnlineScorer: a user's summary tokens from the store, m candidates scored in one pass.

    scorer = OnlineScorer.open("data/store", "artifacts/model")
    summary = scorer.get_summary(42)               # tokens, status, versions, n_events, ...
    result = scorer.score(42, [7, 8, 9])           # result.scores: np.ndarray, one per item
    results = scorer.score_batch([(42, [7, 8]), (43, [9])])   # one jagged launch

The store is read through a reader pinned to the ``serving`` tag and re-pinned
every ``refresh_interval_s``; each request reads one version (the version
it was scored against is in the result). The model part is the ranker of
:mod:`summarizer.model.ranker`: candidates cross-attend to the K summary tokens
through :func:`kernels.attention` (Triton on CUDA, PyTorch on the CPU),
candidates never attend to each other, so scoring m candidates together
equals scoring each alone to float32 rounding (not bit for bit: batched matmuls may
sum in another order; the tests bound it at 1e-6 on the probability).

* A user without a summary is scored by the model's no-history path
  (``status == NOT_FOUND``, ``cold_start`` True); a stale summary is scored and
  flagged (``status == STALE``).
* Tokens made by a model version this scorer does not hold are refused
  (:class:`ModelVersionError`), never mixed: load that model too
  (``add_model``) or wait for the serving tag to move.
* A model with a GSU (``ModelSpec.gsu_k``) also reads each user's memory bank
  (TWIN-V2 cluster tokens with sizes, from the store's ``memory_bank`` table,
  its latest version: banks are refreshed by their own nightly job) and each
  candidate attends to its top-k bank tokens in the same pass
  (``memory=False`` turns this off). A user without a bank, or whose bank was
  made by another model version (right after a retrain, until the cluster
  job rebuilds it), is scored from the summary alone -- never with tokens of
  two models -- and the result says so (``memory_tokens == 0``,
  ``memory_skipped``).
* Thread-safe: any number of threads may call ``score`` concurrently.
* Hot model swap (what ``vista serve`` does): with the reader's own refresh off
  (``refresh_interval_s=math.inf``), :meth:`sync` re-reads the serving tag and, before
  any request sees a moved pin, loads the models its tokens need (``add_model``); a
  request in flight keeps the version and the models it started with.
* Inputs are checked first; every problem raises :class:`InvalidRequestError`
  (a ``ValueError``) naming it.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kernels import warm_up_topk
from online_scorer.requests import (
    InvalidRequestError,
    check_features,
    check_item_ids,
    check_user_id,
)
from summarizer.config import VistaConfig
from summarizer.model import artifacts
from summarizer.model.vista_model import ScoringRequest, VistaModel
from summarizer.store import (
    MemoryBankReader,
    SummaryBatch,
    SummaryReader,
    SummaryResult,
    SummaryStatus,
    SummaryStore,
)

DEFAULT_MAX_CANDIDATES = 4096


class ModelVersionError(RuntimeError):
    """Stored tokens were made by a model version this scorer does not hold."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """One user's stored summary as the scorer sees it."""

    user_id: int
    status: SummaryStatus
    tokens: np.ndarray | None  # float16 (K, d); None when not found
    model_version: str | None
    n_events: int
    first_ts: int | None
    last_ts: int | None
    table_version: int


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Scores (probabilities, one per candidate, in request order) and how they were made."""

    user_id: int
    scores: np.ndarray  # float32 (m,)
    status: SummaryStatus
    table_version: int
    model_version: str
    memory_tokens: int = 0  # memory-bank tokens the GSU searched (0: none used)
    memory_skipped: bool = False  # the user's bank was made by another model: not used

    @property
    def cold_start(self) -> bool:
        """No stored summary: scored by the model's no-history path."""
        return self.status is SummaryStatus.NOT_FOUND

    @property
    def stale(self) -> bool:
        return self.status is SummaryStatus.STALE

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.scores if dtype is None else self.scores.astype(dtype)

    def __len__(self) -> int:
        return len(self.scores)


Request = tuple[Any, Any] | tuple[Any, Any, Any]


class OnlineScorer:
    def __init__(
        self,
        store: SummaryStore,
        model_dirs: Sequence[str],
        *,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        cache_size: int = 0,
        refresh_interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
        memory: bool = True,
        gsu_backend: str | None = None,
        bank_refresh_interval_s: float | None = None,
        model_options: dict[str, str] | None = None,
    ) -> None:
        """``refresh_interval_s``: how often reads re-pin the serving tag (None: the store's;
        ``math.inf``: only :meth:`sync` does); ``bank_refresh_interval_s``: the memory
        banks' (unset: the same); ``model_options``: object-store options of model folders
        on ``s3://``/``gs://`` (``data.storage_options``)."""
        if not model_dirs:
            raise ValueError("an OnlineScorer needs at least one model folder")
        self.model_options = dict(model_options or {})
        self.store, self.clock = store, clock
        self.max_candidates, self.cache_size = int(max_candidates), int(cache_size)
        self.memory, self.gsu_backend = bool(memory), gsu_backend
        # Replaced whole, never changed in place: a request reads one dict for its pass.
        self._models: dict[str, VistaModel] = {}
        self._models_lock = threading.Lock()
        self.model_version = self.add_model(model_dirs[0])  # the default (cold-start) model
        for extra in model_dirs[1:]:
            self.add_model(extra)
        spec = self._models[self.model_version].spec
        self.reader: SummaryReader = store.open_reader(refresh_interval_s=refresh_interval_s)
        moments = (spec.ridge_dim + 1) * (spec.ridge_dim + 2) if spec.ridge_dim else 0
        self.reader.expect_shape(spec.num_seeds, spec.d_model, moments)
        # The memory-bank reader is opened on first use: a scorer whose models have no GSU
        # never reads the bank table (opening it reads every user's id).
        self._refresh_interval_s = (
            refresh_interval_s if bank_refresh_interval_s is None else bank_refresh_interval_s
        )
        self._bank_reader: MemoryBankReader | None = None
        self._bank_reader_lock = threading.Lock()
        self._cache: collections.OrderedDict[int, SummaryResult] = collections.OrderedDict()
        self._cache_version = self.reader.version
        self._cache_lock = threading.Lock()
        self._version_models: dict[int, tuple[str, ...]] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        store_uri: str,
        model_dir: str,
        *,
        storage_options: dict[str, str] | None = None,
        max_age_s: float = 3 * 86400,
        refresh_interval_s: float = 30.0,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        cache_size: int = 0,
        extra_model_dirs: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        memory: bool = True,
        gsu_backend: str | None = None,
    ) -> OnlineScorer:
        """Load the model, pin the store's ``serving`` version (refreshed on an interval)."""
        store = SummaryStore(
            store_uri,
            storage_options=storage_options,
            max_age_s=max_age_s,
            refresh_interval_s=refresh_interval_s,
            clock=clock,
        )
        return cls(
            store,
            [model_dir, *extra_model_dirs],
            max_candidates=max_candidates,
            cache_size=cache_size,
            clock=clock,
            memory=memory,
            gsu_backend=gsu_backend,
        )

    @classmethod
    def from_config(cls, cfg: VistaConfig, **kwargs: Any) -> OnlineScorer:
        """A scorer for the ``[store]`` and ``[model]`` config sections."""
        return cls(
            # The store and the scorer share one clock (the scorer's: recency features).
            SummaryStore.from_config(cfg.store, clock=kwargs.get("clock", time.time)),
            [cfg.model.model_dir],
            **{"model_options": cfg.data.storage_options, **kwargs},
        )

    def add_model(self, model_dir: str) -> str:
        """Hold one more model (e.g. the next one, before the serving tag moves to it)."""
        model, version = artifacts.load(model_dir, self.model_options)
        model.require_summarizer()
        model.eval()
        if self.memory and model.spec.uses_memory_bank:
            warm_up_topk(self.gsu_backend)  # compile the search now
        with self._models_lock:
            self._models = {**self._models, version: model}
        return version

    def drop_model(self, version: str) -> None:
        """Stop holding a model (requests already scoring with it finish); not the default."""
        if version == self.model_version:
            raise ValueError(f"model {version} is the scorer's default (cold-start) model")
        with self._models_lock:
            self._models = {v: m for v, m in self._models.items() if v != version}

    def sync(self, find_model: Callable[[str], str | None], max_models: int = 3) -> bool:
        """Re-read the serving tag; if it moved, first load every model the new version's
        tokens were made by (``find_model(version)``: its folder, or None), then serve it.
        A model that cannot be found keeps the old pin (ModelVersionError) -- requests go
        on being answered from it. The default (cold-start) model becomes the new version's
        when it has one; models beyond ``max_models`` that it does not use are dropped.
        True if the pin moved."""

        def load_needed(versions: list[str]) -> None:
            for v in versions:
                if v in self._models:
                    continue
                folder = find_model(v)
                if folder is None:
                    raise ModelVersionError(
                        f"the serving summaries need model {v[:16]}, which is in none of the "
                        "model folders; still serving the previous version"
                    )
                got = self.add_model(folder)
                if got != v:
                    raise ModelVersionError(f"{folder} holds model {got[:16]}, not {v[:16]}")
            needed.extend(versions)

        needed: list[str] = []
        previous = self.reader.model_versions()
        if not self.reader.refresh(force=True, before_swap=load_needed):
            return False
        if len(needed) == 1:
            self.model_version = needed[0]
        # Requests that read the previous version may still be scoring: keep its models too.
        keep = {self.model_version, *needed, *previous}
        extra = [v for v in self._models if v not in keep]
        for v in extra[: max(0, len(self._models) - max_models)]:  # oldest first
            self.drop_model(v)
        return True

    @property
    def model_versions(self) -> list[str]:
        return list(self._models)

    # -- reads --------------------------------------------------------------------------------
    def _lookup(self, ids: list[int]) -> tuple[list[SummaryResult], int]:
        """Results for ids (one store read for the misses) and the table version they are from."""
        if not self.cache_size:
            batch = self.reader.get(ids)
            self._note_version(batch)
            return list(batch.results), batch.version
        pinned = self.reader.current_version()  # re-pins on the refresh interval
        with self._cache_lock:
            if pinned != self._cache_version:
                self._cache.clear()
                self._cache_version = pinned
            hits = {u: self._cache[u] for u in ids if u in self._cache}
        missing = [u for u in ids if u not in hits]
        version = self._cache_version
        if missing:
            batch = self.reader.get(missing)
            if batch.version != version and hits:
                # The pin moved while reading: read everything from the new version.
                batch, hits = self.reader.get(ids), {}
            self._note_version(batch)
            version = batch.version
            fresh = {r.user_id: r for r in batch.results}
            with self._cache_lock:
                if version != self._cache_version:
                    self._cache.clear()
                    self._cache_version = version
                for u, r in fresh.items():
                    self._cache[u] = r
                    self._cache.move_to_end(u)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            hits.update(fresh)
        return [hits[u] for u in ids], version

    def _note_version(self, batch: SummaryBatch) -> None:
        """Remember which models a table version's tokens were made by (its cold-start users
        are scored with that model, so every answer names one consistent pair)."""
        if batch.version not in self._version_models:
            with self._cache_lock:
                self._version_models[batch.version] = batch.model_versions
                while len(self._version_models) > 8:
                    del self._version_models[next(iter(self._version_models))]

    def _default_model(self, table_version: int, models: dict[str, VistaModel]) -> str:
        """The model for users without a summary in this table version: the version's own
        model when it has one that is held, else the scorer's default."""
        made_by = self._version_models.get(table_version, ())
        if len(made_by) == 1 and made_by[0] in models:
            return made_by[0]
        return self.model_version

    def get_summary(self, user_id: Any) -> Summary:
        """The stored summary of one user: tokens, status, versions, event counts."""
        uid = check_user_id(user_id)
        (r,), version = self._lookup([uid])
        return Summary(
            uid,
            r.status,
            r.tokens,
            r.model_version,
            int(r.n_events or 0),
            r.first_ts,
            r.last_ts,
            version,
        )

    def _model_for(
        self,
        r: SummaryResult,
        models: dict[str, VistaModel] | None = None,
        default: str | None = None,
    ) -> tuple[str, VistaModel]:
        models = self._models if models is None else models
        if r.tokens is None:
            mv = self.model_version if default is None else default
            return mv, models[mv]
        if r.model_version not in models:
            raise ModelVersionError(
                f"user {r.user_id}: the stored tokens were made by model "
                f"{str(r.model_version)[:16]}, this scorer holds "
                f"{', '.join(v[:16] for v in models)}; load that model (add_model) "
                "rather than mixing versions"
            )
        return str(r.model_version), models[str(r.model_version)]

    def bank_reader(self) -> MemoryBankReader:
        """The store's memory-bank reader (opened once, on first use)."""
        with self._bank_reader_lock:
            if self._bank_reader is None:
                self._bank_reader = self.store.open_bank_reader(
                    refresh_interval_s=self._refresh_interval_s
                )
            return self._bank_reader

    def _banks(
        self, ids: list[int], versions: list[str], models: dict[str, VistaModel] | None = None
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor] | None], list[bool]]:
        """Memory banks (tokens, sizes) of the users whose model has a GSU (one store read),
        and which users' banks were skipped for being another model's."""
        models = self._models if models is None else models
        wanted = {
            u
            for u, mv in zip(ids, versions, strict=True)
            if self.memory and models[mv].spec.uses_memory_bank
        }
        if not wanted:
            return [None] * len(ids), [False] * len(ids)
        rows = self.bank_reader().get(sorted(wanted))
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        skipped = []
        for u, mv in zip(ids, versions, strict=True):
            rec = rows.get(u) if u in wanted else None
            mismatch = rec is not None and rec.model_version != mv
            skipped.append(mismatch)
            if rec is None or mismatch:
                out.append(None)
                continue
            out.append(
                (
                    torch.from_numpy(np.asarray(rec.tokens, dtype=np.float32)),
                    torch.from_numpy(np.asarray(rec.sizes, dtype=np.int64)),
                )
            )
        return out, skipped

    # -- scoring ------------------------------------------------------------------------------
    def score(
        self, user_id: Any, candidate_item_ids: Any, candidate_features: Any = None
    ) -> ScoreResult:
        """One user's candidates in one amortized pass; probabilities in request order."""
        return self.score_batch([(user_id, candidate_item_ids, candidate_features)])[0]

    def score_batch(self, requests: Sequence[Request]) -> list[ScoreResult]:
        """Many users' requests: one store read, one jagged pass per model version."""
        if not requests:
            raise InvalidRequestError("no requests")
        parsed = []
        for req in requests:
            if not isinstance(req, tuple | list) or len(req) not in (2, 3):
                raise InvalidRequestError(
                    "each request is (user_id, candidate_item_ids[, candidate_features])"
                )
            uid, items = check_user_id(req[0]), check_item_ids(req[1], self.max_candidates)
            parsed.append((uid, items, req[2] if len(req) == 3 else None))
        results, version = self._lookup([p[0] for p in parsed])
        # One set of models for the whole batch, taken after the read: a hot swap loads the
        # models of a new table version before readers see it, and replaces the dict whole.
        models = self._models
        default = self._default_model(version, models)
        versions = [self._model_for(r, models, default)[0] for r in results]
        groups: dict[str, list[int]] = {}
        for i, mv in enumerate(versions):
            groups.setdefault(mv, []).append(i)
        banks, skipped = self._banks([p[0] for p in parsed], versions, models)
        out: list[ScoreResult | None] = [None] * len(parsed)
        now = self.clock()
        for mv, idx in groups.items():
            model = models[mv]
            feats = [
                check_features(parsed[i][2], len(parsed[i][1]), model.spec.candidate_features)
                for i in idx
            ]
            scores = self._forward(
                model,
                [results[i] for i in idx],
                [parsed[i][1] for i in idx],
                feats,
                now,
                [banks[i] for i in idx],
            )
            for i, s in zip(idx, scores, strict=True):
                bank = banks[i]
                out[i] = ScoreResult(
                    parsed[i][0],
                    s,
                    results[i].status,
                    version,
                    mv,
                    0 if bank is None else int(bank[0].shape[0]),
                    skipped[i],
                )
        return [r for r in out if r is not None]

    @torch.inference_mode()  # ~9% faster than no_grad here on the model part at m=512
    def _forward(
        self,
        model: VistaModel,
        summaries: list[SummaryResult],
        items: list[torch.Tensor],
        features: list[torch.Tensor | None],
        now: float,
        banks: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    ) -> list[np.ndarray]:
        """The jagged pass (:meth:`VistaModel.score_requests`): every request's candidates
        against its own tokens (and, with a GSU, each candidate's top-k tokens of its
        request's memory bank)."""
        requests = [
            ScoringRequest(
                item_ids=it,
                tokens=(
                    None
                    if r.tokens is None
                    else torch.from_numpy(np.asarray(r.tokens, dtype=np.float32))
                ),
                n_events=int(r.n_events or 0),
                hours_since_last=(
                    max(0.0, (now - r.last_ts) / 3600.0) if r.last_ts is not None else 0.0
                ),
                features=f,
                bank=None if banks is None else banks[i],
                moments=None if r.moments is None else torch.tensor(r.moments),
            )
            for i, (r, it, f) in enumerate(zip(summaries, items, features, strict=True))
        ]
        logits = model.score_requests(requests, self.gsu_backend)
        return [torch.sigmoid(x).numpy().astype(np.float32) for x in logits]

    # -- comparison path (benchmarks and tests, not production) ------------------------------
    def score_per_candidate(self, user_id: Any, candidate_item_ids: Any) -> ScoreResult:
        """Each candidate in its own forward pass (what amortization saves)."""
        uid = check_user_id(user_id)
        items = check_item_ids(candidate_item_ids, self.max_candidates)
        (r,), version = self._lookup([uid])
        models = self._models
        mv, model = self._model_for(r, models, self._default_model(version, models))
        banks, skipped = self._banks([uid], [mv], models)
        now = self.clock()
        scores = np.concatenate(
            [
                self._forward(model, [r], [items[j : j + 1]], [None], now, banks)[0]
                for j in range(len(items))
            ]
        )
        bank = banks[0]
        return ScoreResult(
            uid,
            scores,
            r.status,
            version,
            mv,
            0 if bank is None else int(bank[0].shape[0]),
            skipped[0],
        )
