"""The model's architecture (:class:`ModelSpec`, saved as the model's JSON config) and the
``[model]`` section (:class:`ModelConfig`: the spec plus where the serving model lives).

``ModelSpec.kind`` picks how a user's history becomes memory for the ranker
(``summarizer.model.vista_model`` and ``summarizer.training.baselines``):

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
  whole history, chosen by the general search unit (``kernels.topk``);
* ``hstu``    HSTU (Meta 2024): pointwise aggregated attention layers over the events
  (sliding causal window of ``last_k``, ``num_layers`` layers), candidates appended
  M-FALCON style (each attends to the history and itself, not to other candidates);
* ``longer``  LONGER (ByteDance 2025): events merged 4 at a time by an inner transformer,
  the candidate and the last ``last_k`` merged tokens as queries of a causal
  cross-attention over the merged sequence, then ``num_layers - 1`` causal
  self-attention layers over them;
* ``transact2`` TransAct V2 (Pinterest 2025): lifelong, realtime (last ``last_k``) and
  impression sequences, the first and last reduced to the events nearest the candidate,
  fused early with the candidate (appended as a token), a transformer encoder; trained
  with its next-action loss besides the label;
* ``dv365``   a DV365-style offline embedding (Instagram 2025): the last ``last_k`` events
  before the summary point through a funnel transformer (token pooling between blocks)
  plus a linear compression, ``num_seeds`` tokens cached like VISTA's and read with the
  events since.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from summarizer.config.section import Section

Kind = Literal[
    "vista",
    "none",
    "mean",
    "din",
    "linkedin",
    "transact",
    "full",
    "sim",
    "hstu",
    "longer",
    "transact2",
    "dv365",
]
KINDS: tuple[str, ...] = get_args(Kind)


class ModelSpec(Section):
    """Architecture hyper-parameters: what a model folder's ``config.json`` records (its
    version hashes them with the weights)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = Field("vista", description="history module (see the module docstring)")
    num_seeds: int = Field(64, ge=1, le=512, description="K summary tokens")
    d_model: int = Field(64, ge=8, description="d, token width")
    num_heads: int = Field(4, ge=1)
    feature_dim: int = Field(32, ge=1, description="linear-attention features per head")
    # Options that no table showed winning were removed (BENCHMARKS.md keeps their figures):
    # the "seed" feature map, the "pool" read-out, the GSU picks in the summary's softmax.
    feature_map: Literal["silu", "softmax"] = Field(
        "silu",
        description="VISTA's SiLU (count-normalized) or softmax slots (mass-normalized; with "
        "the state read-out it learns the small-vocabulary synthetic task, BENCHMARKS.md)",
    )
    values: Literal["projected", "events"] = Field(
        "projected",
        description="what the state sums per event: a learned value projection per layer "
        "(VISTA) or the encoded event itself (the state read-out's)",
    )
    readout: Literal["transformer", "state"] = Field(
        "transformer",
        description="seed read-out: VISTA's layers (read, projection, self-attention, MLP), "
        "or state (no seeds: the tokens are the state rows and each candidate reads them "
        "itself; num_seeds = num_layers x feature_dim)",
    )
    num_layers: int = Field(2, ge=1)
    item_buckets: int = Field(1 << 17, ge=16, description="hashed item-embedding rows")
    num_actions: int = Field(8, ge=1, le=32767, description="set from data.num_actions")
    chunk_size: int = Field(4096, ge=1, description="events per streamed chunk")
    last_k: int = Field(100, ge=1, description="window of the last-k baselines")
    recent_window: int = Field(
        32, ge=0, description="VISTA: raw events since the summary, attended with the tokens"
    )
    candidate_features: int = Field(0, ge=0, description="dense features per candidate")
    rating_head: bool = Field(False, description="set by training: the data has ratings")
    gsu_k: int = Field(
        0,
        ge=0,
        description="memory-bank tokens (TWIN-V2 clusters / raw events) each candidate gathers "
        "through the GSU besides the summary; 0 = off (kind sim: required)",
    )
    memory: Literal["events", "clusters"] = Field(
        "events",
        description="what the GSU searches in training and evaluation: the raw earlier events "
        "(SIM) or TWIN-V2 cluster tokens of them (what the cluster job serves); serving reads "
        "whatever is stored",
    )
    ridge_dim: int = Field(
        0,
        ge=0,
        description="VISTA: width k of the ridge read-out's item vectors; the summary then "
        "also keeps the history's second moments and each candidate reads the user's ridge "
        "preference vector (summarizer/model/ridge.py); 0 = off",
    )
    ridge_l2: float = Field(1.0, gt=0, description="lambda of the ridge read-out's solve")
    gsu_gate: float | None = Field(
        None,
        description="a learnable per-head gate on the GSU's attention, started at this value "
        "(0: the summary alone at first); unset: no gate. None was best on the synthetic "
        "data, 0.0 on ml-latest-small (BENCHMARKS.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        # A model saved before gsu_softmax was removed records "separate", what every model
        # now does: it still loads (its version, a hash of its files, is unchanged).
        if isinstance(data, dict) and "gsu_softmax" in data:
            data = dict(data)
            if data.pop("gsu_softmax") != "separate":
                raise ValueError(
                    'gsu_softmax "shared" was removed (it stalled training, BENCHMARKS.md): '
                    "the GSU picks always have their own softmax"
                )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            )
        if self.kind == "sim" and self.gsu_k < 1:
            raise ValueError("kind 'sim' retrieves per candidate: gsu_k must be >= 1")
        if self.gsu_k and self.kind not in ("vista", "sim"):
            raise ValueError(f"gsu_k applies to kinds vista and sim, not {self.kind!r}")
        if self.ridge_dim and self.kind != "vista":
            raise ValueError(f"ridge_dim is a VISTA summary read-out, not for {self.kind!r}")
        if self.kind == "vista" and self.readout == "state":
            rows = self.num_layers * self.feature_dim
            if self.num_seeds != rows:
                raise ValueError(
                    f'readout "state" gives num_layers x feature_dim = {rows} tokens: '
                    f"num_seeds must be {rows}, got {self.num_seeds}"
                )
        return self

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

    def to_json(self) -> str:
        return self.model_dump_json()


DEFAULT_RIDGE_DIM = 64  # the [model] section's ridge read-out width for kind vista

# Spec fields that come from elsewhere, never from the [model] table.
_DERIVED = {
    "num_actions": "it is data.num_actions",
    "rating_head": "training sets it from the data (a rating head when events carry ratings)",
}


class ModelConfig(ModelSpec):
    """The ``[model]`` section: the architecture a new model is trained with, and the
    folder of the serving model (mutable like every section; the spec it makes is not).

    Its defaults are the product's default VISTA -- what ``vista train``, the demo and the
    DAGs use with no overrides: K = 16 summary tokens and the ridge read-out over k = 64
    item vectors (started from the training window's item co-occurrence SVD, ``[train]
    pretrain_items``), the configuration that ranks best on ml-latest-small and on the
    default-vocabulary synthetic data (BENCHMARKS.md, issue 21).
    :class:`ModelSpec`'s own defaults are the architecture's building blocks (no ridge
    read-out), which the tests and the harness's rows vary one at a time."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)

    num_seeds: int = Field(16, ge=1, le=512, description="K summary tokens")
    ridge_dim: int | None = Field(  # type: ignore[assignment]
        None,
        ge=0,
        description="width k of the ridge read-out's item vectors; 0 = off; unset: "
        f"{DEFAULT_RIDGE_DIM} for kind vista (the others have none)",
    )

    num_actions: int = Field(8, exclude=True)
    rating_head: bool = Field(False, exclude=True)
    model_dir: str = "artifacts/model"

    @field_validator(*_DERIVED, mode="before")
    @classmethod
    def _derived(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only when the key is given (defaults are not validated).
        name = str(info.field_name)
        raise ValueError(f"model.{name} cannot be configured: {_DERIVED[name]}")

    def spec(self, **derived: Any) -> ModelSpec:
        """The architecture alone (no folder), with the derived fields given here
        (``num_actions``, ``rating_head``) and any other overrides."""
        fields = self.model_dump(exclude={"model_dir"})
        if fields["ridge_dim"] is None:
            fields["ridge_dim"] = DEFAULT_RIDGE_DIM if fields["kind"] == "vista" else 0
        return ModelSpec.model_validate({**fields, **derived})
