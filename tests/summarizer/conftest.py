"""Fixtures of the summarizer's model and training tests."""

from __future__ import annotations

import pytest
import torch

from summarizer.model.vista_model import VistaModel
from tests.helpers import SMALL


@pytest.fixture(
    scope="module",
    params=[
        ("silu", "projected", "transformer"),
        ("softmax", "events", "state"),
        ("silu", "events", "state"),
        ("silu", "projected", "ridge"),
    ],
)
def model(request: pytest.FixtureRequest) -> VistaModel:
    """Every law below holds for VISTA's SiLU map and softmax slots, with the state
    summing learned value projections or the encoded events themselves, for every read-out
    (the state read-out has num_layers x feature_dim tokens), and with the ridge read-out's
    second moments in the state (its tables drawn at random, so that they matter)."""

    fmap, values, readout = request.param
    ridge = 6 if readout == "ridge" else 0
    readout = "transformer" if ridge else readout
    seeds = SMALL.num_layers * SMALL.feature_dim if readout == "state" else SMALL.num_seeds
    torch.manual_seed(0)
    model = VistaModel(
        SMALL.replace(
            feature_map=fmap, values=values, readout=readout, num_seeds=seeds, ridge_dim=ridge
        )
    ).eval()
    if model.ridge is not None:
        for table in (model.ridge.vec_a, model.ridge.vec_b, model.ridge.bias):
            torch.nn.init.normal_(table.weight, std=0.3)
        model.ridge.set_mean_response(0.3)
    return model
