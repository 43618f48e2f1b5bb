import subprocess
import sys

import pytest

from app import ROOT
from app.config import ConfigError, env_bool, env_int, env_secret, load_config, normalise_database_url


@pytest.mark.parametrize("raw, expected", [
    ("1", True), ("true", True), ("YES", True), ("on", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
])
def test_it_parses_booleans(raw, expected):
    assert env_bool({"X": raw}, "X", default=not expected) is expected


def test_it_refuses_a_malformed_boolean():
    with pytest.raises(ConfigError, match="X must be true or false, not 'maybe'"):
        env_bool({"X": "maybe"}, "X", default=False)


@pytest.mark.parametrize("raw, message", [
    ("ten", "PORT must be an integer, not 'ten'"),
    ("0", "PORT must be at least 1, not 0"),
    ("70000", "PORT must be at most 65535, not 70000"),
])
def test_it_refuses_bad_integers(raw, message):
    with pytest.raises(ConfigError, match=message):
        env_int({"PORT": raw}, "PORT", 8000, minimum=1, maximum=65535)


def test_it_reads_a_secret_from_a_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text("s3cret-value\n")
    assert env_secret({"SECRET_KEY_FILE": str(path)}, "SECRET_KEY") == "s3cret-value"


def test_it_refuses_a_secret_set_twice_or_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        env_secret({"SECRET_KEY": "a", "SECRET_KEY_FILE": "/x"}, "SECRET_KEY")
    with pytest.raises(ConfigError, match="cannot be read"):
        env_secret({"SECRET_KEY_FILE": str(tmp_path / "missing")}, "SECRET_KEY")


@pytest.mark.parametrize("url, expected", [
    ("postgresql://u:p@db/x", "postgresql+psycopg://u:p@db/x"),
    ("postgres://u@db/x", "postgresql+psycopg://u@db/x"),
    ("postgresql+psycopg://u@db/x", "postgresql+psycopg://u@db/x"),
])
def test_it_names_the_driver_in_database_urls(url, expected):
    assert normalise_database_url(url) == expected


def test_it_refuses_a_database_that_is_not_postgresql():
    with pytest.raises(ConfigError, match="postgresql://"):
        normalise_database_url("sqlite:///x.db")


PRODUCTION = {"GPUSHARE_ENV": "production", "SECRET_KEY": "x" * 40,
              "DATABASE_URL": "postgresql://db/gpushare", "REDIS_URL": "redis://cache:6379/0"}


@pytest.mark.parametrize("missing, message", [
    ("SECRET_KEY", "SECRET_KEY (or SECRET_KEY_FILE) must be set in production"),
    ("DATABASE_URL", "DATABASE_URL must point at a real PostgreSQL server in production"),
    ("REDIS_URL", "REDIS_URL must point at a real Redis server in production"),
])
def test_it_refuses_production_without_real_settings(tmp_path, missing, message):
    env = {k: v for k, v in PRODUCTION.items() if k != missing} | {"GPUSHARE_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(env)


def test_it_refuses_a_short_production_secret(tmp_path):
    with pytest.raises(ConfigError, match="at least 32 characters"):
        load_config(PRODUCTION | {"SECRET_KEY": "short", "GPUSHARE_DATA_DIR": str(tmp_path)})


def test_it_accepts_real_production_settings(tmp_path):
    config = load_config(PRODUCTION | {"GPUSHARE_DATA_DIR": str(tmp_path)})
    assert config["SESSION_COOKIE_SECURE"] is True
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://db/gpushare"
    assert not (tmp_path / "secret_key").exists()  # production never invents a secret


def test_it_keeps_a_development_secret_across_restarts(tmp_path):
    first = load_config({"GPUSHARE_DATA_DIR": str(tmp_path)})["SECRET_KEY"]
    assert len(first) >= 32
    assert load_config({"GPUSHARE_DATA_DIR": str(tmp_path)})["SECRET_KEY"] == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("command", [
    [sys.executable, "-c", "import wsgi"],
    [sys.executable, "-m", "gunicorn", "--no-control-socket", "--bind", "127.0.0.1:0", "wsgi:app"],
])
def test_it_refuses_to_start_in_production_without_a_secret_in_one_line(tmp_path, command):
    env = {"PATH": "/usr/bin:/bin", "GPUSHARE_ENV": "production", "GPUSHARE_DATA_DIR": str(tmp_path),
           "DATABASE_URL": "postgresql://db/gpushare", "REDIS_URL": "redis://cache:6379/0"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    reason = [line for line in result.stderr.splitlines() if line.startswith("gpushare:")]
    assert reason == ["gpushare: refusing to start: SECRET_KEY (or SECRET_KEY_FILE) must be set in production"]
    if command[1] == "-c":
        assert result.stderr.strip() == reason[0]  # nothing but the reason: no traceback


def test_loopback_mode_uses_a_loopback_network_by_default(tmp_path):
    config = load_config({"GPUSHARE_DATA_DIR": str(tmp_path), "OVERLAY_MODE": "loopback"})
    assert config["OVERLAY_NETWORK"] == "127.77.0.0/16"
    assert load_config({"GPUSHARE_DATA_DIR": str(tmp_path)})["OVERLAY_NETWORK"] == "10.77.0.0/16"


@pytest.mark.parametrize("env, message", [
    ({"OVERLAY_MODE": "loopback", "OVERLAY_NETWORK": "10.77.0.0/16"},
     "OVERLAY_MODE=loopback needs a loopback OVERLAY_NETWORK such as 127.77.0.0/16, not 10.77.0.0/16"),
    ({"OVERLAY_NETWORK": "10.77.0.1/16"}, "OVERLAY_NETWORK must be a network such as 10.77.0.0/16"),
    ({"OVERLAY_NETWORK": "not a network"}, "OVERLAY_NETWORK must be a network"),
    ({"OVERLAY_NETWORK": "10.77.0.0/31"}, "OVERLAY_NETWORK 10.77.0.0/31 is too small"),
    ({"REQUEST_TIMEOUT_SECONDS": "60", "UPSTREAM_FIRST_TOKEN_TIMEOUT": "120"},
     r"REQUEST_TIMEOUT_SECONDS \(60\) must be at least UPSTREAM_CONNECT_TIMEOUT \+ UPSTREAM_FIRST_TOKEN_TIMEOUT"),
])
def test_it_refuses_an_overlay_or_timeouts_that_do_not_fit(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"GPUSHARE_DATA_DIR": str(tmp_path), **env})


def test_make_runs_platform_refuses_a_non_loopback_network_in_loopback_mode_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GPUSHARE_DATA_DIR": str(tmp_path), "OVERLAY_MODE": "loopback",
           "OVERLAY_NETWORK": "10.77.0.0/16"}
    result = subprocess.run([sys.executable, "-m", "app.dev.serve"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: refusing to start: OVERLAY_MODE=loopback needs a loopback OVERLAY_NETWORK such as 127.77.0.0/16, "
        "not 10.77.0.0/16: hosts' addresses must stay on this machine")
    assert "Traceback" not in result.stderr
