"""Exceptions raised by cirron, and the warning category for its own internal faults.

Every error a user can meet derives from :class:`CirronError`. Messages say what went wrong
and what to do next: the key, the file, or the ``pip install`` line.

>>> from cirron.core.errors import CirronConfigError
>>> issubclass(CirronConfigError, ValueError)
True
"""

from __future__ import annotations

__all__ = [
    "CirronConfigError",
    "CirronDataSizeError",
    "CirronDatasetNotFound",
    "CirronDependencyError",
    "CirronError",
    "CirronInternalWarning",
    "CirronPlatformRequired",
    "CirronSecretNotFound",
    "CirronWarning",
    "CirronYamlError",
]


class CirronError(Exception):
    """Base class of every error cirron raises on purpose."""


class CirronConfigError(CirronError, ValueError):
    """A setting has a bad value. The message names the key, the value and where it came from."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.source = source


class CirronYamlError(CirronError, ValueError):
    """``cirron.yaml`` / ``cirron.yml`` / ``cirron.json`` could not be read or is invalid."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CirronSecretNotFound(CirronError, KeyError):
    """``ci.secret(name)`` found the secret neither in the environment nor in the secrets dir."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CirronDependencyError(CirronError, ImportError):
    """An optional dependency is missing. ``pip_line`` is the exact command to run."""

    def __init__(self, message: str, *, pip_line: str | None = None) -> None:
        super().__init__(message)
        self.pip_line = pip_line

    @classmethod
    def missing(cls, package: str, extra: str, feature: str) -> CirronDependencyError:
        """The standard message for ``feature`` needing ``package`` from the ``extra`` extra."""
        line = f"pip install 'cirron-sdk[{extra}]'"
        return cls(f"{feature} needs {package}, which is not installed. Run: {line}", pip_line=line)


class CirronDatasetNotFound(CirronError, LookupError):
    """A platform dataset name did not resolve."""


class CirronPlatformRequired(CirronError):
    """The operation needs the Cirron platform (an API key and a reachable endpoint)."""


class CirronDataSizeError(CirronError):
    """A load would move more data than the configured maximum."""


class CirronWarning(UserWarning):
    """Warnings about how cirron is used (a bad mark value, a second ``profile()`` call)."""


class CirronInternalWarning(RuntimeWarning):
    """cirron caught a fault of its own. It never raises into user code; the test suite turns
    this warning into a failure."""
