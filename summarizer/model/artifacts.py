"""Model artifacts: safetensors weights + a JSON config; the version is a hash of both.

Nothing here unpickles: weights are read with safetensors, the config with
json, so a model folder from elsewhere cannot run code on load.

A model folder is a local path or an object-store URI (``s3://bucket/models/m1``; options
as for data locations, :mod:`summarizer.data.files`). A remote folder is copied once into
a local cache (``$VISTA_CACHE``, default ``~/.cache/vista-memory``) keyed by its files'
sizes and modification times, so each Spark executor downloads a model once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from summarizer.config import ModelSpec
from summarizer.data import files
from summarizer.model.vista_model import VistaModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ModelArtifactError(ValueError):
    """A model folder is missing, incomplete or inconsistent."""


Options = Mapping[str, str] | None


def cache_root() -> Path:
    return Path(os.environ.get("VISTA_CACHE", "~/.cache/vista-memory")).expanduser()


def local_folder(model_dir: str | os.PathLike[str], options: Options = None) -> Path:
    """The model folder on this machine: itself, or a cached copy of an object-store folder
    (downloaded on first use; a new save under the same URI is a new copy)."""
    uri = str(model_dir)
    if not files.is_remote(uri):
        return Path(uri)
    key = hashlib.sha256(uri.encode())
    for name in (CONFIG, WEIGHTS):
        found = files.stat(files.join(uri, name), options)
        if found is None:
            raise ModelArtifactError(
                f"model folder {uri} has no {name} (train one with `vista train`)"
            )
        key.update(f"|{name}|{found.size}|{found.mtime_ns}".encode())
    dest = cache_root() / "models" / key.hexdigest()[:24]
    if (dest / WEIGHTS).exists() and (dest / CONFIG).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        for name in (WEIGHTS, CONFIG):
            (tmp / name).write_bytes(files.read_bytes(files.join(uri, name), options))
        try:
            os.replace(tmp, dest)  # one of several workers on a node wins; the copies agree
        except OSError:
            if not (dest / CONFIG).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def model_version(model_dir: str | os.PathLike[str], options: Options = None) -> str:
    """sha256 over the config's canonical JSON and every weight (name, dtype, shape, bytes).

    Hashes tensors in name order rather than the file's bytes, whose header
    order is not canonical. First 16 hex digits.
    """
    d = local_folder(model_dir, options)
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
    model: VistaModel,
    model_dir: str | os.PathLike[str],
    metadata: dict[str, object] | None = None,
    options: Options = None,
) -> str:
    """Write weights and config (to a local folder or an object-store URI); returns the
    model version."""
    uri = str(model_dir)
    if files.is_remote(uri):
        with tempfile.TemporaryDirectory() as tmp:
            version = save(model, tmp, metadata)
            for name in (WEIGHTS, CONFIG):  # the config last: it names a complete folder
                files.write_bytes(files.join(uri, name), (Path(tmp) / name).read_bytes(), options)
        return version
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


def describe(model_dir: str | os.PathLike[str], options: Options = None) -> tuple[ModelSpec, str]:
    """A model folder's spec and version without loading its weights: the version recorded
    at save (hashed from the files only where none is recorded). For a job's driver, which
    hands the version to its workers; each worker's :func:`load` hashes the files and
    refuses a folder whose files do not match it."""
    if files.is_remote(str(model_dir)):
        meta = _parse_config(
            files.join(str(model_dir), CONFIG),
            _read_remote_config(str(model_dir), options),
        )
        version = meta.get("version")
        if isinstance(version, str):
            return _spec(Path(str(model_dir)), meta), version
    d = local_folder(model_dir, options)
    meta = _read_config(d)
    version = meta.get("version")
    return _spec(d, meta), version if isinstance(version, str) else model_version(d)


def _read_remote_config(uri: str, options: Options) -> bytes:
    for name in (CONFIG, WEIGHTS):
        if not files.exists(files.join(uri, name), options):
            raise ModelArtifactError(
                f"model folder {uri} has no {name} (train one with `vista train`)"
            )
    return files.read_bytes(files.join(uri, CONFIG), options)


def _read_config(d: Path) -> dict:
    """The folder's config, once both of its files are known to be there: a JSON object
    with a ``spec`` object, as :func:`save` writes it."""
    for name in (CONFIG, WEIGHTS):
        if not (d / name).exists():
            raise ModelArtifactError(
                f"model folder {d} has no {name} (train one with `vista train`)"
            )
    return _parse_config(str(d / CONFIG), (d / CONFIG).read_bytes())


def _parse_config(where: str, raw: bytes) -> dict:
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
        raise ModelArtifactError(
            f'{where}: expected a JSON object with a "spec" object (as `vista train` '
            f"writes), got {type(meta).__name__}"
            + (f" with keys {sorted(meta)}" if isinstance(meta, dict) else "")
        )
    return meta


def _spec(d: Path, meta: dict) -> ModelSpec:
    try:
        return ModelSpec.model_validate(meta["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(f"{d / CONFIG}: invalid model config: {exc}") from exc


def load(model_dir: str | os.PathLike[str], options: Options = None) -> tuple[VistaModel, str]:
    """Load a model folder; checks that the recorded version matches the files."""
    d = local_folder(model_dir, options)
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
