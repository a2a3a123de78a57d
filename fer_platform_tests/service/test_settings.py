"""The service's settings: a wrong value stops `fer-platform serve` before it starts, with one line that never
repeats the API key."""

import pytest

from fer_platform import cli
from fer_platform.core.errors import ConfigError
from fer_platform.service.settings import settings_from_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("FER_API_KEY", "FER_SERVE_HOST", "FER_SERVE_PORT", "FER_CORS_ORIGINS", "FER_SERVE_MAX_K"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_bind_loopback_without_a_key():
    s = settings_from_env()
    assert (s.host, s.port, s.api_key, s.cors_origins, s.max_k) == ("127.0.0.1", 8000, None, (), 100)
    assert s.max_upload_bytes == 64 * 1024 and s.auth == "none"


def test_the_key_is_never_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("FER_API_KEY", "s3cret-key-0123456789")
    monkeypatch.setenv("FER_CORS_ORIGINS", "https://app.example.com, http://localhost:5173/")
    s = settings_from_env("0.0.0.0", 0)
    assert s.api_key == "s3cret-key-0123456789" and "s3cret" not in repr(s) and s.auth == "api-key"
    assert s.cors_origins == ("https://app.example.com", "http://localhost:5173") and s.port == 0


@pytest.mark.parametrize(
    ("env", "host", "says"),
    [
        ({}, "0.0.0.0", "exposes the search API beyond this machine: set FER_API_KEY"),
        ({"FER_API_KEY": "short-s3cret"}, None, "FER_API_KEY must be 16 to 256 characters"),
        ({"FER_API_KEY": "s3cret with spaces and more"}, None, "FER_API_KEY must be"),
        ({"FER_CORS_ORIGINS": "example.com"}, None, "FER_CORS_ORIGINS: 'example.com' is not an origin"),
        ({"FER_SERVE_PORT": "http"}, None, "FER_SERVE_PORT='http' is not a whole number"),
        ({"FER_SERVE_MAX_K": "0"}, None, "FER_SERVE_MAX_K='0' is not a whole number >= 1"),
    ],
)
def test_a_wrong_setting_is_one_line(monkeypatch, env, host, says):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=says) as caught:
        settings_from_env(host)
    assert "\n" not in str(caught.value) and "s3cret" not in str(caught.value)


def test_serve_says_it_in_one_line_and_exits_2(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: serving on 0.0.0.0 exposes the search API")
