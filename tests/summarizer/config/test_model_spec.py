"""ModelSpec's own checks (the [model] section's architecture)."""

from __future__ import annotations

import pytest
import torch

from summarizer.config import ModelSpec
from summarizer.model.vista_model import VistaModel
from tests.helpers import SMALL


def test_gsu_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="gsu_k must be >= 1"):
        ModelSpec(kind="sim")
    with pytest.raises(ValueError, match="gsu_k applies to kinds vista and sim"):
        ModelSpec(kind="din", gsu_k=4)
    with pytest.raises(ValueError, match="gsu_k\n  Input should be greater than or equal to 0"):
        ModelSpec(gsu_k=-1)
    with pytest.raises(ValueError, match='gsu_softmax "shared" was removed'):
        ModelSpec(gsu_k=4, gsu_softmax="shared")
    # A model saved before the option was removed records what every model now does.
    assert ModelSpec.model_validate({"gsu_k": 4, "gsu_softmax": "separate"}) == ModelSpec(gsu_k=4)
    with pytest.raises(ValueError, match="feature_map\n  Input should be 'silu' or 'softmax'"):
        ModelSpec(feature_map="seed")
    with pytest.raises(ValueError, match="readout\n  Input should be 'transformer' or 'state'"):
        ModelSpec(readout="pool")
    with pytest.raises(ValueError, match="memory\n  Input should be 'events' or 'clusters'"):
        ModelSpec(gsu_k=4, memory="raw")
    with pytest.raises(ValueError, match="no memory bank"):
        VistaModel(SMALL).mark_memory(torch.zeros(1, SMALL.d_model))


def test_state_readout_spec_is_checked() -> None:

    with pytest.raises(ValueError, match="num_seeds must be 16"):
        SMALL.replace(readout="state")
    # Other kinds ignore the read-out.
    assert SMALL.replace(kind="mean", readout="state").readout == "state"
