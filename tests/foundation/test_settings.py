from __future__ import annotations

import stat

import pytest

from careloop.errors import ConfigError
from careloop.secrets import load_key
from careloop.settings import load_settings


def test_defaults_and_env(home, monkeypatch) -> None:
    s = load_settings()
    assert s.home_dir == home.resolve()
    assert s.topic("fhir") == "careloop.fhir"
    monkeypatch.setenv("CARELOOP_TOPIC_PREFIX", "h1.")
    assert load_settings().topic("deadletter") == "h1.deadletter"


def test_toml_file_is_read_and_env_wins(home, tmp_path, monkeypatch) -> None:
    (tmp_path / "careloop.toml").write_text('site = "north"\ntopic_partitions = 8\n')
    s = load_settings()
    assert (s.site, s.topic_partitions) == ("north", 8)
    monkeypatch.setenv("CARELOOP_SITE", "south")
    assert load_settings().site == "south"


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("CARELOOP_BROKER_PORT", "abc", "broker_port"),
        ("CARELOOP_BROKER_PORT", "70000", "broker_port"),
        ("CARELOOP_TOPIC_PREFIX", "bad prefix!", "topic_prefix"),
        ("CARELOOP_LOG_LEVEL", "LOUD", "log_level"),
    ],
)
def test_invalid_setting_is_one_line_naming_it(home, monkeypatch, var, value, named) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    msg = str(info.value)
    assert named in msg and var in msg and "\n" not in msg


def test_unknown_toml_key_is_rejected(home, tmp_path) -> None:
    (tmp_path / "careloop.toml").write_text("sitee = 'typo'\n")
    with pytest.raises(ConfigError, match="sitee"):
        load_settings()


def test_keys_generated_0600_stable_and_distinct(home) -> None:
    s = load_settings()
    k1 = load_key(s, "pseudonym")
    assert load_key(s, "pseudonym") == k1
    assert load_key(s, "vault") != k1
    path = s.home_dir / "keys" / "pseudonym.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(k1) == 32


def test_key_from_env_and_bad_key(home, monkeypatch) -> None:
    s = load_settings()
    monkeypatch.setenv("CARELOOP_VAULT_KEY", "00" * 32)
    assert load_key(s, "vault") == bytes(32)
    monkeypatch.setenv("CARELOOP_VAULT_KEY", "short")
    with pytest.raises(ConfigError, match="CARELOOP_VAULT_KEY") as info:
        load_key(s, "vault")
    assert "short" not in str(info.value)  # never echo secret material


def test_world_readable_key_file_is_refused(home) -> None:
    s = load_settings()
    load_key(s, "pseudonym")
    path = s.home_dir / "keys" / "pseudonym.key"
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(s, "pseudonym")
