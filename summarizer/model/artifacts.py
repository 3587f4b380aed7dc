"""Model artifacts: safetensors weights + a JSON config; the version is a hash of both.

Nothing here unpickles: weights are read with safetensors, the config with
json, so a model folder from elsewhere cannot run code on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from summarizer.config import ModelSpec
from summarizer.model.vista_model import VistaModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ModelArtifactError(ValueError):
    """A model folder is missing, incomplete or inconsistent."""


def model_version(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over the config's canonical JSON and every weight (name, dtype, shape, bytes).

    Hashes tensors in name order rather than the file's bytes, whose header
    order is not canonical. First 16 hex digits.
    """
    d = Path(model_dir)
    h = hashlib.sha256()
    h.update(json.dumps(_read_config(d)["spec"], sort_keys=True).encode())
    try:
        with safe_open(str(d / WEIGHTS), framework="pt") as f:
            for name in sorted(f.keys()):
                t = f.get_tensor(name).contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    except SafetensorError as exc:
        raise _bad_weights(d, exc) from exc
    return h.hexdigest()[:16]


def _bad_weights(d: Path, exc: Exception) -> ModelArtifactError:
    return ModelArtifactError(
        f"{d / WEIGHTS} is not a readable safetensors file (truncated, or not one `vista "
        f"train` wrote): {exc}"
    )


def save(
    model: VistaModel, model_dir: str | os.PathLike[str], metadata: dict[str, object] | None = None
) -> str:
    """Write weights and config; returns the model version."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    save_model(model, str(d / WEIGHTS))
    (d / CONFIG).write_text(
        json.dumps(
            {"spec": model.spec.model_dump(), "metadata": metadata or {}}, indent=2, sort_keys=True
        )
    )
    version = model_version(d)
    # The version is derived, but writing it lets other tools read it without hashing.
    meta = json.loads((d / CONFIG).read_text())
    meta["version"] = version
    (d / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return version


def describe(model_dir: str | os.PathLike[str]) -> tuple[ModelSpec, str]:
    """A model folder's spec and version without loading its weights: the version recorded
    at save (hashed from the files only where none is recorded). For a job's driver, which
    hands the version to its workers; each worker's :func:`load` hashes the files and
    refuses a folder whose files do not match it."""
    d = Path(model_dir)
    meta = _read_config(d)
    version = meta.get("version")
    return _spec(d, meta), version if isinstance(version, str) else model_version(d)


def _read_config(d: Path) -> dict:
    """The folder's config, once both of its files are known to be there: a JSON object
    with a ``spec`` object, as :func:`save` writes it."""
    for name in (CONFIG, WEIGHTS):
        if not (d / name).exists():
            raise ModelArtifactError(
                f"model folder {d} has no {name} (train one with `vista train`)"
            )
    try:
        meta = json.loads((d / CONFIG).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"{d / CONFIG}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
        raise ModelArtifactError(
            f'{d / CONFIG}: expected a JSON object with a "spec" object (as `vista train` '
            f"writes), got {type(meta).__name__}"
            + (f" with keys {sorted(meta)}" if isinstance(meta, dict) else "")
        )
    return meta


def _spec(d: Path, meta: dict) -> ModelSpec:
    try:
        return ModelSpec.model_validate(meta["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(f"{d / CONFIG}: invalid model config: {exc}") from exc


def load(model_dir: str | os.PathLike[str]) -> tuple[VistaModel, str]:
    """Load a model folder; checks that the recorded version matches the files."""
    d = Path(model_dir)
    meta = _read_config(d)
    model = VistaModel(_spec(d, meta))
    try:
        load_model(model, str(d / WEIGHTS), strict=True)
    except SafetensorError as exc:
        raise _bad_weights(d, exc) from exc
    except RuntimeError as exc:
        raise ModelArtifactError(f"{d / WEIGHTS} does not match its config: {exc}") from exc
    version = model_version(d)
    if meta.get("version") not in (None, version):
        raise ModelArtifactError(
            f"{d}: recorded version {meta['version']} != files' hash {version}; files changed after save"
        )
    model.eval()
    return model, version
