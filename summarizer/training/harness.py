"""The evaluation harness: VISTA and the baselines on the same data, splits and budget.

Every variant shares the encoder, item table and ranker and is trained with
the same ``TrainConfig``; only the history module differs. The table reports
test AUC, logloss, NE, MAE (explicit data), parameters and the online cost per
candidate, and a plot shows quality against online cost.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from summarizer.config import ModelSpec, TrainConfig
from summarizer.data.histories import Histories, load_histories, temporal_split
from summarizer.model.transact2 import IMPRESSION_K, LIFELONG_K
from summarizer.model.vista_model import VistaModel
from summarizer.training import classic
from summarizer.training.targets import Window
from summarizer.training.train import evaluate, train

REFERENCE_CANDIDATES = 512  # m used to amortize per-request work in the cost column


@dataclasses.dataclass
class Variant:
    name: str
    spec: ModelSpec
    # TrainConfig fields this row trains with instead of the shared ones.
    train: dict[str, object] = dataclasses.field(default_factory=dict)


GSU_K = 32  # memory tokens per candidate in the GSU rows
HSTU_WINDOW = 512  # the HSTU row's causal attention window (events)
LONGER_RECENT = 32  # the LONGER row's recent merged tokens among the queries
TRANSACT2_REALTIME = 32  # the TransAct V2 row's realtime window
DV365_EVENTS = 256  # the DV365 row's events per embedding (local windows, pooled to K)
RIDGE_K = 64  # item-vector width of the ridge read-out when the configured model has none
# The attention baselines' stronger recipe (BENCHMARKS.md, issue 21): the shared item table
# starts from the training window's co-occurrence SVD and learns at 1/100 of the dense lr.
FROZEN_COOCCURRENCE_TABLE: dict[str, object] = {
    "pretrain_item_table": "cooccurrence",
    "item_lr": 1e-5,
}


def default_variants(base: ModelSpec, last_k: int = 100) -> list[Variant]:
    """The rows of ``vista evaluate``: the baselines, the configured VISTA (``[model]``: by
    default K=16 with the ridge read-out, its item vectors started from the item
    co-occurrence SVD), what it is
    without each of its parts, and the options that win somewhere (BENCHMARKS.md)."""

    def spec(**kw: object) -> ModelSpec:
        # The GSU and the ridge read-out only where a row asks for them (configured ones
        # would not fit DIN & co.).
        return base.replace(**{"gsu_k": 0, "ridge_dim": 0, **kw})

    rows = base.num_layers * base.feature_dim  # the state read-out's token count
    k_ridge = base.ridge_dim or RIDGE_K
    vista = base.replace(kind="vista", gsu_k=0, ridge_dim=k_ridge)
    K = vista.num_seeds
    return [
        Variant("no history", spec(kind="none")),
        Variant("mean pooling (all events)", spec(kind="mean")),
        Variant(f"DIN target attention, last {last_k}", spec(kind="din", last_k=last_k)),
        Variant(f"TransAct early fusion, last {last_k}", spec(kind="transact", last_k=last_k)),
        Variant(
            f"append + cross-attn (LinkedIn), last {last_k}", spec(kind="linkedin", last_k=last_k)
        ),
        Variant("full-history target attention", spec(kind="full")),
        # The attention baselines with their item table started from the co-occurrence SVD
        # and nearly frozen: with the shared recipe they memorize ~10 labels an item.
        Variant(
            f"DIN (co-occurrence item table), last {last_k}",
            spec(kind="din", last_k=last_k),
            FROZEN_COOCCURRENCE_TABLE,
        ),
        Variant(
            "full-history target attention (co-occurrence item table)",
            spec(kind="full"),
            FROZEN_COOCCURRENCE_TABLE,
        ),
        Variant(f"VISTA K={K} + ridge read-out k={k_ridge} (co-occurrence start)", vista),
        Variant(
            f"VISTA K={K} + ridge read-out k={k_ridge} (MF start)",
            vista,
            {"pretrain_items": "mf"},
        ),
        Variant(
            f"VISTA K={K} + ridge read-out k={k_ridge} (random start)",
            vista,
            {"pretrain_items": "none"},
        ),
        Variant(f"VISTA K={K}, no ridge read-out", vista.replace(ridge_dim=0)),
        Variant(
            f"VISTA K={K}, no ridge read-out, reconstruction loss",
            vista.replace(ridge_dim=0),
            {"recon_weight": 0.1},
        ),
        Variant(
            f"VISTA (state read-out, softmax slots) K={rows}",
            spec(
                kind="vista",
                num_seeds=rows,
                feature_map="softmax",
                values="events",
                readout="state",
            ),
        ),
        Variant(
            f"HSTU (M-FALCON candidates), window {HSTU_WINDOW}",
            spec(kind="hstu", last_k=HSTU_WINDOW),
        ),
        Variant(
            f"LONGER (merge 4, {LONGER_RECENT} recent queries)",
            spec(kind="longer", last_k=LONGER_RECENT),
        ),
        Variant(
            f"TransAct V2 (nearest {LIFELONG_K} lifelong + last {TRANSACT2_REALTIME} + "
            f"{IMPRESSION_K} impressions, next-action loss)",
            spec(kind="transact2", last_k=TRANSACT2_REALTIME),
        ),
        # The raw-event attention modules with the recipe that lifts DIN and full attention
        # on the sparse synthetic data (the co-occurrence item table, nearly frozen).
        Variant(
            f"HSTU (co-occurrence item table), window {HSTU_WINDOW}",
            spec(kind="hstu", last_k=HSTU_WINDOW),
            FROZEN_COOCCURRENCE_TABLE,
        ),
        Variant(
            f"LONGER (co-occurrence item table), merge 4, {LONGER_RECENT} recent queries",
            spec(kind="longer", last_k=LONGER_RECENT),
            FROZEN_COOCCURRENCE_TABLE,
        ),
        Variant(
            f"TransAct V2 (co-occurrence item table), nearest {LIFELONG_K} lifelong + last "
            f"{TRANSACT2_REALTIME} + {IMPRESSION_K} impressions",
            spec(kind="transact2", last_k=TRANSACT2_REALTIME),
            FROZEN_COOCCURRENCE_TABLE,
        ),
        Variant(
            f"DV365-style embedding K={K} (funnel over the last {DV365_EVENTS} events)",
            spec(kind="dv365", num_seeds=K, last_k=DV365_EVENTS),
        ),
        Variant(f"SIM soft search, top {GSU_K}", spec(kind="sim", gsu_k=GSU_K)),
        Variant(
            f"TWIN-V2 (clusters + GSU), top {GSU_K}",
            spec(kind="sim", gsu_k=GSU_K, memory="clusters"),
        ),
        Variant(f"VISTA K={K} + GSU top {GSU_K}", vista.replace(ridge_dim=0, gsu_k=GSU_K)),
        Variant(
            f"VISTA K={K} + TWIN-V2 GSU top {GSU_K}",
            vista.replace(ridge_dim=0, gsu_k=GSU_K, memory="clusters"),
        ),
    ]


def online_flops_per_candidate(
    spec: ModelSpec, n_history: float, m: int = REFERENCE_CANDIDATES
) -> float:
    """Forward FLOPs to score one candidate online (2 per multiply-add), per-request work / m.

    Counts the history module and the ranker; the candidate's item lookup is
    free. VISTA's tokens come precomputed from the store (their K/V projection
    is counted, though it too can be cached per model version); raw-event
    models must encode their events at request time.
    """
    d = spec.d_model
    ranker = 2 * (d * d + d * d + (3 * d + 2) * 2 * d + 2 * d * d + d)  # q, o, MLP, logit
    attend = lambda n_tok: 2 * 2 * n_tok * d  # noqa: E731  scores + weighted sum
    kv_proj = lambda n_tok: 2 * n_tok * 2 * d * d  # noqa: E731
    encode = lambda n_ev: 2 * n_ev * (2 * d * d + 10 * d)  # noqa: E731  encoder MLP + sums
    k = min(spec.last_k, n_history)
    # GSU: every candidate scores the whole bank (C = n raw events here), then attends to
    # its top gsu_k; the bank is encoded and projected once per request.
    gsu = 0.0
    if spec.gsu_k:
        gsu = 2 * n_history * d + attend(min(spec.gsu_k, n_history))
        gsu += (kv_proj(n_history) + encode(n_history)) / m
    if spec.kind == "sim":
        return ranker + gsu
    if spec.kind == "none":
        return float(ranker)
    if spec.kind == "mean":
        return ranker + attend(1) + kv_proj(1) / m
    if spec.kind == "vista":
        w = min(spec.recent_window, n_history)
        shared = attend(spec.num_seeds + w) + (kv_proj(spec.num_seeds + w) + encode(w)) / m
        if spec.readout == "state":  # the candidate's weights (d -> H*K) and its read of K rows
            shared += 2 * d * spec.num_heads * spec.num_seeds + 2 * spec.num_seeds * d
        if spec.ridge_dim:  # the request's solve (its recent events folded in), then a dot
            k1 = spec.ridge_dim + 1
            shared += 2 * k1 + (k1**3 / 3 + 2 * k1 * k1 * min(spec.recent_window, n_history)) / m
        return ranker + shared + gsu
    if spec.kind == "din":
        return ranker + attend(k) + (kv_proj(k) + encode(k)) / m
    if spec.kind == "linkedin":
        layer = (
            2 * k * (4 * d * d + 4 * d * d) + 2 * 2 * k * k * d
        )  # self-attn + FFN over the window
        return ranker + attend(k) + (kv_proj(k) + encode(k) + layer) / m
    if spec.kind == "transact":
        layer = 2 * k * (4 * d * d + 4 * d * d + 2 * d * d) + 2 * 2 * k * k * d  # per candidate
        return ranker + layer + encode(k) / m
    if spec.kind == "full":
        return ranker + attend(n_history) + (kv_proj(n_history) + encode(n_history)) / m
    if spec.kind == "hstu":
        # Per layer: the history's projections and its windowed attention once per request
        # (a server with a per-user key/value cache pays only the new events' part), and
        # each candidate's own projection and attention over the window.
        w = min(spec.last_k, n_history)
        proj = 2 * (4 * d * d + d * d)  # f1 and f2 of one token
        per_layer = proj + attend(w + 1) + (n_history * (proj + attend(w))) / m
        return ranker + spec.num_layers * per_layer + encode(n_history) / m
    if spec.kind == "longer":
        # Per request: InnerTrans over every event and the merge, the cross-attention of the
        # k recent merged tokens over all n/4 of them, the self-attention layers over the
        # k; per candidate: its query over all merged tokens, then over the k.
        groups = n_history / 4
        block = 2 * (4 * d * d + 4 * d * d)  # q, k, v, o and the MLP of one token
        inner = n_history * block + 2 * 2 * n_history * 4 * d + groups * 2 * 4 * d * d
        recent = min(spec.last_k, groups)
        cross = recent * (block + attend(groups)) + groups * 2 * 2 * d * d
        layers = (spec.num_layers - 1) * recent * (block + attend(recent))
        per_cand = block + attend(groups + 2)
        per_cand += (spec.num_layers - 1) * (block + attend(recent + 1))
        return ranker + per_cand + (inner + cross + layers + encode(n_history)) / m
    if spec.kind == "dv365":  # cached tokens + the recent window, read as VISTA's are
        w = min(spec.recent_window, n_history)
        return ranker + attend(spec.num_seeds + w) + (kv_proj(spec.num_seeds + w) + encode(w)) / m
    if spec.kind == "transact2":
        # Per candidate: the nearest-neighbour search over every event's item (lifelong and
        # impressions), the fusion of each selected event with it, one encoder layer over
        # them and itself; per request: the events' encoding.
        t = min(LIFELONG_K + IMPRESSION_K, n_history) + min(spec.last_k, n_history) + 1
        layer = 2 * t * (4 * d * d + 4 * d * d) + 2 * 2 * t * t * d
        search = 2 * n_history * d
        return ranker + search + t * 2 * 2 * d * d + layer + 2 * 2 * d * d + encode(n_history) / m
    raise ValueError(spec.kind)


@dataclasses.dataclass
class Row:
    model: str
    auc: float  # mean over the seeds
    logloss: float
    ne: float
    mae: float | None
    params: int
    dense_params: int
    online_mflops_per_candidate: float
    epochs: int
    train_seconds: float
    val_auc: float
    auc_min: float | None = None  # range over the seeds (None: one run)
    auc_max: float | None = None
    seeds: int = 1
    served: str = "-"  # serving_form: "cache", "raw events", "no history" ("-": classic)


def serving_form(spec: ModelSpec) -> str:
    """How a model kind's history reaches a request online: from per-user rows a batch job
    keeps (``cache``: VISTA's tokens, DV365's embedding, a running mean, memory banks of
    events or TWIN-V2 clusters), or by running over the raw events at request time (``raw
    events``: its online cost grows with the history it reads)."""
    if spec.kind == "none":
        return "no history"
    if spec.kind in ("vista", "dv365", "mean") or (
        spec.kind == "sim" and spec.memory == "clusters"
    ):
        return "cache"
    return "raw events"


def classic_rows(
    hist: Histories, t1: int, t2: int, cfg: TrainConfig, names: list[str]
) -> list[Row]:
    """The classic baselines (summarizer/training/classic.py) as rows of the table."""
    rows = []
    for r in classic.evaluate_classic(hist, t1, t2, cfg.eval_targets_per_user, names):
        rows.append(
            Row(
                model=r.name,
                auc=r.test.auc,
                logloss=r.test.logloss,
                ne=r.test.ne,
                mae=None,
                params=r.params,
                dense_params=0,
                online_mflops_per_candidate=r.online_mflops_per_candidate,
                epochs=int(r.chosen.get("iterations", 0)),
                train_seconds=r.seconds,
                val_auc=r.val_auc,
            )
        )
    return rows


def run(
    events_root: str | os.PathLike[str],
    variants: list[Variant],
    cfg: TrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    hist: Histories | None = None,
    classic_names: list[str] | None = None,
    seeds: int = 1,
) -> list[Row]:
    """Train and test every variant on one temporal split (``seeds`` training seeds each:
    the row's AUC is their mean, with the range), after the classic rows named."""
    t1, t2 = temporal_split(events_root)
    hist = load_histories(events_root) if hist is None else hist
    explicit = bool(np.any(~np.isnan(hist.weight)))
    train_w, val_w, test_w = Window(-(2**62), t1), Window(t1, t2), Window(t2, 2**62)
    # Mean history length of the test requests: what a full-history model must read online.
    test_lengths = [p for u in range(hist.n_users) for p in _test_positions(hist, u, test_w)]
    n_hist = float(np.mean(test_lengths)) if test_lengths else 0.0
    rows = classic_rows(hist, t1, t2, cfg, classic_names) if classic_names else []
    if progress and rows:
        print(format_table(rows))
    for v in variants:
        spec = v.spec.replace(rating_head=explicit)
        runs = []
        for seed in range(cfg.seed, cfg.seed + seeds):
            vcfg = cfg.replace(seed=seed)
            if v.train:
                vcfg = vcfg.replace(**v.train)
            if progress:
                print(f"== {v.name} (seed {seed})")
            import torch

            torch.manual_seed(seed)
            model = VistaModel(spec)
            res = train(model, hist, train_w, val_w, vcfg, progress=progress)
            runs.append((res, evaluate(res.model, hist, test_w, vcfg)))
        total, dense = model.parameter_counts()
        aucs = [t.auc for _, t in runs]
        maes = [t.mae for _, t in runs if t.mae is not None]
        rows.append(
            Row(
                model=v.name,
                auc=float(np.mean(aucs)),
                logloss=float(np.mean([t.logloss for _, t in runs])),
                ne=float(np.mean([t.ne for _, t in runs])),
                mae=float(np.mean(maes)) if maes else None,
                params=total,
                dense_params=dense,
                online_mflops_per_candidate=online_flops_per_candidate(spec, n_hist) / 1e6,
                epochs=round(float(np.mean([r.epochs_run for r, _ in runs]))),
                train_seconds=float(np.mean([r.seconds for r, _ in runs])),
                val_auc=float(np.mean([r.val.auc for r, _ in runs])),
                auc_min=min(aucs) if seeds > 1 else None,
                auc_max=max(aucs) if seeds > 1 else None,
                seeds=seeds,
                served=serving_form(spec),
            )
        )
        if progress:
            print(format_table(rows[-1:]))
    if out_dir is not None:
        write_outputs(
            rows,
            out_dir,
            {"n_history_mean_test": n_hist, "split": [t1, t2], "train": cfg.model_dump()},
        )
    return rows


def _test_positions(hist: Histories, u: int, w: Window) -> np.ndarray:
    a, b = hist.offsets[u], hist.offsets[u + 1]
    ts = hist.ts[a:b]
    return np.arange(np.searchsorted(ts, w.start), np.searchsorted(ts, w.end))


def format_table(rows: list[Row]) -> str:
    head = (
        "| model | AUC (range over seeds) | logloss | NE | MAE | params (dense) "
        "| online MFLOP/cand | served from | epochs | train s |"
    )
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    lines = [head, sep]
    for r in rows:
        mae = f"{r.mae:.4f}" if r.mae is not None else "-"
        auc = f"{r.auc:.4f}"
        if r.auc_min is not None and r.auc_max is not None:
            auc += f" ({r.auc_min:.4f}-{r.auc_max:.4f}, {r.seeds} seeds)"
        lines.append(
            f"| {r.model} | {auc} | {r.logloss:.4f} | {r.ne:.4f} | {mae} | "
            f"{r.params / 1e6:.2f}M ({r.dense_params / 1e3:.0f}k) | "
            f"{r.online_mflops_per_candidate:.3f} | {r.served} | {r.epochs} | "
            f"{r.train_seconds:.0f} |"
        )
    return "\n".join(lines)


def write_outputs(
    rows: list[Row], out_dir: str | os.PathLike[str], meta: dict[str, object]
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"rows": [dataclasses.asdict(r) for r in rows], **meta}, indent=2)
    )
    (out / "results.md").write_text(format_table(rows) + "\n")
    plot_quality_vs_cost(rows, out / "quality_vs_cost.png")


def plot_quality_vs_cost(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(10, 6))
    # Marker: served from a cache (circle) or over raw events at request time (triangle);
    # VISTA's rows red.
    markers = {"cache": "o", "raw events": "^", "no history": "s", "-": "D"}
    for r in rows:
        x = max(r.online_mflops_per_candidate, 1e-3)
        color = "tab:red" if r.model.startswith("VISTA") else "tab:blue"
        ax.scatter(x, r.auc, s=40, marker=markers.get(r.served, "o"), color=color)
        label = r.model if len(r.model) <= 40 else r.model[:38] + "…"
        ax.annotate(label, (x, r.auc), fontsize=7, xytext=(4, 2), textcoords="offset points")
    handles = [
        Line2D([], [], marker=m, linestyle="", color="gray", label={"-": "classic"}.get(f, f))
        for f, m in markers.items()
        if any(r.served == f for r in rows)
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower right", title="served from", title_fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("online MFLOP per candidate (log)")
    ax.set_ylabel("test AUC")
    ax.set_title("quality against online cost")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def auc_gain_recovered(
    rows: list[Row],
    model: str,
    floor: str = "no history",
    ceiling: str = "full-history target attention",
) -> float:
    by = {r.model: r.auc for r in rows}
    gain = by[ceiling] - by[floor]
    return (by[model] - by[floor]) / gain if gain > 0 else math.nan
