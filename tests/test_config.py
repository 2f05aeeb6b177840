"""Settings: resolution order, sources, validation messages, and the API key never leaking."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

from cirron.core.config import (
    KEYS,
    Settings,
    config_file_location,
    mask_secret,
    parse_setting,
    resolve_settings,
)
from cirron.core.errors import CirronConfigError, CirronError, CirronWarning

API_KEY = "sk-live-9f8e7d6c5b4a-DISTINCTIVE-a1b2"


def write_config(home: Path, text: str) -> Path:
    path = home / ".cirron" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"  # conftest points HOME here


# ---- defaults and keys


def test_defaults_when_nothing_is_configured() -> None:
    s = resolve_settings()
    assert s.api_key is None
    assert s.api_endpoint == "https://api.cirron.com"
    assert s.workspace_id is None
    assert s.output_dir == "./.cirron/"
    assert (s.snapshots, s.sample_rate, s.flush_interval) == ("stats", 0.01, 1.0)
    assert s.spool_max_bytes == 1_000_000_000
    assert (s.ingest_path, s.exit_timeout, s.secrets_dir) == (
        "/api/traces",
        2.0,
        "/etc/cirron/secrets",
    )
    assert all(s.source(key) == "default" for key in KEYS)


def test_every_documented_key_is_a_setting() -> None:
    assert set(KEYS) == {
        "api_key", "api_endpoint", "workspace_id", "output_dir", "snapshots", "sample_rate",
        "flush_interval", "spool_max_bytes", "ingest_path", "exit_timeout", "secrets_dir",
    }  # fmt: skip


def test_output_path_is_absolute_and_fixed_at_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = resolve_settings({"output_dir": "runs/out"})
    expected = Path.cwd() / "runs" / "out"
    monkeypatch.chdir(tmp_path)
    assert s.output_path == expected
    assert s.output_dir == "runs/out"


# ---- precedence pairs


@pytest.mark.parametrize(
    ("key", "arg", "var", "file_value", "expected_arg", "expected_var", "expected_file"),
    [
        ("sample_rate", 0.5, "0.25", "0.75", 0.5, 0.25, 0.75),
        ("snapshots", "full", "sampled", '"stats"', "full", "sampled", "stats"),
        (
            "api_endpoint",
            "http://arg:1",
            "http://var:2",
            '"http://file:3"',
            "http://arg:1",
            "http://var:2",
            "http://file:3",
        ),
        ("spool_max_bytes", 5, "500MB", '"1GiB"', 5, 500_000_000, 2**30),
    ],
)
def test_precedence_argument_variable_file_default(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    arg: object,
    var: str,
    file_value: str,
    expected_arg: object,
    expected_var: object,
    expected_file: object,
) -> None:
    path = write_config(home, f"[default]\n{key} = {file_value}\n")
    assert getattr(resolve_settings(), key) == expected_file
    assert resolve_settings().source(key) == f"{path} [default]"

    monkeypatch.setenv(f"CIRRON_{key.upper()}", var)
    assert getattr(resolve_settings(), key) == expected_var
    assert resolve_settings().source(key) == f"environment variable CIRRON_{key.upper()}"

    s = resolve_settings({key: arg})
    assert getattr(s, key) == expected_arg
    assert s.source(key) == "argument"


def test_explicit_none_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_SAMPLE_RATE", "0.3")
    s = resolve_settings({"sample_rate": None})
    assert s.sample_rate == 0.3


def test_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_API_KEY", "")
    s = resolve_settings()
    assert s.api_key is None and s.source("api_key") == "default"


def test_environ_argument_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_SNAPSHOTS", "full")
    assert resolve_settings(environ={}).snapshots == "stats"
    assert resolve_settings(environ={"CIRRON_SNAPSHOTS": "sampled"}).snapshots == "sampled"


def test_cirron_profile_picks_a_table(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(
        home,
        '[default]\nsample_rate = 0.1\nsnapshots = "sampled"\n\n[prod]\nsample_rate = 0.9\n',
    )
    monkeypatch.setenv("CIRRON_PROFILE", "prod")
    s = resolve_settings()
    assert s.sample_rate == 0.9
    assert s.source("sample_rate") == f"{path} [prod]"
    # Tables do not inherit from [default].
    assert s.snapshots == "stats" and s.source("snapshots") == "default"


def test_cirron_config_file_names_another_file(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home, "[default]\nflush_interval = 9\n")
    other = tmp_path / "team.toml"
    other.write_text("[default]\nflush_interval = 3\n")
    monkeypatch.setenv("CIRRON_CONFIG_FILE", str(other))
    s = resolve_settings()
    assert s.flush_interval == 3.0
    assert s.source("flush_interval") == f"{other} [default]"
    assert config_file_location() == (str(other), "default")


def test_home_comes_from_the_given_environ(tmp_path: Path) -> None:
    write_config(tmp_path, "[default]\nexit_timeout = 7\n")
    s = resolve_settings(environ={"HOME": str(tmp_path)})
    assert s.exit_timeout == 7.0


def test_missing_config_file_is_fine(home: Path) -> None:
    assert not (home / ".cirron").exists()
    assert resolve_settings().sample_rate == 0.01


def test_file_without_default_table_is_fine(home: Path) -> None:
    write_config(home, "[prod]\nsample_rate = 0.5\n")
    assert resolve_settings().sample_rate == 0.01


# ---- value parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500MB", 500_000_000),
        ("1GB", 10**9),
        ("1GiB", 2**30),
        ("1_000", 1000),
        ("2kib", 2048),
        ("1.5 GB", 1_500_000_000),
        ("42", 42),
    ],
)
def test_spool_max_bytes_accepts_sizes(
    text: str, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRRON_SPOOL_MAX_BYTES", text)
    assert resolve_settings().spool_max_bytes == expected


def test_numbers_from_strings_and_case_insensitive_snapshots() -> None:
    s = resolve_settings({"sample_rate": "0.5", "flush_interval": 2, "snapshots": "FULL"})
    assert (s.sample_rate, s.flush_interval, s.snapshots) == (0.5, 2.0, "full")
    assert isinstance(s.flush_interval, float)


def test_api_endpoint_trailing_slash_is_dropped() -> None:
    assert resolve_settings({"api_endpoint": "https://cirron.internal:8443/"}).api_endpoint == (
        "https://cirron.internal:8443"
    )


def test_exit_timeout_zero_is_allowed_and_paths_accept_pathlike(tmp_path: Path) -> None:
    s = resolve_settings({"exit_timeout": 0, "output_dir": tmp_path, "secrets_dir": tmp_path})
    assert s.exit_timeout == 0.0
    assert s.output_dir == str(tmp_path) and s.secrets_dir == str(tmp_path)


def test_parse_setting_validates_one_value() -> None:
    assert parse_setting("sample_rate", "0.2") == 0.2
    with pytest.raises(ValueError, match="expected a number from 0 to 1"):
        parse_setting("sample_rate", 2)


# ---- error paths: key, value, source and what is allowed


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("sample_rate", 1.5, "a number from 0 to 1"),
        ("sample_rate", -0.1, "a number from 0 to 1"),
        ("sample_rate", "nan", "a number from 0 to 1"),
        ("sample_rate", True, "a number from 0 to 1"),
        ("flush_interval", 0, "greater than 0"),
        ("exit_timeout", -1, "0 or more"),
        ("snapshots", "everything", "one of 'stats', 'sampled', 'full'"),
        ("spool_max_bytes", "12XB", "'500MB', '1GB' or '1GiB'"),
        ("spool_max_bytes", 0, "greater than 0"),
        ("api_endpoint", "ftp://example.com", "an http:// or https:// URL"),
        ("api_endpoint", "api.cirron.com", "an http:// or https:// URL"),
        ("ingest_path", "api/traces", "starting with '/'"),
        ("output_dir", "", "a directory path"),
        ("workspace_id", 42, "a non-empty string"),
    ],
)
def test_bad_argument_names_key_value_source_and_allowed(
    key: str, value: object, allowed: str
) -> None:
    with pytest.raises(CirronConfigError) as info:
        resolve_settings({key: value})
    message = str(info.value)
    assert repr(key) in message
    assert repr(value) in message
    assert "given as an argument" in message
    assert allowed in message
    assert info.value.key == key and info.value.source == "argument"
    assert isinstance(info.value, ValueError) and isinstance(info.value, CirronError)


def test_bad_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_SAMPLE_RATE", "lots")
    with pytest.raises(CirronConfigError) as info:
        resolve_settings()
    message = str(info.value)
    assert "'sample_rate'" in message and "'lots'" in message
    assert "environment variable CIRRON_SAMPLE_RATE" in message
    assert "a number from 0 to 1" in message
    assert "Fix or unset CIRRON_SAMPLE_RATE" in message


def test_bad_file_value_names_file_and_table(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(home, '[staging]\nsnapshots = "all"\n')
    monkeypatch.setenv("CIRRON_PROFILE", "staging")
    with pytest.raises(CirronConfigError) as info:
        resolve_settings()
    message = str(info.value)
    assert f"{path} [staging]" in message
    assert "'snapshots'" in message and "'all'" in message and "'sampled'" in message


def test_unknown_argument_lists_valid_keys_and_suggests() -> None:
    with pytest.raises(CirronConfigError) as info:
        resolve_settings({"sampel_rate": 0.1})
    message = str(info.value)
    assert "'sampel_rate'" in message
    assert "Did you mean 'sample_rate'?" in message
    assert all(key in message for key in KEYS)


def test_malformed_toml_names_file_and_line(home: Path) -> None:
    path = write_config(home, '[default]\nsample_rate = 0.1\nsnapshots = "full\n')
    with pytest.raises(CirronConfigError) as info:
        resolve_settings()
    message = str(info.value)
    assert str(path) in message and "line 3" in message


def test_missing_profile_table_is_an_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(home, "[default]\n[dev]\n")
    monkeypatch.setenv("CIRRON_PROFILE", "prod")
    with pytest.raises(CirronConfigError) as info:
        resolve_settings()
    message = str(info.value)
    assert "CIRRON_PROFILE='prod'" in message and str(path) in message
    assert "[default], [dev]" in message


def test_profile_without_any_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_PROFILE", "prod")
    with pytest.raises(CirronConfigError, match="does not exist"):
        resolve_settings()


def test_config_file_variable_naming_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("CIRRON_CONFIG_FILE", str(missing))
    with pytest.raises(CirronConfigError) as info:
        resolve_settings()
    assert "CIRRON_CONFIG_FILE" in str(info.value) and str(missing) in str(info.value)


def test_unknown_file_keys_warn_but_do_not_fail(home: Path) -> None:
    write_config(home, "[default]\nsample_rat = 0.5\nflush_interval = 2\n")
    with pytest.warns(CirronWarning, match="'sample_rat'.*Did you mean 'sample_rate'"):
        s = resolve_settings()
    assert s.flush_interval == 2.0 and s.sample_rate == 0.01


def test_top_level_keys_outside_a_table_warn(home: Path) -> None:
    write_config(home, "sample_rate = 0.5\n")
    with pytest.warns(CirronWarning, match=r"belong in a table such as \[default\]"):
        assert resolve_settings().sample_rate == 0.01


# ---- Settings object


def test_settings_are_read_only() -> None:
    s = resolve_settings()
    with pytest.raises(AttributeError):
        s.sample_rate = 0.5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.new_attribute = 1  # type: ignore[attr-defined]
    assert s.sample_rate == 0.01


def test_replace_validates_and_marks_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_SNAPSHOTS", "full")
    s = resolve_settings()
    t = s.replace(sample_rate=0.2, snapshots=None)
    assert (t.sample_rate, t.source("sample_rate")) == (0.2, "argument")
    assert (t.snapshots, t.source("snapshots")) == ("full", "environment variable CIRRON_SNAPSHOTS")
    assert s.sample_rate == 0.01
    with pytest.raises(CirronConfigError, match="'sample_rate'"):
        s.replace(sample_rate=3)
    with pytest.raises(CirronConfigError, match="Did you mean 'snapshots'"):
        s.replace(snapshot="full")


def test_replace_from_records_the_given_source() -> None:
    s = resolve_settings().replace_from("/work/cirron.yaml profiling", sample_rate=0.4)
    assert (s.sample_rate, s.source("sample_rate")) == (0.4, "/work/cirron.yaml profiling")
    with pytest.raises(CirronConfigError, match=r"from /work/cirron.yaml profiling"):
        resolve_settings().replace_from("/work/cirron.yaml profiling", sample_rate=9)


def test_direct_construction_takes_explicit_values_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_SAMPLE_RATE", "0.9")
    s = Settings(flush_interval=4)
    assert s.flush_interval == 4.0 and s.sample_rate == 0.01
    assert s.source("flush_interval") == "argument" and s.source("sample_rate") == "default"


def test_equality_pickling_and_iteration() -> None:
    s = resolve_settings({"api_key": API_KEY, "sample_rate": 0.3})
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s and hash(clone) == hash(s)
    assert clone.source("sample_rate") == "argument"
    assert list(s) == list(KEYS)


def test_as_rows_masks_the_key_and_gives_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_API_KEY", API_KEY)
    rows = {key: (value, source) for key, value, source in resolve_settings().as_rows()}
    assert rows["api_key"] == ("sk-…a1b2", "environment variable CIRRON_API_KEY")
    assert rows["workspace_id"] == ("(not set)", "default")
    assert rows["sample_rate"] == ("0.01", "default")


def test_mask_secret() -> None:
    assert mask_secret(API_KEY) == "sk-…a1b2"
    assert mask_secret("short-key") == "****"


# ---- the API key never leaks


def test_api_key_not_in_repr_or_str() -> None:
    s = resolve_settings({"api_key": API_KEY})
    assert s.api_key == API_KEY
    for text in (repr(s), str(s), repr(s.as_rows()), s.display("api_key")):
        assert API_KEY not in text
        assert "DISTINCTIVE" not in text
    assert "sk-…a1b2" in repr(s)


def test_api_key_not_in_errors(
    monkeypatch: pytest.MonkeyPatch, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad_key = API_KEY.replace("-a1b2", " a1b2")  # whitespace inside: invalid
    messages = []
    for attempt in (
        lambda: resolve_settings({"api_key": bad_key}),
        lambda: resolve_settings({"api_key": 12345678901234567890}),
    ):
        with pytest.raises(CirronConfigError) as info:
            attempt()
        messages.append(str(info.value))
    monkeypatch.setenv("CIRRON_API_KEY", bad_key)
    with pytest.raises(CirronConfigError) as info:
        resolve_settings()
    messages.append(str(info.value))
    monkeypatch.delenv("CIRRON_API_KEY")
    write_config(home, f'[default]\napi_key = "{bad_key}"\n')
    with pytest.raises(CirronConfigError) as info:
        resolve_settings()
    messages.append(str(info.value))
    for message in messages:
        assert "'api_key'" in message
        assert "DISTINCTIVE" not in message and "12345678901234567890" not in message
    assert "environment variable CIRRON_API_KEY" in messages[2]
    assert "config.toml [default]" in messages[3]
    assert "DISTINCTIVE" not in caplog.text
