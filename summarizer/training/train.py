"""Training: stage 1 and stage 2 end to end, on the downstream label plus reconstruction.

Split by time (80/10/10 by timestamp percentiles): training targets are events before
t1, validation in [t1, t2), test from t2 on; every target's history is everything
before it (:mod:`summarizer.training.targets`). SparseAdam for the hashed item
tables, AdamW for the rest; early stopping on validation AUC (best weights kept).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from summarizer.config import ClusterParams, TrainConfig
from summarizer.data.histories import Histories
from summarizer.data.item_vectors import ItemVectors
from summarizer.model.encoder import WEIGHT_SCALE
from summarizer.model.vista_model import VistaModel
from summarizer.training.forward import forward_targets
from summarizer.training.metrics import Metrics, compute_metrics
from summarizer.training.targets import TargetBatch, Window, iter_batches, select_targets


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
    if out.aux_loss is not None and cfg.next_action_weight:
        loss = loss + cfg.next_action_weight * out.aux_loss
        parts["next_action"] = float(out.aux_loss.detach())
    if out.ridge is not None and cfg.ridge_weight and model.ridge is not None:
        # The ridge read-out's own fit: its score predicts the candidate's response (rating,
        # else the label) around the mean, so its tables learn whatever the MLP does.
        response = torch.where(
            torch.isnan(batch.cand_rating), batch.cand_label, batch.cand_rating
        ).double()
        target = (response - model.ridge.mean_response).float()
        mse = F.mse_loss(out.ridge, target)
        loss = loss + cfg.ridge_weight * mse
        parts["ridge_mse"] = float(mse.detach())
    if cfg.item_l2:
        # L2 on the item rows this batch looked up (the table is sparse: weight decay on it
        # would touch every row every step): shrinks rarely seen items toward zero.
        ids = torch.cat([batch.events.item_id, batch.cand_item])
        l2 = model.items.squared_norm(ids).mean()
        loss = loss + cfg.item_l2 * l2
        parts["item_l2"] = float(l2.detach())
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
    return any(p is q for q in model.sparse_tables())


def make_optimizers(model: VistaModel, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """SparseAdam for the hashed item tables (rows touched by the batch only), AdamW for the rest."""
    table = model.sparse_tables()
    dense = [p for p in model.parameters() if not _is_sparse_table(model, p)]
    item_lr = cfg.item_lr or cfg.lr
    ridge = [] if model.ridge is None else model.ridge.tables()
    groups: list[dict] = [{"params": [p for p in table if not any(p is r for r in ridge)]}]
    if ridge and cfg.ridge_lr != 0:
        groups.append({"params": ridge, "lr": cfg.ridge_lr or item_lr})
    for p in ridge:  # frozen (ridge_lr = 0): no gradients kept for them
        p.requires_grad_(cfg.ridge_lr != 0)
    return [
        torch.optim.SparseAdam(groups, lr=item_lr),
        torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay),
    ]


def train(
    model: VistaModel,
    hist: Histories,
    train_window: Window,
    val_window: Window,
    cfg: TrainConfig,
    progress: bool = True,
    item_vectors: ItemVectors | None = None,
) -> TrainResult:
    """Adam on the training window; early stopping on validation AUC (best weights kept).

    ``item_vectors``: with ``cfg.pretrain_items = "table"``, the version of the store's
    item-vectors table the ridge read-out starts from."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.pretrain_item_table == "cooccurrence":
        from summarizer.training import pretrain

        chosen_items = pretrain.init_items_from_cooccurrence(
            model, hist, train_window, val_window, cfg.eval_targets_per_user, cfg.seed
        )
        if progress:
            print(f"item table started from cooccurrence item vectors: {chosen_items}")
    if model.ridge is not None:  # the ridge read-out's responses are centred on the data's
        from summarizer.training import classic, pretrain

        in_window = (hist.ts >= train_window.start) & (hist.ts < train_window.end)
        r = classic.response(hist)[in_window]
        model.ridge.set_mean_response(float(r.mean()) if len(r) else 0.0)

        chosen: dict[str, float] | None = None
        if cfg.pretrain_items in ("cooccurrence", "mf"):
            start = (
                pretrain.init_ridge_from_cooccurrence
                if cfg.pretrain_items == "cooccurrence"
                else pretrain.init_ridge_from_mf
            )
            chosen = start(
                model, hist, train_window, val_window, cfg.eval_targets_per_user, cfg.seed
            )
        elif cfg.pretrain_items == "table":
            if item_vectors is None:
                raise ValueError(
                    "pretrain_items = 'table' needs the item vectors (train_and_save reads them)"
                )
            chosen = pretrain.init_ridge_from_table(model, item_vectors, val_window)
        if progress and chosen is not None:
            print(f"ridge read-out started from {cfg.pretrain_items} item vectors: {chosen}")
    optimizers = make_optimizers(model, cfg)
    dense_params = [p for p in model.parameters() if not _is_sparse_table(model, p)]
    item_pool = np.unique(hist.item_id) if cfg.negatives else None
    best_auc, best_state, bad_epochs = -math.inf, copy.deepcopy(model.state_dict()), 0
    log: list[dict[str, float]] = []
    best_val: Metrics | None = None
    t0 = time.perf_counter()
    epoch = 0
    if model.ridge is not None and cfg.pretrain_items != "none":
        # The pretrained start is a candidate too: the read-out alone (a residual MLP at zero).
        best_val = evaluate(model, hist, val_window, cfg)
        best_auc = best_val.auc
        log.append({"epoch": 0, "val_auc": best_val.auc, "val_logloss": best_val.logloss})
        if progress:
            print(f"epoch 0 (pretrained read-out): val AUC {best_val.auc:.4f}")
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        targets = select_targets(hist, train_window, cfg.targets_per_user, rng)
        # TWIN-V2 banks re-clustered each epoch on the current encodings.
        banks = bank_labels_for(model, hist, train_window.end, cfg)
        total, steps = 0.0, 0
        bar = tqdm(
            iter_batches(hist, targets, cfg, rng, item_pool, banks),
            desc=f"epoch {epoch}",
            # A bar on a terminal only: a log gets the one line per epoch below.
            disable=not progress or not sys.stderr.isatty(),
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
