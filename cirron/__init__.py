"""cirron: a profiler for ML training and inference.

One call records a tree of timed spans (session → epoch → batch → data_load / forward /
backward / optimizer_step), named values ("marks") and per-epoch weight statistics into a
crash-safe local spool (``./.cirron/``), uploaded in the background when ``CIRRON_API_KEY`` is set.

>>> import cirron as ci
>>> profiler = ci.profile(frameworks=[])
>>> for epoch in ci.epochs(range(2)):
...     for batch in ci.batches([1, 2, 3]):
...         ci.mark("loss", 1.0 / batch)
>>> ci.shutdown()

Module-level functions act on a process-wide default :class:`Cirron`, created on first use.
``import cirron`` imports no ML framework.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cirron._version import __version__
from cirron.core.errors import (
    CirronConfigError,
    CirronDatasetNotFound,
    CirronDataSizeError,
    CirronDependencyError,
    CirronError,
    CirronPlatformRequired,
    CirronSecretNotFound,
    CirronWarning,
    CirronYamlError,
)
from cirron.core.recorder import Recorder, Scope

if TYPE_CHECKING:
    from cirron.client import Cirron, Profiler

__all__ = [
    "Cirron",
    "CirronConfigError",
    "CirronDataSizeError",
    "CirronDatasetNotFound",
    "CirronDependencyError",
    "CirronError",
    "CirronPlatformRequired",
    "CirronSecretNotFound",
    "CirronWarning",
    "CirronYamlError",
    "Profiler",
    "Scope",
    "__version__",
    "batches",
    "env",
    "epochs",
    "flush",
    "health",
    "inference",
    "mark",
    "profile",
    "scope",
    "secret",
    "shutdown",
    "trace",
    "watch",
    "wrap",
]

# The default instance's recorder lives as long as the process, so that ``ci.mark`` and
# ``ci.scope`` can be its bound method and bound class: no delegation on the hot path, and a
# ``from cirron import mark`` taken before a shutdown()/profile() cycle keeps working.
_REC = Recorder()
_default: Cirron | None = None
_default_lock = threading.Lock()

mark = _REC.mark
scope = _REC.Scope
epochs = _REC.epochs
batches = _REC.batches


def _get() -> Cirron:
    global _default
    c = _default
    if c is None:
        with _default_lock:
            if _default is None:
                from cirron.client import Cirron

                _default = Cirron(_recorder=_REC)
            c = _default
    return c


def profile(
    config: dict[str, Any] | None = None,
    frameworks: Sequence[str] | None = None,
    snapshots: str | None = None,
    sample_rate: float | None = None,
    flush_interval: float | None = None,
    enabled: bool = True,
    path: str | None = None,
    output: str | Sequence[str] | None = None,
) -> Profiler:
    """Start profiling with the default instance and return the :class:`Profiler` handle.

    >>> import cirron as ci
    >>> p = ci.profile(frameworks=[], output="none")
    >>> p.health()["enabled"]
    True
    >>> ci.shutdown()
    """
    return _get().profile(
        config=config,
        frameworks=frameworks,
        snapshots=snapshots,
        sample_rate=sample_rate,
        flush_interval=flush_interval,
        enabled=enabled,
        path=path,
        output=output,
    )


def watch(model: Any) -> None:
    """Register a model for weight and gradient statistics at every epoch boundary."""
    _get().watch(model)


def wrap(obj: Any) -> Any:
    """Instrument a scikit-learn estimator, an ONNX Runtime session, a Keras model, a
    LightningModule or a torch module (picked by type); see the integrations docs."""
    return _get().wrap(obj)


def flush() -> None:
    """Write everything recorded so far to the spool, synchronously."""
    c = _default
    if c is not None:
        c.flush()


def health() -> dict[str, Any]:
    """Recording health: enabled, transport, drops by reason, spool size. Never raises."""
    try:
        return _get().health()
    except Exception as exc:
        return {"enabled": False, "error": f"{type(exc).__name__}: {exc}"}


def shutdown() -> None:
    """Close the session, flush, stop the flusher and remove hooks; a later ``profile()``
    starts afresh. Idempotent; at interpreter exit this runs by itself."""
    global _default
    with _default_lock:
        c, _default = _default, None
    if c is not None:
        c.shutdown()


def trace(format: str = "tree", name: str | None = None, last: int | None = None, **kw: Any) -> Any:
    """Read the current session back: ``"tree"`` text, ``"dict"``, ``"json"`` or ``"df"``."""
    return _get().trace(format=format, name=name, last=last, **kw)


def env(key: str, default: Any = None) -> Any:
    """``os.environ`` with ``.env`` loading and JSON parsing of ``{``/``[`` values."""
    from cirron.core.env import env as _env

    return _env(key, default)


def secret(name: str) -> str:
    """A secret from ``CIRRON_SECRET_<NAME>`` or the secrets directory; never logged."""
    return _get().secret(name)


def inference(fn: Any = None, *, config: dict[str, Any] | None = None) -> Any:
    """Decorator: one ``inference`` span per call (sync, async and generator functions)."""
    from cirron.core.inference import inference_decorator

    return inference_decorator(_REC, fn, config=config)


def __getattr__(name: str) -> Any:
    if name in ("Cirron", "Profiler", "NullProfiler"):
        from cirron import client

        return getattr(client, name)
    raise AttributeError(f"module 'cirron' has no attribute {name!r}")
