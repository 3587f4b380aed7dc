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
        # Booleans are not integers (pydantic's lax mode took true as 1).
        ({"VISTA_MODEL__NUM_SEEDS": "true"}, "num_seeds\n.*boolean"),
        ({"VISTA_TRAIN__LR": "false"}, "lr\n.*boolean"),
        # One underscore between section and field: was ignored without a word.
        ({"VISTA_MODEL_NUM_SEEDS": "8"}, "VISTA_MODEL_NUM_SEEDS.*VISTA_MODEL__NUM_SEEDS"),
    ],
)
def test_bad_override_names_the_field(env: dict[str, str], needle: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, env=env)


def test_booleans_in_toml_are_refused_for_numbers_and_kept_for_flags(tmp_path: Path) -> None:
    path = tmp_path / "vista.toml"
    path.write_text("[model]\nnum_seeds = true\n")
    with pytest.raises(ConfigError, match="num_seeds\n.*boolean"):
        load_config(path, env={})
    path.write_text("[memory]\nenabled = true\n[train]\nitem_lr = 0.01\n")
    cfg = load_config(path, env={"VISTA_UNRELATED_TOOL_SETTING": "x"})  # not ours: ignored
    assert cfg.memory.enabled is True and cfg.train.item_lr == 0.01
    with pytest.raises(ConfigError, match="item_lr\n.*boolean"):
        load_config(path, env={"VISTA_TRAIN__ITEM_LR": "true"})


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


def test_model_section_is_the_spec_a_model_is_trained_with(tmp_path: Path) -> None:
    """One class per concept: [model] keys are the architecture's own fields, and the spec
    that training builds from the section carries them (plus data.num_actions)."""
    from summarizer.config import ModelSpec
    from summarizer.training.workflow import model_spec

    path = tmp_path / "vista.toml"
    path.write_text('[model]\nkind = "din"\nlast_k = 7\nnum_seeds = 16\n[data]\nnum_actions = 5\n')
    cfg = load_config(path, env={})
    spec = model_spec(cfg)
    assert type(spec) is ModelSpec
    assert (spec.kind, spec.last_k, spec.num_seeds, spec.num_actions) == ("din", 7, 16, 5)
    assert "model_dir" not in spec.model_dump()  # the folder is not part of the architecture
    assert ModelSpec.model_validate(spec.model_dump()) == spec  # what config.json round-trips
    assert cfg.model.spec() == ModelSpec(kind="din", last_k=7, num_seeds=16)


@pytest.mark.parametrize(
    ("key", "needle"), [("num_actions", "data.num_actions"), ("rating_head", "ratings")]
)
def test_derived_model_fields_are_refused_in_the_section(key: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, env={f"VISTA_MODEL__{key.upper()}": "3"})


def test_config_show_round_trips(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `vista config show` prints loads back as the same configuration."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "in.toml"
    path.write_text("[model]\ngsu_k = 4\ngsu_gate = 0.5\n[memory]\nmax_clusters = 64\n")
    assert main(["--config", str(path), "config", "show"]) == 0
    shown = tmp_path / "shown.toml"
    shown.write_text(capsys.readouterr().out)
    assert load_config(shown, env={}) == load_config(path, env={})


def test_memory_section_is_the_cluster_parameters() -> None:
    """The cluster job hands [memory] to its workers as their ClusterParams."""
    from summarizer.config import ClusterParams

    cfg = load_config(None, env={"VISTA_MEMORY__MAX_CLUSTER_SIZE": "12"})
    assert isinstance(cfg.memory, ClusterParams)
    assert cfg.memory.max_cluster_size == 12
    with pytest.raises(ConfigError, match="branching"):
        load_config(None, env={"VISTA_MEMORY__BRANCHING": "1"})


def test_storage_options_take_booleans_and_numbers_as_strings(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lance (and the data layer) take string options; TOML and env give booleans and
    numbers, which failed validation before."""
    path = tmp_path / "vista.toml"
    path.write_text(
        '[store]\nuri = "s3://b/store"\n[store.storage_options]\nallow_http = true\n'
        'timeout = 30\n[data.storage_options]\naws_endpoint = "http://127.0.0.1:9000"\n'
        "allow_http = false\n"
    )
    monkeypatch.setenv("VISTA_STORE__STORAGE_OPTIONS__connect_timeout", "5")
    cfg = load_config(str(path))
    assert cfg.store.storage_options == {
        "allow_http": "true",
        "timeout": "30",
        "connect_timeout": "5",
    }
    assert cfg.data.storage_options == {
        "aws_endpoint": "http://127.0.0.1:9000",
        "allow_http": "false",
    }
