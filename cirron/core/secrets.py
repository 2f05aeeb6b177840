"""``ci.secret(name)``: a secret from the environment or a mounted file, never logged.

Looked up in order, first match wins:

1. the environment variable ``CIRRON_SECRET_<NAME>`` (``name.upper()``, ``-`` → ``_``);
   an empty variable counts as unset,
2. the file ``<secrets_dir>/<name>`` (default ``/etc/cirron/secrets``), trailing newlines
   stripped: how air-gapped clusters and Kubernetes secret volumes inject secrets,
3. otherwise :class:`CirronSecretNotFound`, naming both places and how to set the secret.

>>> secret("openai-api-key", environ={"CIRRON_SECRET_OPENAI_API_KEY": "sk-123"})
'sk-123'

The value is never logged, recorded in a span or mark, or written to the spool.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cirron.core.errors import CirronConfigError, CirronSecretNotFound

if TYPE_CHECKING:
    import logging

__all__ = ["DEFAULT_SECRETS_DIR", "check_secret_name", "secret", "secret_env_var"]

DEFAULT_SECRETS_DIR = "/etc/cirron/secrets"
SECRET_ENV_PREFIX = "CIRRON_SECRET_"


def secret(
    name: str,
    *,
    secrets_dir: str | os.PathLike[str] = DEFAULT_SECRETS_DIR,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The secret called ``name``: ``CIRRON_SECRET_<NAME>``, then ``<secrets_dir>/<name>``.

    Raises :class:`CirronSecretNotFound` when neither is there, and :class:`CirronConfigError`
    (a ``ValueError``) for a name that could escape ``secrets_dir``.
    """
    check_secret_name(name)
    env = os.environ if environ is None else environ
    variable = secret_env_var(name)
    value = env.get(variable)
    if value:
        _logger().debug("secret %r found in environment variable %s", name, variable)
        return value
    path = os.path.join(os.fspath(secrets_dir), name)
    try:
        with open(path, encoding="utf-8") as file:
            content = file.read()
    except FileNotFoundError:
        raise CirronSecretNotFound(_not_found(name, variable, path, "does not exist")) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise CirronSecretNotFound(
            _not_found(name, variable, path, f"unreadable: {reason}")
        ) from None
    _logger().debug("secret %r read from file %s", name, path)
    return content.rstrip("\r\n")


def secret_env_var(name: str) -> str:
    """The environment variable that holds secret ``name``.

    >>> secret_env_var("openai-api-key")
    'CIRRON_SECRET_OPENAI_API_KEY'
    """
    return SECRET_ENV_PREFIX + name.upper().replace("-", "_")


def check_secret_name(name: str) -> str:
    """``name`` if it is a plain file name; a name that could read outside ``secrets_dir``
    (empty, ``.``, ``..``, a path separator, NUL) raises :class:`CirronConfigError`."""
    if not isinstance(name, str) or not name or name == ".":
        raise CirronConfigError(
            f"Invalid secret name {name!r}: give a non-empty name such as 'openai-api-key'.",
            key="secret",
        )
    bad = next((part for part in ("/", "\\", "..", "\0") if part in name), None)
    if bad is not None:
        raise CirronConfigError(
            f"Invalid secret name {name!r}: it contains {bad!r}. Secret names are plain file "
            "names inside the secrets directory, such as 'openai-api-key'.",
            key="secret",
        )
    return name


def _not_found(name: str, variable: str, path: str, file_state: str) -> str:
    return (
        f"Secret {name!r} not found. cirron looked for the environment variable {variable} "
        f"(not set) and the file {path} ({file_state}). Set it with `export {variable}=...`, "
        f"mount a file at {path}, or, on the Cirron platform, add the secret to the pipeline "
        "or deployment configuration in the Cirron dashboard."
    )


def _logger() -> logging.Logger:
    import logging

    return logging.getLogger("cirron.secrets")
