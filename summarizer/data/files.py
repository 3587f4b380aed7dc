"""Every data location is a URI: a local path or object storage, through one layer.

Events, validated days, quarantine, run folders (manifests and reports) and model folders
are named by a URI: a local path (``data/events``, ``/abs/path``, ``file:///abs/path``) or
an object store (``s3://bucket/prefix``, ``gs://bucket/prefix``). The driver and Spark's
Python workers read and write them through ``pyarrow.fs`` with the same options, so no
Hadoop connector (hadoop-aws) is needed. Local paths are made absolute on the driver
(:func:`absolute`) before anything is handed to a worker: executors resolve a relative
path against their own working folder.

Object-store options use LanceDB's keys (``aws_access_key_id``, ``aws_secret_access_key``,
``aws_session_token``, ``aws_region``/``region``, ``aws_endpoint``/``endpoint``,
``allow_http``), so one table of settings reads the same for the store and the data;
without them the SDK's usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
...) applies. An option this layer does not know is an error that names it.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

REMOTE_SCHEMES = frozenset({"s3", "gs", "gcs"})

# LanceDB / object_store option names -> pyarrow.fs.S3FileSystem arguments.
_S3_KEYS = {
    "aws_access_key_id": "access_key",
    "access_key_id": "access_key",
    "aws_secret_access_key": "secret_key",
    "secret_access_key": "secret_key",
    "aws_session_token": "session_token",
    "session_token": "session_token",
    "aws_region": "region",
    "region": "region",
    "aws_endpoint": "endpoint_override",
    "endpoint": "endpoint_override",
    "aws_endpoint_url": "endpoint_override",
    "endpoint_url": "endpoint_override",
}
_S3_FLAGS = {"allow_http", "aws_allow_http", "aws_virtual_hosted_style_request"}


class StorageOptionError(ValueError):
    """An object-store option this layer cannot use."""


def scheme(uri: str) -> str:
    parsed = urlparse(str(uri))
    return parsed.scheme if len(parsed.scheme) > 1 else ""  # "C:" is a drive, not a scheme


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names object storage (``s3://``, ``gs://``), not this machine."""
    return scheme(uri) in REMOTE_SCHEMES


def absolute(uri: str | os.PathLike[str]) -> str:
    """The URI with a local path made absolute (``file://`` stripped); object storage as is.

    What the driver hands to executors: they resolve relative paths against their own
    working folder."""
    text = str(uri)
    if is_remote(text):
        return text.rstrip("/")
    s = scheme(text)
    if s == "file":
        text = urlparse(text).path
    elif s:
        raise ValueError(
            f"{text}: unsupported location scheme {s!r} (use a local path, s3:// or gs://)"
        )
    return os.path.abspath(os.path.expanduser(text))


def join(uri: str, *parts: str) -> str:
    """``uri/part/...`` for local paths and object storage alike."""
    out = str(uri).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def name(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[0]


def _s3_arguments(options: Mapping[str, str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    unknown = []
    for key, value in options.items():
        k = key.lower()
        if k in _S3_KEYS:
            args[_S3_KEYS[k]] = value
        elif k not in _S3_FLAGS:
            unknown.append(key)
    if unknown:
        raise StorageOptionError(
            f"storage options {', '.join(sorted(unknown))} are not understood for data "
            f"locations (known: {', '.join(sorted({*_S3_KEYS, *_S3_FLAGS}))})"
        )
    endpoint = args.get("endpoint_override")
    if endpoint is not None:
        parsed = urlparse(endpoint)
        if parsed.scheme in ("http", "https"):
            args["scheme"] = parsed.scheme
            args["endpoint_override"] = parsed.netloc
    allow_http = str(options.get("allow_http", options.get("aws_allow_http", ""))).lower()
    if allow_http == "true" and "scheme" not in args:
        args["scheme"] = "http"
    return args


def understood_options(options: Mapping[str, str] | None) -> dict[str, str]:
    """The options this layer uses (others, such as lance's client settings, left out)."""
    return {k: v for k, v in (options or {}).items() if k.lower() in {*_S3_KEYS, *_S3_FLAGS}}


@functools.lru_cache(maxsize=32)
def _filesystem(kind: str, options: tuple[tuple[str, str], ...]) -> pafs.FileSystem:
    opts = dict(options)
    if kind == "s3":
        return pafs.S3FileSystem(**_s3_arguments(opts))
    if kind in ("gs", "gcs"):
        if opts:
            raise StorageOptionError(
                "gs:// data locations take their credentials from the environment "
                f"(GOOGLE_APPLICATION_CREDENTIALS); got options {', '.join(sorted(opts))}"
            )
        return pafs.GcsFileSystem()
    return pafs.LocalFileSystem()


def filesystem(uri: str, options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """The ``pyarrow.fs`` filesystem of ``uri`` and the path inside it."""
    kind = scheme(uri) if is_remote(uri) else "local"
    fs = _filesystem(kind, tuple(sorted((options or {}).items())))
    if kind == "local":
        return fs, absolute(uri)
    parsed = urlparse(str(uri))
    return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")


def exists(uri: str, options: Mapping[str, str] | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str, options: Mapping[str, str] | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return fs.get_file_info(path).type == pafs.FileType.Directory


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int | None


def stat(uri: str, options: Mapping[str, str] | None = None) -> FileStat | None:
    """Size and modification time of a file, or None when there is no such file."""
    fs, path = filesystem(uri, options)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return FileStat(int(info.size), info.mtime_ns)


def list_dir(uri: str, options: Mapping[str, str] | None = None) -> list[tuple[str, bool]]:
    """(name, is a folder) of each entry directly under ``uri`` (none if it is missing)."""
    fs, path = filesystem(uri, options)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(
        (Path(info.path).name, info.type == pafs.FileType.Directory)
        for info in fs.get_file_info(selector)
    )


def files_with_suffix(uri: str, suffix: str, options: Mapping[str, str] | None = None) -> list[str]:
    """URIs of the files directly under ``uri`` ending in ``suffix``, sorted by name;
    hidden files (``.``/``_`` first, such as staging and marker files) left out."""
    return [
        join(uri, n)
        for n, folder in list_dir(uri, options)
        if not folder and n.endswith(suffix) and not n.startswith((".", "_"))
    ]


def read_bytes(uri: str, options: Mapping[str, str] | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    try:
        with fs.open_input_stream(path) as f:
            return bytes(f.read())
    except FileNotFoundError:
        raise
    except OSError as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            raise FileNotFoundError(f"{uri}: no such file") from exc
        raise


def read_text(uri: str, options: Mapping[str, str] | None = None) -> str:
    return read_bytes(uri, options).decode()


def write_bytes(uri: str, data: bytes, options: Mapping[str, str] | None = None) -> None:
    """Write a whole file so that readers see the old content or the new, never a part:
    a local file is written beside it and renamed over it; an object-store PUT is atomic."""
    fs, path = filesystem(uri, options)
    if is_remote(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(uri: str, text: str, options: Mapping[str, str] | None = None) -> None:
    write_bytes(uri, text.encode(), options)


def makedirs(uri: str, options: Mapping[str, str] | None = None) -> None:
    """Create the folder (object storage has none to create: a no-op there)."""
    if not is_remote(uri):
        fs, path = filesystem(uri, options)
        fs.create_dir(path, recursive=True)


def delete(uri: str, options: Mapping[str, str] | None = None) -> None:
    """Remove a file or a whole folder; nothing if it is not there."""
    fs, path = filesystem(uri, options)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def move(src: str, dst: str, options: Mapping[str, str] | None = None) -> None:
    """Move a file: a rename on a local disk, a copy then a delete on object storage."""
    fs, a = filesystem(src, options)
    _, b = filesystem(dst, options)
    if is_remote(src):
        fs.copy_file(a, b)
        fs.delete_file(a)
    else:
        Path(b).parent.mkdir(parents=True, exist_ok=True)
        fs.move(a, b)
