"""Model artifacts: safetensors + JSON config, the version hash, refusal of tampered folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from summarizer.model import artifacts
from summarizer.model.vista_model import VistaModel
from tests.helpers import random_events


def test_save_load_round_trip(tmp_path: Path, model: VistaModel) -> None:
    v1 = artifacts.save(model, tmp_path / "m")
    loaded, v2 = artifacts.load(tmp_path / "m")
    assert v1 == v2 and len(v1) == 16
    assert loaded.spec == model.spec
    assert loaded.summarizer is not None and model.summarizer is not None
    events = random_events(50)
    assert torch.equal(
        loaded.summarizer.summarize(events)[1], model.summarizer.summarize(events)[1]
    )
    # Same weights and config: same version. Different weights: a different version.
    assert artifacts.save(loaded, tmp_path / "again") == v1
    with torch.no_grad():
        loaded.ranker.logit.bias += 1.0
    assert artifacts.save(loaded, tmp_path / "changed") != v1


def test_load_refuses_tampered_or_incomplete_folders(tmp_path: Path, model: VistaModel) -> None:
    artifacts.save(model, tmp_path / "m")
    with open(tmp_path / "m" / artifacts.WEIGHTS, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(artifacts.ModelArtifactError, match="files changed after save"):
        artifacts.load(tmp_path / "m")
    with pytest.raises(artifacts.ModelArtifactError, match="no config.json"):
        artifacts.load(tmp_path / "empty")


def test_describe_reads_spec_and_version_without_the_weights(
    tmp_path: Path, model: VistaModel
) -> None:
    """A job's driver reads the recorded version; hashing happens where weights load."""
    import json

    v = artifacts.save(model, tmp_path / "m")
    spec, version = artifacts.describe(tmp_path / "m")
    assert spec == model.spec and version == v
    # A folder saved before versions were recorded: hashed from the files.
    meta = json.loads((tmp_path / "m" / artifacts.CONFIG).read_text())
    del meta["version"]
    (tmp_path / "m" / artifacts.CONFIG).write_text(json.dumps(meta))
    assert artifacts.describe(tmp_path / "m")[1] == v
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / artifacts.CONFIG).write_text(json.dumps(meta))
    with pytest.raises(artifacts.ModelArtifactError, match="no model.safetensors"):
        artifacts.describe(tmp_path / "w")
    with pytest.raises(ValueError, match="only 'vista' models summarize"):
        model.spec.replace(kind="din", ridge_dim=0).require_summarizer()


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        ("truncate weights", "model.safetensors"),
        ("foreign weights", "model.safetensors"),
        ("config not json", "config.json"),
        ("config a list", "config.json"),
        ("config without spec", "config.json"),
    ],
)
def test_damaged_folders_are_refused_naming_the_file(
    tmp_path: Path, model: VistaModel, damage: str, names: str, capsys: pytest.CaptureFixture
) -> None:
    """A truncated or foreign weights file, or a config that is not the JSON `save` writes,
    is a ModelArtifactError naming the file (not a raw SafetensorError or JSONDecodeError),
    from load, describe and model_version alike; the CLI prints it, no traceback."""
    from summarizer.cli import main

    d = tmp_path / "m"
    artifacts.save(model, d)
    w, c = d / artifacts.WEIGHTS, d / artifacts.CONFIG
    if damage == "truncate weights":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "foreign weights":
        w.write_bytes(b'{"not": "safetensors"}' * 10)
    elif damage == "config not json":
        c.write_text("{spec: oops")
    elif damage == "config a list":
        c.write_text("[1, 2]")
    else:
        c.write_text('{"metadata": {}}')
    for call in (artifacts.load, artifacts.describe, artifacts.model_version):
        if damage.endswith("weights") and call is artifacts.describe:
            continue  # describe reads the config only
        with pytest.raises(artifacts.ModelArtifactError, match=names):
            call(d)
    cfg = tmp_path / "vista.toml"
    cfg.write_text(f'[store]\nuri = "{tmp_path / "db"}"\n[model]\nmodel_dir = "{d}"\n')
    assert main(["--config", str(cfg), "score", "1", "2"]) == 1
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err
