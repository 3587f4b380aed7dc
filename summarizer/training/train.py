"""Training: stage 1 and stage 2 end to end, on the downstream label plus reconstruction.

Targets are events: the label of the event at position p (engaged, or a rating
>= 4) is predicted from the events before p, with the event's own item as the
candidate. Split by time (80/10/10 by timestamp percentiles): training targets
are events before t1, validation in [t1, t2), test from t2 on; every target's
history is everything before it. Implicit-feedback data (no negatives in the
log) gets ``negatives`` random items per target, labelled 0.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from summarizer.config import ClusterParams, TrainConfig
from summarizer.data.histories import Histories
from summarizer.model.encoder import SECONDS_PER_DAY, WEIGHT_SCALE, EventBatch
from summarizer.model.vista_model import VistaModel
from summarizer.training.forward import TargetBatch, forward_targets
from summarizer.training.metrics import Metrics, compute_metrics


@dataclasses.dataclass
class Window:
    """A time window of targets: [start, end)."""

    start: int
    end: int


def _positions(hist: Histories, u: int, window: Window) -> np.ndarray:
    a, b = hist.offsets[u], hist.offsets[u + 1]
    ts = hist.ts[a:b]
    lo, hi = np.searchsorted(ts, window.start, "left"), np.searchsorted(ts, window.end, "left")
    return np.arange(lo, hi)


def select_targets(
    hist: Histories, window: Window, per_user: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Per user, up to ``per_user`` target positions inside the window (random, or evenly spaced)."""
    out = []
    for u in range(hist.n_users):
        pos = _positions(hist, u, window)
        if len(pos) > per_user:
            if rng is not None:
                pos = np.sort(rng.choice(pos, per_user, replace=False))
            else:
                pos = pos[np.linspace(0, len(pos) - 1, per_user).round().astype(int)]
        out.append(pos)
    return out


def iter_batches(
    hist: Histories,
    targets: list[np.ndarray],
    cfg: TrainConfig,
    rng: np.random.Generator | None,
    item_pool: np.ndarray | None = None,
    bank_labels: np.ndarray | None = None,
) -> Iterator[TargetBatch]:
    """Group users into batches bounded by events and requests (a huge user gets a batch alone).

    ``bank_labels``: every event's cluster id (models with a TWIN-V2 bank)."""
    users = [u for u in range(hist.n_users) if len(targets[u])]
    if rng is not None:
        rng.shuffle(users)
    group: list[int] = []
    n_ev = n_req = 0
    for u in users:
        need = int(targets[u][-1]) + 1
        if group and (
            n_ev + need > cfg.batch_events or n_req + len(targets[u]) > cfg.batch_requests
        ):
            yield _make_batch(hist, group, targets, cfg.negatives, rng, item_pool, bank_labels)
            group, n_ev, n_req = [], 0, 0
        group.append(u)
        n_ev += need
        n_req += len(targets[u])
    if group:
        yield _make_batch(hist, group, targets, cfg.negatives, rng, item_pool, bank_labels)


def _make_batch(
    hist: Histories,
    users: list[int],
    targets: list[np.ndarray],
    negatives: int,
    rng: np.random.Generator | None,
    item_pool: np.ndarray | None,
    bank_labels: np.ndarray | None = None,
) -> TargetBatch:
    labels_all = hist.labels
    ev_parts: list[slice] = []
    offsets = [0]
    req_user, req_pos, req_ts, req_sum = [], [], [], []
    cand_item, cand_label, cand_rating, cand_counts = [], [], [], []
    neg_rng = rng if rng is not None else np.random.default_rng(0)
    for i, u in enumerate(users):
        a = int(hist.offsets[u])
        pos = targets[u]
        ev_parts.append(slice(a, a + int(pos[-1]) + 1))
        offsets.append(offsets[-1] + int(pos[-1]) + 1)
        g = a + pos
        req_user.append(np.full(len(pos), i))
        req_pos.append(pos)
        req_ts.append(hist.ts[g])
        # The nightly summary a request would read: everything before the request's UTC day.
        user_ts = hist.ts[a : a + int(pos[-1]) + 1]
        day_start = (hist.ts[g] // SECONDS_PER_DAY) * SECONDS_PER_DAY
        req_sum.append(np.searchsorted(user_ts, day_start, "left"))
        items = hist.item_id[g][:, None]
        labels = labels_all[g][:, None]
        ratings = hist.weight[g][:, None]
        if negatives and item_pool is not None:
            neg = item_pool[neg_rng.integers(0, len(item_pool), (len(pos), negatives))]
            items = np.concatenate([items, neg], 1)
            labels = np.concatenate([labels, np.zeros((len(pos), negatives), np.float32)], 1)
            ratings = np.concatenate(
                [ratings, np.full((len(pos), negatives), np.nan, np.float32)], 1
            )
        cand_item.append(items.ravel())
        cand_label.append(labels.ravel())
        cand_rating.append(ratings.ravel())
        cand_counts.append(np.full(len(pos), items.shape[1]))
    idx = np.concatenate([np.arange(s.start, s.stop) for s in ev_parts])
    events = EventBatch.from_numpy(
        hist.item_id[idx], hist.ts[idx], hist.action[idx], hist.weight[idx]
    )
    counts = np.concatenate(cand_counts)
    return TargetBatch(
        events=events,
        offsets=torch.tensor(offsets),
        req_user=torch.from_numpy(np.concatenate(req_user)),
        req_pos=torch.from_numpy(np.concatenate(req_pos).astype(np.int64)),
        req_ts=torch.from_numpy(np.concatenate(req_ts).astype(np.int64)),
        cand_offsets=torch.from_numpy(np.r_[0, np.cumsum(counts)].astype(np.int64)),
        cand_item=torch.from_numpy(np.concatenate(cand_item).astype(np.int64)),
        cand_label=torch.from_numpy(np.concatenate(cand_label).astype(np.float32)),
        cand_rating=torch.from_numpy(np.concatenate(cand_rating).astype(np.float32)),
        req_summary_pos=torch.from_numpy(np.concatenate(req_sum).astype(np.int64)),
        event_cluster=None if bank_labels is None else torch.from_numpy(bank_labels[idx]),
    )


def batch_loss(
    model: VistaModel, batch: TargetBatch, cfg: TrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    out = forward_targets(model, batch, recon=cfg.recon_weight > 0)
    loss = F.binary_cross_entropy_with_logits(out.logits, batch.cand_label)
    parts = {"bce": float(loss.detach())}
    if out.ratings is not None:
        has = ~torch.isnan(batch.cand_rating)
        if bool(has.any()):
            mse = F.mse_loss(out.ratings[has], batch.cand_rating[has] / WEIGHT_SCALE)
            loss = loss + cfg.rating_weight * mse
            parts["rating_mse"] = float(mse.detach())
    if out.recon_loss is not None:
        loss = loss + cfg.recon_weight * out.recon_loss
        parts["recon"] = float(out.recon_loss.detach())
    return loss, parts


def bank_labels_for(
    model: VistaModel, hist: Histories, cutoff: int, cfg: TrainConfig
) -> np.ndarray | None:
    """Cluster ids of every event for a model whose bank is TWIN-V2 clusters, with the
    clusters as of ``cutoff`` (summarizer.training.banks); None for any other model."""
    if not (model.spec.uses_memory_bank and model.spec.memory == "clusters"):
        return None
    from summarizer.training.banks import bank_partition

    params = ClusterParams(
        max_cluster_size=cfg.bank_cluster_size, max_clusters=cfg.bank_max_clusters, seed=cfg.seed
    )
    return bank_partition(model, hist, cutoff, params)


@torch.no_grad()
def predict(
    model: VistaModel, hist: Histories, window: Window, cfg: TrainConfig
) -> dict[str, np.ndarray]:
    """Scores for every (capped) target in the window: labels, probabilities, ratings."""
    model.eval()
    targets = select_targets(hist, window, cfg.eval_targets_per_user, rng=None)
    labels, probs, ratings, true_r = [], [], [], []
    # Clusters as of the window's start: nothing in the window shapes the bank.
    banks = bank_labels_for(model, hist, window.start, cfg)
    for batch in iter_batches(hist, targets, cfg.replace(negatives=0), None, None, banks):
        out = forward_targets(model, batch)
        labels.append(batch.cand_label.numpy())
        probs.append(torch.sigmoid(out.logits).numpy())
        true_r.append(batch.cand_rating.numpy())
        if out.ratings is not None:
            ratings.append((out.ratings * WEIGHT_SCALE).clamp(0.5, 5.0).numpy())
    result = {
        "label": np.concatenate(labels) if labels else np.zeros(0),
        "prob": np.concatenate(probs) if probs else np.zeros(0),
        "rating_true": np.concatenate(true_r) if true_r else np.zeros(0),
    }
    if ratings:
        result["rating_pred"] = np.concatenate(ratings)
    return result


def evaluate(model: VistaModel, hist: Histories, window: Window, cfg: TrainConfig) -> Metrics:
    return compute_metrics(predict(model, hist, window, cfg))


@dataclasses.dataclass
class TrainResult:
    model: VistaModel
    val: Metrics
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]


def _is_sparse_table(model: VistaModel, p: torch.nn.Parameter) -> bool:
    return any(p is q for q in model.items.parameters())


def make_optimizers(model: VistaModel, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """SparseAdam for the hashed item tables (rows touched by the batch only), AdamW for the rest."""
    table = list(model.items.parameters())
    dense = [p for p in model.parameters() if not _is_sparse_table(model, p)]
    return [
        torch.optim.SparseAdam(table, lr=cfg.lr),
        torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay),
    ]


def train(
    model: VistaModel,
    hist: Histories,
    train_window: Window,
    val_window: Window,
    cfg: TrainConfig,
    progress: bool = True,
) -> TrainResult:
    """Adam on the training window; early stopping on validation AUC (best weights kept)."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizers = make_optimizers(model, cfg)
    dense_params = [p for p in model.parameters() if not _is_sparse_table(model, p)]
    item_pool = np.unique(hist.item_id) if cfg.negatives else None
    best_auc, best_state, bad_epochs = -math.inf, copy.deepcopy(model.state_dict()), 0
    log: list[dict[str, float]] = []
    best_val: Metrics | None = None
    t0 = time.perf_counter()
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        targets = select_targets(hist, train_window, cfg.targets_per_user, rng)
        # TWIN-V2 banks re-clustered each epoch on the current encodings.
        banks = bank_labels_for(model, hist, train_window.end, cfg)
        total, steps = 0.0, 0
        bar = tqdm(
            iter_batches(hist, targets, cfg, rng, item_pool, banks),
            desc=f"epoch {epoch}",
            disable=not progress,
            leave=False,
        )
        for batch in bar:
            loss, parts = batch_loss(model, batch, cfg)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dense_params, 1.0)
            for opt in optimizers:
                opt.step()
            total += float(loss.detach())
            steps += 1
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
        val = evaluate(model, hist, val_window, cfg)
        log.append(
            {
                "epoch": epoch,
                "train_loss": total / max(steps, 1),
                "val_auc": val.auc,
                "val_logloss": val.logloss,
            }
        )
        if progress:
            print(
                f"epoch {epoch}: train loss {total / max(steps, 1):.4f}  val AUC {val.auc:.4f}  logloss {val.logloss:.4f}"
            )
        if val.auc > best_auc:
            best_auc, best_state, best_val, bad_epochs = (
                val.auc,
                copy.deepcopy(model.state_dict()),
                val,
                0,
            )
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    assert best_val is not None
    return TrainResult(model, best_val, epoch, time.perf_counter() - t0, log)
