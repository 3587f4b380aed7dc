"""Typed configuration: one TOML file, every field overridable by environment.

Precedence (lowest to highest): built-in defaults, the TOML file, environment
variables. A field ``section.name`` is overridden by ``VISTA_SECTION__NAME``;
nested tables add more ``__`` levels (``VISTA_SPARK__CONF__spark.driver.memory``
keeps the key's case after the section). Values are parsed as JSON when they
parse (numbers, booleans, lists, objects), else taken as strings, then
validated by the pydantic models below, so a bad value fails with the field's
name.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from summarizer.config.model import KINDS, ModelConfig, ModelSpec
from summarizer.config.section import Section
from summarizer.config.sections import (
    ClusterParams,
    DataConfig,
    ItemVectorsConfig,
    MemoryConfig,
    PipelineConfig,
    ServeConfig,
    SparkConfig,
    StoreConfig,
    SynthConfig,
    TrainConfig,
)

__all__ = [
    "KINDS",
    "ClusterParams",
    "ConfigError",
    "DataConfig",
    "MemoryConfig",
    "ItemVectorsConfig",
    "ModelConfig",
    "ModelSpec",
    "PipelineConfig",
    "ServeConfig",
    "Section",
    "SparkConfig",
    "StoreConfig",
    "SynthConfig",
    "TrainConfig",
    "VistaConfig",
    "config_to_toml",
    "load_config",
]

ENV_PREFIX = "VISTA_"
CONFIG_ENV = "VISTA_CONFIG"
DEFAULT_CONFIG_FILE = "vista.toml"


class VistaConfig(Section):
    """Every section of the TOML file; each is the object its part of the code takes."""

    data: DataConfig = Field(default_factory=DataConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    item_vectors: ItemVectorsConfig = Field(default_factory=ItemVectorsConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


class ConfigError(ValueError):
    """The configuration file or an environment override is invalid."""


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _check_single_underscore(key: str) -> None:
    """``VISTA_MODEL_NUM_SEEDS`` (one underscore after the section) looks like an override
    but is none: say so rather than ignore it. Other ``VISTA_*`` names are not ours."""
    rest = key[len(ENV_PREFIX) :]
    for section, sub in VistaConfig.model_fields.items():
        head = section.upper() + "_"
        if not rest.upper().startswith(head):
            continue
        name = rest[len(head) :].lstrip("_").lower()
        fields = getattr(sub.annotation, "model_fields", {})
        if name in fields:
            raise ConfigError(
                f"environment variable {key} is not an override: section and field are "
                f"separated by two underscores, {ENV_PREFIX}{section.upper()}__{name.upper()}"
            )


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``VISTA_A__B__C=v`` into ``{"a": {"b": {"C": v}}}``."""
    tree: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        parts = key[len(ENV_PREFIX) :].split("__")
        if len(parts) < 2 or not all(parts):
            _check_single_underscore(key)
            continue
        # Section and field names are lower-case; deeper keys (Spark conf) keep their case.
        path = [parts[0].lower(), parts[1].lower(), *parts[2:]]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {key} conflicts with another override")
        node[path[-1]] = _parse_env_value(raw)
    return tree


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def find_config_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: the explicit path, else $VISTA_CONFIG, else ./vista.toml if present."""
    if path is not None:
        return Path(path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.exists() else None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> VistaConfig:
    """Defaults, then the TOML file, then ``VISTA_*`` environment overrides."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {file}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from exc
    merged = _deep_merge(raw, _env_overrides(env))
    try:
        return VistaConfig.model_validate(merged)
    except ValidationError as exc:
        source = f"{file} and VISTA_* environment" if file else "VISTA_* environment"
        raise ConfigError(f"invalid configuration ({source}):\n{exc}") from exc


def config_to_toml(cfg: VistaConfig) -> str:
    """Render the effective configuration as TOML (what `vista config show` prints)."""
    lines: list[str] = []
    for section, fields in cfg.model_dump().items():  # derived fields are not dumped
        lines.append(f"[{section}]")
        nested: list[tuple[str, dict[str, Any]]] = []
        for name, value in fields.items():
            if isinstance(value, dict):
                nested.append((name, value))
            elif value is None:  # TOML has no null: an unset option is written as a comment
                lines.append(f"# {name} = (unset)")
            else:
                lines.append(f"{name} = {json.dumps(value)}")
        for name, table in nested:
            lines.append(f"\n[{section}.{name}]")
            lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)
