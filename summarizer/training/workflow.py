"""The training workflow: split, spec, train, evaluate, save -- one function for every caller.

``vista train``, the retrain DAG (``batch_jobs.dag_tasks.train_candidate``) and any
script call :func:`train_and_save`; none of them goes through the command line.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from summarizer.config import ModelSpec, VistaConfig
from summarizer.data.histories import load_histories, temporal_split
from summarizer.data.item_vectors import ItemVectors
from summarizer.model import artifacts
from summarizer.model.vista_model import VistaModel
from summarizer.training.metrics import Metrics
from summarizer.training.targets import Window
from summarizer.training.train import evaluate, train

FOREVER = 2**62  # the open ends of the temporal split's windows


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """What :func:`train_and_save` made and where it put it."""

    model_dir: str
    version: str
    spec: ModelSpec
    val: Metrics
    test: Metrics
    split: tuple[int, int]  # t1, t2: train < t1 <= validation < t2 <= test
    n_users: int
    n_events: int
    epochs_run: int
    seconds: float


def model_spec(cfg: VistaConfig, **overrides: object) -> ModelSpec:
    """The architecture a new model is trained with: the ``[model]`` section, with the
    action count of ``[data]``."""
    return cfg.model.spec(num_actions=cfg.data.num_actions, **overrides)


def train_and_save(
    cfg: VistaConfig,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    progress: bool = True,
    item_vectors: ItemVectors | None = None,
) -> TrainedModel:
    """Train the configured model on validated events (default: ``data.valid_dir``) with
    a temporal 80/10/10 split, evaluate it on the test window and save it (default:
    ``model.model_dir``); early stopping on the validation window. ``item_vectors``: the
    store's table version a ridge read-out starts from (``[train] pretrain_items =
    "table"``; ``SummaryStore.item_vectors``)."""
    data = str(data_dir or cfg.data.valid_dir)
    out = str(out_dir or cfg.model.model_dir)
    options = cfg.data.storage_options
    t1, t2 = temporal_split(data, options=options)
    hist = load_histories(data, options=options)
    # Explicit feedback (ratings in ``weight``) gets a rating head as well.
    spec = model_spec(cfg, rating_head=bool(np.any(~np.isnan(hist.weight))))
    tc = cfg.train if epochs is None else cfg.train.replace(epochs=epochs)
    result = train(
        VistaModel(spec),
        hist,
        Window(-FOREVER, t1),
        Window(t1, t2),
        tc,
        progress=progress,
        item_vectors=item_vectors,
    )
    test = evaluate(result.model, hist, Window(t2, FOREVER), tc)
    meta: dict[str, object] = {
        "val": result.val.to_dict(),
        "test": test.to_dict(),
        "split": [t1, t2],
    }
    if item_vectors is not None and tc.pretrain_items == "table":
        meta["item_vectors_version"] = item_vectors.version
    version = artifacts.save(result.model, out, {**meta, "data": data}, options)
    return TrainedModel(
        model_dir=str(out),
        version=version,
        spec=spec,
        val=result.val,
        test=test,
        split=(t1, t2),
        n_users=hist.n_users,
        n_events=hist.n_events,
        epochs_run=result.epochs_run,
        seconds=result.seconds,
    )
