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
        ("seed", "projected", "transformer"),
        ("silu", "events", "pool"),
        ("silu", "events", "state"),
    ],
)
def model(request: pytest.FixtureRequest) -> VistaModel:
    """Every law below holds for VISTA's SiLU map and the seed-softmax map, with the state
    summing learned value projections or the encoded events themselves, and for every read-out
    (the state read-out has num_layers x feature_dim tokens)."""

    fmap, values, readout = request.param
    seeds = SMALL.num_layers * SMALL.feature_dim if readout == "state" else SMALL.num_seeds
    torch.manual_seed(0)
    return VistaModel(
        SMALL.replace(feature_map=fmap, values=values, readout=readout, num_seeds=seeds)
    ).eval()
