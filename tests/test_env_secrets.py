"""ci.env(): .env loading, JSON parsing, no caching. ci.secret(): env, file, errors, no logging."""

from __future__ import annotations

import builtins
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cirron.core.env as env_module
from cirron.core.env import env
from cirron.core.errors import CirronConfigError, CirronError, CirronSecretNotFound
from cirron.core.secrets import secret

SECRET_VALUE = "s3cr3t-VALUE-that-must-never-be-logged"


@pytest.fixture(autouse=True)
def _fresh_dotenv_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # env() loads .env once per process; each test starts as a new process would.
    monkeypatch.setattr(env_module, "_dotenv_loaded", False)
    yield


# ---- env()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"lr": 0.1, "layers": [64, 32]}', {"lr": 0.1, "layers": [64, 32]}),
        ("[1, 2, 3]", [1, 2, 3]),
        ('  \n {"padded": true}', {"padded": True}),
        ("{not json", "{not json"),
        ("[unclosed", "[unclosed"),
        ("123", "123"),
        ("true", "true"),
        ("null", "null"),
        ("", ""),
        ("plain text", "plain text"),
    ],
)
def test_env_parses_json_objects_and_arrays_only(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: Any
) -> None:
    monkeypatch.setenv("MY_VALUE", raw)
    assert env("MY_VALUE") == expected


def test_env_default_when_unset() -> None:
    assert env("SURELY_NOT_SET_ANYWHERE") is None
    assert env("SURELY_NOT_SET_ANYWHERE", 5) == 5


def test_env_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLING", "v1")
    assert env("ROLLING") == "v1"
    monkeypatch.setenv("ROLLING", "v2")
    assert env("ROLLING") == "v2"
    monkeypatch.delenv("ROLLING")
    assert env("ROLLING", "gone") == "gone"


def test_env_loads_dotenv_from_working_directory_without_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("dotenv")
    Path(".env").write_text('FROM_DOTENV=hello\nALREADY_SET=from-file\nJSONY={"a": 1}\n')
    monkeypatch.setenv("ALREADY_SET", "from-shell")
    monkeypatch.delenv("FROM_DOTENV", raising=False)
    monkeypatch.delenv("JSONY", raising=False)
    try:
        assert env("FROM_DOTENV") == "hello"
        assert env("ALREADY_SET") == "from-shell"
        assert env("JSONY") == {"a": 1}
    finally:  # load_dotenv wrote to os.environ behind monkeypatch's back
        os.environ.pop("FROM_DOTENV", None)
        os.environ.pop("JSONY", None)


def test_env_loads_dotenv_only_on_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dotenv")
    monkeypatch.delenv("LATE", raising=False)
    assert env("LATE") is None  # first call: no .env yet
    Path(".env").write_text("LATE=too-late\n")
    assert env("LATE") is None


def test_env_without_python_dotenv_skips_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("ONLY_IN_DOTENV=x\n")
    monkeypatch.delenv("ONLY_IN_DOTENV", raising=False)
    monkeypatch.setitem(sys.modules, "dotenv", None)  # makes `import dotenv` raise ImportError
    real_import = builtins.__import__

    def no_dotenv(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "dotenv":
            raise ImportError("No module named 'dotenv'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dotenv)
    monkeypatch.setenv("PRESENT", "[1]")
    assert env("ONLY_IN_DOTENV", "default") == "default"
    assert env("PRESENT") == [1]


# ---- secret()


def test_secret_from_environment_variable() -> None:
    environ = {"CIRRON_SECRET_OPENAI_API_KEY": SECRET_VALUE}
    assert secret("openai-api-key", environ=environ) == SECRET_VALUE


def test_secret_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_SECRET_DB_PASSWORD", "pw")
    assert secret("db-password") == "pw"


@pytest.mark.parametrize(
    "content", [f"{SECRET_VALUE}\n", f"{SECRET_VALUE}\r\n", f"{SECRET_VALUE}\n\n", SECRET_VALUE]
)
def test_secret_from_file_strips_trailing_newlines(tmp_path: Path, content: str) -> None:
    (tmp_path / "db-password").write_bytes(content.encode())
    assert secret("db-password", secrets_dir=tmp_path, environ={}) == SECRET_VALUE


def test_environment_variable_wins_over_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    assert (
        secret("token", secrets_dir=str(tmp_path), environ={"CIRRON_SECRET_TOKEN": "from-env"})
        == "from-env"
    )
    assert (
        secret("token", secrets_dir=str(tmp_path), environ={"CIRRON_SECRET_TOKEN": ""})
        == "from-file"
    )


def test_secret_not_found_names_both_places_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(CirronSecretNotFound) as info:
        secret("openai-api-key", secrets_dir=tmp_path, environ={})
    message = str(info.value)
    assert "'openai-api-key'" in message
    assert "CIRRON_SECRET_OPENAI_API_KEY" in message
    assert str(tmp_path / "openai-api-key") in message
    assert "export CIRRON_SECRET_OPENAI_API_KEY=" in message
    assert "mount a file" in message and "Cirron dashboard" in message
    assert isinstance(info.value, CirronError)


def test_secret_default_directory_is_etc_cirron_secrets() -> None:
    with pytest.raises(CirronSecretNotFound, match="/etc/cirron/secrets/surely-absent-secret"):
        secret("surely-absent-secret", environ={})


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../etc/passwd", "a/b", "a\\b", "x..y", "nul\0byte"]
)
def test_unsafe_secret_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CirronConfigError) as info:
        secret(name, secrets_dir=tmp_path, environ={f"CIRRON_SECRET_{name.upper()}": "x"})
    assert isinstance(info.value, ValueError)
    assert "Invalid secret name" in str(info.value)


def test_secret_value_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="cirron")
    (tmp_path / "from-file").write_text(SECRET_VALUE + "\n")
    assert secret("from-env", environ={"CIRRON_SECRET_FROM_ENV": SECRET_VALUE}) == SECRET_VALUE
    assert secret("from-file", secrets_dir=tmp_path, environ={}) == SECRET_VALUE
    with pytest.raises(CirronSecretNotFound) as info:
        secret("missing", secrets_dir=tmp_path, environ={"CIRRON_SECRET_OTHER": SECRET_VALUE})
    assert caplog.records, "expected debug records naming where the secret came from"
    assert "from-env" in caplog.text
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, str(info.value)):
        assert SECRET_VALUE not in text
