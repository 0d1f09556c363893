"""Settings: one field per environment variable, every default from clipqueue.defaults."""

from __future__ import annotations

import os

import pytest

from clipqueue import defaults
from clipqueue.config import Settings


def test_environment_variables_become_attributes_of_the_same_name():
    settings = Settings.from_env({
        "MAX_CLIP_SECONDS": "30",
        "JOB_MAX_RETRIES": "7",
        "ALLOW_PRIVATE_SOURCES": "true",
        "ALLOWED_SOURCE_HOSTS": "Cdn.Example.com, ,vods.example.net",
        "API_TOKENS": "Secret-A,secret-b",
        "ALLOWED_PRIVATE_NETWORKS": "10.20.0.1/16, fd00::1",
        "PUBLIC_BASE_URL": "https://clips.example.com/",
        "VISIBILITY_TIMEOUT_SECONDS": "900",
    })
    assert settings.max_clip_seconds == 30.0
    assert settings.job_max_retries == 7
    assert settings.allow_private_sources is True
    assert settings.allowed_source_hosts == ("cdn.example.com", "vods.example.net")
    assert settings.api_tokens == ("Secret-A", "secret-b")  # tokens keep their case
    assert settings.allowed_private_networks == ("10.20.0.0/16", "fd00::1/128")
    assert settings.public_base_url == "https://clips.example.com"
    assert settings.visibility_timeout_seconds == 900


def test_redis_url_is_built_from_the_seeds_host_port_password_and_db():
    settings = Settings.from_env({"REDIS_HOST": "redis.internal", "REDIS_PORT": "6380",
                                  "REDIS_PASSWORD": "p@ss/word", "REDIS_DB": "2"})
    assert settings.redis_url == "redis://:p%40ss%2Fword@redis.internal:6380/2"
    given = Settings.from_env({"REDIS_URL": "redis://r:1/3", "REDIS_HOST": "ignored"})
    assert given.redis_url == "redis://r:1/3"
    assert Settings.from_env({}).redis_url == "redis://localhost:6379/0"


def test_database_url_means_psycopg2_and_an_absolute_sqlite_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"DATABASE_URL": "postgres://u:p@db:5432/clips"}).database_url == (
        "postgresql+psycopg2://u:p@db:5432/clips")
    assert Settings.from_env({"DATABASE_URL": "postgresql://db/clips"}).database_url == (
        "postgresql+psycopg2://db/clips")
    assert Settings.from_env({}).database_url == f"sqlite:///{tmp_path}/clipqueue.db"
    assert Settings.from_env({"DATABASE_URL": "sqlite:////srv/c.db"}).database_url == "sqlite:////srv/c.db"
    assert Settings.from_env({}).storage_local_dir == str(tmp_path / "media")


def test_an_empty_variable_means_the_default_but_turns_a_rate_limit_off():
    settings = Settings.from_env({"MAX_CLIP_SECONDS": "", "PUBLIC_BASE_URL": "", "RATE_LIMIT": "",
                                  "RATE_LIMIT_READS": "off"})
    assert settings.max_clip_seconds == defaults.MAX_CLIP_SECONDS
    assert settings.public_base_url == defaults.PUBLIC_BASE_URL
    assert settings.rate_limit == "" and settings.rate_limit_reads == ""


@pytest.mark.parametrize("name, value", [
    ("MAX_CLIP_SECONDS", "sixty"),
    ("JOB_MAX_RETRIES", "3.5"),
    ("REDIS_PORT", "redis"),
    ("ALLOW_PRIVATE_SOURCES", "maybe"),
    ("RATE_LIMIT", "lots"),
    ("ALLOWED_PRIVATE_NETWORKS", "10.0.0.0/8,intranet"),
])
def test_an_invalid_value_is_an_error_naming_the_variable(name, value):
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: value})
    assert f"setting {name}=" in str(caught.value)


@pytest.mark.parametrize("env, names", [
    ({"JOB_SOFT_TIME_LIMIT_SECONDS": "700", "JOB_HARD_TIME_LIMIT_SECONDS": "660"},
     ("JOB_SOFT_TIME_LIMIT_SECONDS", "JOB_HARD_TIME_LIMIT_SECONDS")),
    ({"MIN_CLIP_SECONDS": "10", "MAX_CLIP_SECONDS": "5"}, ("MIN_CLIP_SECONDS", "MAX_CLIP_SECONDS")),
    ({"MIN_CLIP_SECONDS": "0"}, ("MIN_CLIP_SECONDS",)),
])
def test_inconsistent_settings_are_an_error_naming_them(env, names):
    with pytest.raises(ValueError) as caught:
        Settings.from_env(env)
    assert all(name in str(caught.value) for name in names)


def test_a_given_mapping_is_the_only_thing_read(monkeypatch):
    monkeypatch.setenv("MAX_CLIP_SECONDS", "5")
    monkeypatch.setenv("API_TOKENS", "from-the-process")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/0")
    given = Settings.from_env({"MIN_CLIP_SECONDS": "2"})
    assert given.min_clip_seconds == 2.0
    assert given.max_clip_seconds == defaults.MAX_CLIP_SECONDS
    assert given.api_tokens == ()
    assert given.redis_url == "redis://localhost:6379/0"
    assert type(given) is Settings

    from_process = Settings.from_env()
    assert from_process.max_clip_seconds == 5.0
    assert from_process.api_tokens == ("from-the-process",)
    assert from_process.redis_url == "redis://elsewhere:1/0"


def test_every_setting_has_its_default_in_defaults_py_under_its_variables_name():
    for name, field in Settings.model_fields.items():
        variable = field.validation_alias
        assert variable == name.upper()
        assert hasattr(defaults, variable), f"{variable} has no default in clipqueue/defaults.py"
        assert field.default == getattr(defaults, variable), variable


def test_settings_cannot_be_changed_once_read():
    settings = Settings.from_env({})
    with pytest.raises((AttributeError, ValueError)):  # frozen
        settings.max_clip_seconds = 1000.0
    assert os.path.isabs(settings.storage_local_dir)
