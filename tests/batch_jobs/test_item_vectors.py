"""``vista job item-vectors`` on Spark local: a versioned table that training loads and the
scorer serves with."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest

pytest.importorskip("pyspark")
from batch_jobs.item_vectors import run_item_vectors  # noqa: E402
from summarizer.data.events import dataset  # noqa: E402
from summarizer.store import SummaryStore  # noqa: E402
from tests.batch_jobs.helpers import run_job  # noqa: E402

pytestmark = pytest.mark.integration

FACTORS = 3


def _responses(cfg: Any, before_ts: int | None = None) -> tuple[np.ndarray, np.ndarray, Any]:
    t = dataset(cfg.data.valid_dir).to_table(
        columns=["user_id", "item_id", "ts", "action", "weight"]
    )
    if before_ts is not None:
        t = t.filter(pc.field("ts") < before_ts)
    w = t.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
    engaged = (t.column("action").to_numpy() >= 1).astype(np.float64)
    r = np.where(np.isnan(w), engaged, w)
    return t.column("item_id").to_numpy(), r, t


def test_the_job_writes_versions_that_training_loads_and_the_scorer_serves(
    spark: Any, world: dict[str, Any], tmp_path: Any
) -> None:
    import torch

    from online_scorer.scorer import OnlineScorer
    from summarizer.data.histories import temporal_split
    from summarizer.model import artifacts
    from summarizer.model.encoder import hash_ids
    from summarizer.model.vista_model import ScoringRequest
    from summarizer.training.workflow import train_and_save

    base = world["cfg"]
    cfg = base.replace(
        store=base.store.replace(uri=str(tmp_path / "store")),
        model=base.model.replace(
            model_dir=str(tmp_path / "model"), ridge_dim=FACTORS, item_buckets=1 << 16
        ),
        item_vectors=base.item_vectors.replace(factors=FACTORS, iterations=5),
        train=base.train.replace(
            pretrain_items="table", ridge_lr=0.0, epochs=1, targets_per_user=8, threads=1
        ),
    )
    store = SummaryStore.from_config(cfg.store)

    # Every valid event: one version; the closed forms of the mean and the item biases.
    first = run_item_vectors(spark, cfg)
    assert first["version"] == 1
    v1 = store.item_vectors()
    items, r, _ = _responses(cfg)
    assert sorted(v1.item_ids.tolist()) == sorted(set(items.tolist()))
    assert v1.vectors.shape == (len(v1.item_ids), FACTORS)
    np.testing.assert_allclose(v1.mean_response, r.mean(), rtol=1e-9)
    lam = cfg.item_vectors.bias_l2
    for i, b in list(zip(v1.item_ids, v1.bias, strict=True))[:5]:
        mine = r[items == i] - r.mean()
        np.testing.assert_allclose(b, mine.sum() / (len(mine) + lam), rtol=1e-5, atol=1e-6)

    # They saw the validation window: a model is refused them, naming the fix.
    with pytest.raises(ValueError, match="--training-window"):
        train_and_save(cfg, progress=False, item_vectors=v1)

    # The training window only: a second version; the first stays readable.
    t1, _ = temporal_split(cfg.data.valid_dir)
    second = run_item_vectors(spark, cfg, before_ts=t1)
    assert second["version"] == 2 and second["max_ts"] < t1
    assert store.item_vectors(1).meta["max_ts"] >= t1
    vecs = SummaryStore.training_item_vectors(cfg)
    assert vecs is not None and vecs.version == 2
    done = train_and_save(cfg, progress=False, item_vectors=vecs)

    # The saved model reads exactly the table (frozen: ridge_lr = 0) and records its version.
    model, _ = artifacts.load(done.model_dir)
    assert model.ridge is not None
    ids = torch.from_numpy(vecs.item_ids)
    assert torch.unique(hash_ids(ids, model.ridge.buckets)[0]).numel() == len(ids)
    with torch.no_grad():
        np.testing.assert_allclose(model.ridge.vectors(ids).numpy(), vecs.vectors, atol=1e-6)
        np.testing.assert_allclose(model.ridge.item_bias(ids).numpy(), vecs.bias, atol=1e-6)
    assert float(model.ridge.mean_response) == pytest.approx(vecs.mean_response)

    # Summaries by that model carry the history's moments over the table's vectors, and
    # the scorer serves them.
    run_job(spark, cfg, "full", None)
    store.promote()
    user = 5
    _, _, t = _responses(cfg)
    mine = t.filter(pc.field("user_id") == user)
    row = {int(i): k for k, i in enumerate(vecs.item_ids)}
    x = np.array([[*vecs.vectors[row[int(i)]], 1.0] for i in mine.column("item_id").to_numpy()])
    w = mine.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
    y = np.where(np.isnan(w), (mine.column("action").to_numpy() >= 1), w)
    y = (
        y
        - vecs.mean_response
        - np.array([vecs.bias[row[int(i)]] for i in mine.column("item_id").to_numpy()])
    )
    rec = store.get([user])[0]
    assert rec.found and rec.moments is not None and rec.tokens is not None
    want = np.concatenate([x.T @ x, (x.T @ y)[:, None]], 1)
    np.testing.assert_allclose(rec.moments.reshape(want.shape), want, rtol=1e-4, atol=1e-3)

    candidates = [int(i) for i in vecs.item_ids[:6]]
    now = 1.9e9
    scorer = OnlineScorer(store, [done.model_dir], clock=lambda: now)
    got = scorer.score(user, candidates).scores
    tokens = torch.from_numpy(rec.tokens.astype(np.float32))
    assert rec.n_events is not None and rec.last_ts is not None
    hours = (now - rec.last_ts) / 3600.0
    request = ScoringRequest(
        torch.tensor(candidates), tokens, rec.n_events, hours, moments=torch.from_numpy(rec.moments)
    )
    with torch.no_grad():
        expected = torch.sigmoid(model.score_request(request)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
