from __future__ import annotations

from pathlib import Path

import pytest

from summarizer.cli import main
from summarizer.config import ConfigError, VistaConfig, load_config


def test_defaults_without_file_or_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config()
    assert cfg == VistaConfig()
    assert cfg.spark.master == "local[*]"
    assert cfg.store.uri == "data/store"


def test_file_then_env_precedence(tmp_path: Path, clean_env: None) -> None:
    path = tmp_path / "vista.toml"
    path.write_text(
        '[store]\nuri = "s3://bucket/summaries"\nmax_age_s = 60\n'
        "[model]\nnum_seeds = 32\n"
        '[spark]\nmaster = "spark://head:7077"\n[spark.conf]\n"spark.executor.memory" = "8g"\n'
    )
    env = {
        "VISTA_MODEL__NUM_SEEDS": "128",
        "VISTA_STORE__STORAGE_OPTIONS": '{"region": "eu-west-1"}',
        "VISTA_SPARK__CONF__spark.sql.shuffle.partitions": "64",
        "UNRELATED": "x",
    }
    cfg = load_config(path, env=env)
    assert cfg.store.uri == "s3://bucket/summaries"  # file
    assert cfg.store.max_age_s == 60  # file
    assert cfg.model.num_seeds == 128  # env beats file
    assert cfg.store.storage_options == {"region": "eu-west-1"}  # JSON value from env
    assert cfg.spark.master == "spark://head:7077"
    # Nested conf keys keep their case; file and env entries merge.
    assert cfg.spark.conf == {"spark.executor.memory": "8g", "spark.sql.shuffle.partitions": "64"}


def test_config_file_from_env_variable(tmp_path: Path, clean_env: None) -> None:
    path = tmp_path / "other.toml"
    path.write_text('[data]\nevents_dir = "/data/events"\n')
    cfg = load_config(env={"VISTA_CONFIG": str(path)})
    assert cfg.data.events_dir == "/data/events"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"VISTA_MODEL__NUM_SEEDS": "0"}, "num_seeds"),
        ({"VISTA_MODEL__NUM_SEEDS": "many"}, "num_seeds"),
        ({"VISTA_STORE__NO_SUCH_FIELD": "1"}, "no_such_field"),
    ],
)
def test_bad_override_names_the_field(env: dict[str, str], needle: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, env=env)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[store\nuri=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_config_show_prints_effective_values(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    clean_env: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISTA_STORE__URI", "gs://b/p")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert '[store]\nuri = "gs://b/p"' in out
    assert "[spark.conf]" in out
    import tomllib

    assert tomllib.loads(out)["store"]["uri"] == "gs://b/p"  # the output is itself valid TOML
