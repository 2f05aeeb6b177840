"""Settings and their resolution order.

Every setting resolves per key, first match wins:

1. an explicit argument (``Cirron(sample_rate=0.1)``; ``None`` means "not given"),
2. the environment variable ``CIRRON_<KEY>`` (an empty variable counts as unset),
3. ``~/.cirron/config.toml``: the ``[default]`` table, or the table ``CIRRON_PROFILE`` names;
   ``CIRRON_CONFIG_FILE`` points at another file,
4. the default.

Each resolved value remembers where it came from, so errors and ``cirron doctor`` can say so.
The API key is masked everywhere cirron prints it.

>>> s = resolve_settings({"sample_rate": 0.5}, environ={"CIRRON_SNAPSHOTS": "full"})
>>> s.sample_rate, s.source("sample_rate"), s.snapshots, s.source("snapshots")
(0.5, 'argument', 'full', 'environment variable CIRRON_SNAPSHOTS')

This module imports nothing heavy: ``tomllib`` only when a config file exists.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

from cirron.core.errors import CirronConfigError, CirronWarning

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "KEYS",
    "Settings",
    "config_file_location",
    "mask_secret",
    "parse_setting",
    "resolve_settings",
]

DEFAULT_CONFIG_FILE = "~/.cirron/config.toml"
CONFIG_FILE_VAR = "CIRRON_CONFIG_FILE"
PROFILE_VAR = "CIRRON_PROFILE"
DEFAULT_PROFILE = "default"
ENV_PREFIX = "CIRRON_"

SOURCE_ARGUMENT = "argument"
SOURCE_DEFAULT = "default"

_T = TypeVar("_T")


class _Key(Generic[_T]):
    """One setting: its default, how a raw value is parsed, and what is allowed (in words).

    A descriptor on :class:`Settings`, so the table of keys and the typed attributes are one
    and the same; assignment through it raises.
    """

    def __init__(
        self, default: _T, parse: Callable[[object], _T], allowed: str, *, secret: bool = False
    ) -> None:
        self.default = default
        self.parse = parse
        self.allowed = allowed
        self.secret = secret
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Key[_T]: ...
    @overload
    def __get__(self, obj: Settings, owner: type | None = None) -> _T: ...
    def __get__(self, obj: Settings | None, owner: type | None = None) -> _T | _Key[_T]:
        if obj is None:
            return self
        value: _T = obj._values[self.name]
        return value

    def __set__(self, obj: Settings, value: object) -> NoReturn:
        raise AttributeError(
            f"Settings are read-only; use settings.replace({self.name}=...) for a changed copy"
        )


# ---- parsers: take a raw value (argument, environment string or TOML value), return the typed
# value, raise ValueError or TypeError when it is not allowed. Key.allowed words the rule.


def _text(value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError("not a string")
    value = value.strip()
    if not value:
        raise ValueError("empty")
    return value


def _optional_text(value: object) -> str | None:
    return _text(value)


def _api_key(value: object) -> str | None:
    text = _text(value)
    if any(ch.isspace() for ch in text):
        raise ValueError("whitespace inside the key")
    return text


def _http_url(value: object) -> str:
    from urllib.parse import urlsplit

    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in text:
        raise ValueError("not an http(s) URL")
    return text.rstrip("/")


def _url_path(value: object) -> str:
    text = _text(value)
    if not text.startswith("/") or " " in text:
        raise ValueError("not an absolute URL path")
    return text


def _snapshots(value: object) -> str:
    text = _text(value).lower()
    if text not in ("stats", "sampled", "full"):
        raise ValueError("not a snapshot mode")
    return text


def _number(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError("a bool is not a number")
    number = float(value) if isinstance(value, int | float) else float(_text(value))
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _fraction(value: object) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("out of range")
    return number


def _positive_seconds(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError("not positive")
    return number


def _seconds(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise ValueError("negative")
    return number


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def _size(value: object) -> int:
    """Bytes from an int or a string such as ``"500MB"``, ``"1GB"``, ``"1GiB"``, ``"1_000"``."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a size")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    size = value if isinstance(value, int) else _parse_size_text(_text(value))
    if size <= 0:
        raise ValueError("not positive")
    return size


def _parse_size_text(text: str) -> int:
    import re

    match = re.fullmatch(r"(\d[\d_]*(?:\.\d+)?|\.\d+)\s*([kmgt]?)(i?)(b?)", text.lower())
    if not match:
        raise ValueError("not a size")
    digits, prefix, binary, _ = match.groups()
    if binary and not prefix:
        raise ValueError("'i' without a unit prefix")
    factor = 1024 ** "bkmgt".index(prefix) if binary else _SIZE_UNITS[prefix]
    return round(float(digits.replace("_", "")) * factor)


def _path_text(value: object) -> str:
    return _text(value)


# ---- Settings


class Settings:
    """Resolved, read-only settings: one attribute per key, each knowing where it came from.

    Build them with :func:`resolve_settings`; ``Settings(**values)`` takes explicit values only
    (no environment, no file). Use :meth:`replace` for a changed copy.

    >>> s = Settings(sample_rate=0.5)
    >>> s.sample_rate, s.source("sample_rate"), s.source("snapshots")
    (0.5, 'argument', 'default')
    >>> s.replace(snapshots="full").snapshots
    'full'
    """

    # One line per key: default, parser, what is allowed (words for error messages).
    api_key = _Key(None, _api_key, "a non-empty string without spaces", secret=True)
    api_endpoint = _Key("https://api.cirron.com", _http_url, "an http:// or https:// URL, such as https://api.cirron.com")  # fmt: skip
    workspace_id = _Key(None, _optional_text, "a non-empty string")
    output_dir = _Key("./.cirron/", _path_text, "a directory path, such as ./.cirron/")
    snapshots = _Key("stats", _snapshots, "one of 'stats', 'sampled', 'full'")
    sample_rate = _Key(0.01, _fraction, "a number from 0 to 1, such as 0.01")
    flush_interval = _Key(1.0, _positive_seconds, "a number of seconds greater than 0, such as 1.0")
    spool_max_bytes = _Key(1_000_000_000, _size, "a number of bytes greater than 0, or a size such as '500MB', '1GB' or '1GiB'")  # fmt: skip
    ingest_path = _Key("/api/traces", _url_path, "a URL path starting with '/', such as /api/traces")  # fmt: skip
    exit_timeout = _Key(2.0, _seconds, "a number of seconds, 0 or more, such as 2.0")
    secrets_dir = _Key("/etc/cirron/secrets", _path_text, "a directory path, such as /etc/cirron/secrets")  # fmt: skip

    __slots__ = ("_output_path", "_sources", "_values")
    _values: dict[str, Any]
    _sources: dict[str, str]
    _output_path: str

    def __init__(self, **values: Any) -> None:
        given = {name: value for name, value in _check_names(values).items() if value is not None}
        self._fill(_parse_given(given, dict.fromkeys(given, SOURCE_ARGUMENT)), {})

    @classmethod
    def _resolved(cls, raw: Mapping[str, object], sources: Mapping[str, str]) -> Settings:
        settings = cls.__new__(cls)
        settings._fill(_parse_given(raw, sources), {})
        return settings

    def _fill(
        self, parsed: Mapping[str, tuple[object, str]], base: Mapping[str, tuple[object, str]]
    ) -> None:
        """Set every key: from ``parsed`` (value, source), else ``base``, else the default."""
        merged = {
            name: parsed.get(name) or base.get(name) or (key.default, SOURCE_DEFAULT)
            for name, key in _KEYS.items()
        }
        set_ = object.__setattr__
        set_(self, "_values", {name: pair[0] for name, pair in merged.items()})
        set_(self, "_sources", {name: pair[1] for name, pair in merged.items()})
        output_dir = os.path.expanduser(str(self._values["output_dir"]))
        set_(self, "_output_path", os.path.abspath(output_dir))

    def source(self, key: str) -> str:
        """Where ``key``'s value came from, in words: ``"argument"``, ``"environment variable
        CIRRON_SAMPLE_RATE"``, ``"/home/u/.cirron/config.toml [default]"`` or ``"default"``."""
        _check_names({key: None})
        return self._sources[key]

    @property
    def output_path(self) -> Path:
        """``output_dir`` as an absolute path, fixed against the working directory at the time
        these settings were built (a later ``chdir`` does not move the spool)."""
        from pathlib import Path

        return Path(self._output_path)

    def replace(self, **overrides: Any) -> Settings:
        """A validated copy with ``overrides`` applied (their source becomes ``"argument"``).
        ``None`` means "not given" and keeps the current value.

        >>> Settings().replace(sample_rate="0.2", snapshots=None).sample_rate
        0.2
        """
        return self.replace_from(SOURCE_ARGUMENT, **overrides)

    def replace_from(self, source: str, /, **overrides: Any) -> Settings:
        """Like :meth:`replace`, recording ``source`` (words, e.g. ``"cirron.yaml profiling"``)
        as where the overridden values came from; errors name it too.

        >>> Settings().replace_from("cirron.yaml profiling", snapshots="full").source("snapshots")
        'cirron.yaml profiling'
        """
        given = {k: v for k, v in _check_names(overrides).items() if v is not None}
        current = {name: (self._values[name], self._sources[name]) for name in _KEYS}
        copy = Settings.__new__(Settings)
        copy._fill(_parse_given(given, dict.fromkeys(given, source)), current)
        return copy

    def as_rows(self) -> list[tuple[str, str, str]]:
        """``(key, value for display, source)`` per key, the API key masked. For ``doctor``."""
        return [(name, self.display(name), self._sources[name]) for name in _KEYS]

    def display(self, key: str) -> str:
        """``key``'s value as text for people: secrets masked, ``None`` as ``(not set)``."""
        _check_names({key: None})
        value = self._values[key]
        if value is None:
            return "(not set)"
        return mask_secret(str(value)) if _KEYS[key].secret else str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Settings are read-only; use settings.replace({name}=...)")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Settings are read-only")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={self._shown(name)}" for name in _KEYS)
        return f"Settings({shown})"

    def _shown(self, name: str) -> str:
        value = self._values[name]
        if value is not None and _KEYS[name].secret:
            return repr(mask_secret(str(value)))
        return repr(value)

    def __reduce__(self) -> tuple[Callable[..., Settings], tuple[dict[str, tuple[Any, str]]]]:
        return _restore, ({name: (self._values[name], self._sources[name]) for name in _KEYS},)


def _restore(pairs: Mapping[str, tuple[object, str]]) -> Settings:
    """Unpickle: the values were validated when first built."""
    settings = Settings.__new__(Settings)
    settings._fill(pairs, {})
    return settings


def _parse_given(
    raw: Mapping[str, object], sources: Mapping[str, str]
) -> dict[str, tuple[object, str]]:
    """Parse each given raw value, keyed by setting name, as (value, source)."""
    return {
        name: (_parse(_KEYS[name], value, sources[name]), sources[name])
        for name, value in raw.items()
    }


_KEYS: dict[str, _Key[Any]] = {
    name: attr for name, attr in vars(Settings).items() if isinstance(attr, _Key)
}
KEYS: tuple[str, ...] = tuple(_KEYS)
"""The names of every setting, in display order."""


def parse_setting(key: str, value: object) -> Any:
    """Validate one setting's value the way :func:`resolve_settings` does, without a source.

    Raises ``ValueError("expected <what is allowed>")``: fit for pydantic validators (the
    ``profiling`` section of cirron.yaml uses it).

    >>> parse_setting("spool_max_bytes", "500MB")
    500000000
    """
    _check_names({key: None})
    spec = _KEYS[key]
    try:
        return spec.parse(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {spec.allowed}") from None


def mask_secret(value: str) -> str:
    """``sk-…a1b2`` for long secrets, ``****`` for short ones: enough to tell keys apart.

    >>> mask_secret("sk-live-0123456789abcdef"), mask_secret("short")
    ('sk-…cdef', '****')
    """
    return f"{value[:3]}…{value[-4:]}" if len(value) >= 16 else "****"


def _check_names(values: Mapping[str, object]) -> Mapping[str, object]:
    unknown = [name for name in values if name not in _KEYS]
    if unknown:
        raise _unknown_key_error(unknown[0])
    return values


def _unknown_key_error(name: str) -> CirronConfigError:
    import difflib

    close = difflib.get_close_matches(name, KEYS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return CirronConfigError(
        f"Unknown cirron setting {name!r}.{hint} Valid settings: {', '.join(KEYS)}.",
        key=name,
        source=SOURCE_ARGUMENT,
    )


def _parse(key: _Key[Any], value: object, source: str) -> Any:
    try:
        return key.parse(value)
    except (TypeError, ValueError):
        raise _invalid(key, value, source) from None


def _invalid(key: _Key[Any], value: object, source: str) -> CirronConfigError:
    if key.secret:
        shown = repr(mask_secret(value)) if isinstance(value, str) else type(value).__name__
    else:
        shown = repr(value)
    if source == SOURCE_ARGUMENT:
        where, fix = "given as an argument", ""
    elif source.startswith("environment variable "):
        where, fix = f"from {source}", f" Fix or unset {key.env_var}."
    else:
        where, fix = f"from {source}", " Fix it in that file."
    return CirronConfigError(
        f"Invalid value for cirron setting {key.name!r}: {shown} ({where}). "
        f"Expected {key.allowed}.{fix}",
        key=key.name,
        source=source,
    )


# ---- resolution


def config_file_location(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The config file and the table that :func:`resolve_settings` would read.

    ``CIRRON_CONFIG_FILE`` overrides ``~/.cirron/config.toml`` (``~`` from ``HOME``);
    ``CIRRON_PROFILE`` overrides the ``default`` table.

    >>> config_file_location({"HOME": "/home/u"})
    ('/home/u/.cirron/config.toml', 'default')
    """
    env = os.environ if environ is None else environ
    path = env.get(CONFIG_FILE_VAR) or DEFAULT_CONFIG_FILE
    home = env.get("HOME")
    if path.startswith("~") and home:
        path = home + path[1:]
    return os.path.abspath(os.path.expanduser(path)), env.get(PROFILE_VAR) or DEFAULT_PROFILE


def resolve_settings(
    explicit: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every setting: argument → ``CIRRON_<KEY>`` → config file → default.

    ``explicit`` holds the caller's arguments (a value of ``None`` means "not given");
    ``environ`` defaults to ``os.environ``. Raises :class:`CirronConfigError` for an unknown
    key, a bad value (naming the key, value and source), or an unreadable config file.

    >>> resolve_settings({"flush_interval": 5}, environ={}).flush_interval
    5.0
    """
    env = os.environ if environ is None else environ
    given = {k: v for k, v in _check_names(dict(explicit or {})).items() if v is not None}
    from_file, file_source = _read_config_file(env)
    raw: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name, key in _KEYS.items():
        if name in given:
            raw[name], sources[name] = given[name], SOURCE_ARGUMENT
        elif env.get(key.env_var):
            raw[name], sources[name] = env[key.env_var], f"environment variable {key.env_var}"
        elif name in from_file:
            raw[name], sources[name] = from_file[name], file_source
    return Settings._resolved(raw, sources)


def _read_config_file(environ: Mapping[str, str]) -> tuple[dict[str, object], str]:
    """The chosen table of the config file, and its source label (``"<path> [<table>]"``)."""
    path, table = config_file_location(environ)
    if not os.path.exists(path):
        if environ.get(CONFIG_FILE_VAR):
            raise CirronConfigError(
                f"{CONFIG_FILE_VAR} names {path}, which does not exist. "
                f"Create it or unset {CONFIG_FILE_VAR}.",
                source=f"environment variable {CONFIG_FILE_VAR}",
            )
        if environ.get(PROFILE_VAR):
            raise _missing_profile(path, table, available=[], file_exists=False)
        return {}, ""
    data = _load_toml(path)
    source = f"{path} [{table}]"
    _warn_top_level_keys(data, path)
    section = data.get(table)
    if section is None:
        if environ.get(PROFILE_VAR):
            tables = [name for name, value in data.items() if isinstance(value, dict)]
            raise _missing_profile(path, table, available=tables, file_exists=True)
        return {}, source
    if not isinstance(section, dict):
        raise CirronConfigError(
            f"{path}: [{table}] must be a table of settings, found {type(section).__name__}.",
            source=source,
        )
    _warn_unknown_keys(section, source)
    return {k: v for k, v in section.items() if k in _KEYS}, source


def _load_toml(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise CirronConfigError(
            f"{path} is not valid TOML: {exc}. Fix the file, or point {CONFIG_FILE_VAR} elsewhere.",
            source=path,
        ) from None
    except OSError as exc:
        raise CirronConfigError(f"Cannot read {path}: {exc.strerror}.", source=path) from None


def _missing_profile(
    path: str, table: str, *, available: list[str], file_exists: bool
) -> CirronConfigError:
    if not file_exists:
        detail = f"but {path} does not exist"
    else:
        names = ", ".join(f"[{name}]" for name in available) or "no tables"
        detail = f"but {path} has no [{table}] table (it has {names})"
    return CirronConfigError(
        f"{PROFILE_VAR}={table!r} selects the [{table}] table, {detail}. "
        f"Add the table or change {PROFILE_VAR}.",
        source=f"environment variable {PROFILE_VAR}",
    )


def _warn_unknown_keys(section: Mapping[str, object], source: str) -> None:
    import difflib

    for name in section:
        if name not in _KEYS:
            close = difflib.get_close_matches(name, KEYS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            warnings.warn(
                f"{source}: unknown cirron setting {name!r} is ignored.{hint}",
                CirronWarning,
                stacklevel=4,
            )


def _warn_top_level_keys(data: Mapping[str, object], path: str) -> None:
    for name, value in data.items():
        if not isinstance(value, dict):
            warnings.warn(
                f"{path}: top-level {name!r} is ignored; settings belong in a table "
                f"such as [{DEFAULT_PROFILE}].",
                CirronWarning,
                stacklevel=4,
            )
