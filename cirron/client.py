"""The :class:`Cirron` class: one independent profiler configuration and its recording state.

Module-level functions (``ci.profile()``, ``ci.mark()``, ...) delegate to a process-wide default
instance. Create instances yourself for custom spool directories, several workspaces, or test
harnesses; two instances share nothing.

>>> import cirron as ci
>>> c = ci.Cirron(output_dir="/tmp/cirron-example")
>>> p = c.profile(frameworks=[])
>>> with c.scope("work"):
...     c.mark("answer", 42)
>>> c.shutdown()
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar

from cirron._version import __version__
from cirron.core.errors import CirronConfigError, CirronError, CirronWarning
from cirron.core.recorder import Recorder, Scope

if TYPE_CHECKING:
    from cirron.core.config import Settings
    from cirron.core.flush import Flusher
    from cirron.core.lifecycle import Lifecycle
    from cirron.core.project import ProjectConfig
    from cirron.core.seal import Sealer
    from cirron.core.spool import Spool

__all__ = ["Cirron", "NullProfiler", "Profiler"]

T = TypeVar("T")
log = logging.getLogger("cirron")

OUTPUTS = ("spool", "log", "stdout", "none")
_UNSET: Any = object()


class Profiler:
    """The handle ``profile()`` returns: one profiling session of one :class:`Cirron`."""

    enabled = True

    def __init__(self, cirron: Cirron) -> None:
        self._cirron = cirron
        self.status = "running"
        self.exception: str | None = None
        self.session: Scope | None = None
        self.settings: Settings | None = None
        self.outputs: tuple[str, ...] = ("spool",)
        self.config: dict[str, Any] = {}
        self.spool: Spool | None = None
        self.sealer: Sealer | None = None
        self.flusher: Flusher | None = None
        self.transport: Any = None
        self.lifecycle: Lifecycle | None = None
        self.frameworks: list[str] = []
        self.session_attrs: dict[str, Any] = {}
        # Called at the start of every flush (periodic, explicit, final) while the session is
        # open, e.g. to emit summary marks such as latency percentiles. Never raise.
        self.flush_hooks: list[Callable[[], None]] = []
        self._finished = False
        self._in_child = False  # a fork() child of the process that called profile()
        self._finish_lock = threading.Lock()
        self._undo: list[Any] = []

    # -- public handle API -------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Write everything recorded so far to the spool, now. Does not close the session."""
        f = self.flusher
        if f is None or self._finished:
            return False
        try:
            return f.flush(timeout)
        except Exception as exc:
            self._cirron._rec.internal_error("flush", exc)
            return False

    def health(self) -> dict[str, Any]:
        return self._cirron.health()

    def shutdown(self) -> None:
        self._cirron.shutdown()

    def trace(
        self, format: str = "tree", name: str | None = None, last: int | None = None, **kw: Any
    ) -> Any:
        return self._cirron.trace(format=format, name=name, last=last, **kw)

    def update_session(self, **attrs: Any) -> None:
        """Add attributes to the session span (framework version, device, ...) while it is open.

        The attribute dict is replaced, never mutated, so the flusher thread reading it for a
        provisional record never sees it change size.
        """
        s = self.session
        if s is not None and s.open:
            s.attrs = {**s.attrs, **attrs}
        self.session_attrs = {**self.session_attrs, **attrs}

    def set_rank(
        self, rank: int, local_rank: int | None = None, world_size: int | None = None
    ) -> None:
        """Stamp the distributed rank once it is known (e.g. after ``init_process_group``):
        every span sealed from now on carries it, and the session records all three."""
        if self.sealer is not None:
            self.sealer.rank = int(rank)
        extra: dict[str, Any] = {"rank": int(rank)}
        if local_rank is not None:
            extra["local_rank"] = int(local_rank)
        if world_size is not None:
            extra["world_size"] = int(world_size)
        self.update_session(**extra)

    @property
    def session_id(self) -> str | None:
        return self.session.span_id if self.session is not None else None

    def __repr__(self) -> str:
        return f"<cirron.Profiler status={self.status} session={self.session_id}>"

    # -- lifecycle (called by Cirron and the process hooks) ------------------------------------
    def finish(self, status: str | None = None, *, timeout: float | None = None) -> None:
        """Close open epochs and the session, write everything, stop the threads. Idempotent."""
        if not self._finish_lock.acquire(timeout=5.0):
            return
        try:
            if self._finished:
                return
            self._finished = True
            if status is not None:
                self.status = status
            elif self.status == "running":
                self.status = "finished"
            self.run_flush_hooks()
            self._close_open_spans()
            budget = self.settings.exit_timeout if self.settings is not None else 2.0
            budget = budget if timeout is None else timeout
            deadline = monotonic() + budget
            if self.flusher is not None:
                try:  # runs at exit and in signal handlers: a fault here is counted, not raised
                    self.flusher.stop(timeout=min(budget, 1.0))
                except Exception as exc:
                    self._cirron._rec.internal_error("final flush", exc)
            if self.transport is not None:
                try:
                    self.transport.close(max(0.0, deadline - monotonic()))
                except Exception as exc:
                    self._cirron._rec.internal_error("transport.close", exc)
            self._uninstall()
        finally:
            self._finish_lock.release()

    def run_flush_hooks(self) -> None:
        for hook in list(self.flush_hooks):
            try:
                hook()
            except Exception as exc:
                self._cirron._rec.internal_error("flush hook", exc)

    def _close_open_spans(self) -> None:
        rec = self._cirron._rec
        for scope in sorted(rec.structural.values(), key=lambda s: -s.depth):
            if scope is self.session or not scope.open:
                continue
            scope.attrs["closed_at_exit"] = True
            try:
                rec.close(scope)
            except Exception as exc:
                rec.internal_error("closing open span", exc)
        if self.session is not None and not self._in_child:
            final: dict[str, Any] = {"status": self.status}
            if self.exception:
                final["exception"] = self.exception
            rec.close_root(self.session, final)

    def _uninstall(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                self._cirron._rec.internal_error("uninstall", exc)

    def after_fork_in_child(self) -> None:
        """The child records into fresh buffers under the parent's open spans, which stay the
        parent's to close: the child's exit flushes its own records only."""
        self._in_child = True
        rec = self._cirron._rec
        rec.after_fork_in_child()
        rec.structural.clear()
        if self.flusher is not None:
            self.flusher.after_fork_in_child()
            rec.on_new_buffer = self.flusher.ensure_thread
        child_hook = getattr(self.transport, "after_fork_in_child", None)
        if child_hook is not None:
            child_hook()


class NullProfiler(Profiler):
    """``profile(enabled=False)``: no hooks, no thread, no files; recording calls are no-ops."""

    enabled = False

    def __init__(self, cirron: Cirron) -> None:
        super().__init__(cirron)
        self.status = "disabled"

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def finish(self, status: str | None = None, *, timeout: float | None = None) -> None:
        self._finished = True


class Cirron:
    """An independent cirron: its own settings, spool directory, buffers, flusher, transport.

    Settings resolve per key: explicit argument → ``CIRRON_<KEY>`` environment variable →
    ``~/.cirron/config.toml`` → default. A bad value raises :class:`CirronConfigError` here.
    """

    def __init__(self, *, _recorder: Recorder | None = None, **settings: Any) -> None:
        from cirron.core.config import resolve_settings

        self.settings: Settings = resolve_settings(settings)
        self._rec = _recorder if _recorder is not None else Recorder()
        self._profiler: Profiler | None = None
        self._project: Any = _UNSET
        self._watched: list[Any] = []
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = "profiling" if self.profiling else "idle"
        return f"<cirron.Cirron output_dir={self.settings.output_dir!r} {state}>"

    # -- configuration ---------------------------------------------------------------------
    @property
    def project(self) -> ProjectConfig | None:
        """The ``cirron.yaml`` / ``cirron.yml`` / ``cirron.json`` found from the working
        directory upwards, or None."""
        if self._project is _UNSET:
            from cirron.core.project import find_project

            self._project = find_project()
        result: ProjectConfig | None = self._project
        return result

    def env(self, key: str, default: Any = None) -> Any:
        from cirron.core.env import env

        return env(key, default)

    def secret(self, name: str) -> str:
        from cirron.core.secrets import secret

        return secret(name, secrets_dir=self.settings.secrets_dir)

    @property
    def profiling(self) -> bool:
        p = self._profiler
        return p is not None and p.enabled and not p._finished

    def ensure_profiling(self) -> Profiler | None:
        """Start a session with the resolved settings unless one is running (the zero-config
        path of callbacks and wrappers); thread-safe and silent. Returns the running profiler,
        or None when profiling was disabled with ``profile(enabled=False)``."""
        with self._lock:
            p = self._profiler
            if p is None or p._finished:
                p = self.profile()
        return p if p.enabled else None

    @property
    def profiler(self) -> Profiler | None:
        return self._profiler

    # -- profile() ---------------------------------------------------------------------------
    def profile(
        self,
        config: dict[str, Any] | None = None,
        frameworks: Sequence[str] | None = None,
        snapshots: str | None = None,
        sample_rate: float | None = None,
        flush_interval: float | None = None,
        enabled: bool = True,
        path: str | os.PathLike[str] | None = None,
        output: str | Sequence[str] | None = None,
    ) -> Profiler:
        """Start profiling: open the session span, start the flusher, install framework hooks.

        ``None`` for a parameter means this instance's resolved setting (or ``cirron.yaml``'s
        ``profiling`` section). Calling it again returns the running profiler with a warning.
        If set-up fails half-way, everything installed so far is removed before the error
        propagates.
        """
        with self._lock:
            if self._profiler is not None and not self._profiler._finished:
                warnings.warn(
                    "cirron: profile() was already called; returning the running profiler.",
                    CirronWarning,
                    stacklevel=2,
                )
                return self._profiler
            if not enabled:
                self._rec.disable()
                self._profiler = NullProfiler(self)
                return self._profiler
            outputs = _parse_output(output)
            settings = self._profile_settings(snapshots, sample_rate, flush_interval, path)
            p = Profiler(self)
            p.settings, p.outputs, p.config = settings, outputs, dict(config or {})
            try:
                self._start(p, frameworks)
            except BaseException:
                p._uninstall()
                p._finished = True
                raise
            self._profiler = p
            return p

    def _profile_settings(
        self,
        snapshots: str | None,
        sample_rate: float | None,
        flush_interval: float | None,
        path: str | os.PathLike[str] | None,
    ) -> Settings:
        settings = self.settings
        proj = self.project
        prof = getattr(proj, "profiling", None) if proj is not None else None
        if prof is not None:  # cirron.yaml's profiling section beats only the defaults
            from_yaml = {
                key: getattr(prof, key, None)
                for key in ("snapshots", "sample_rate", "flush_interval")
                if settings.source(key) == "default"
            }
            from_yaml = {k: v for k, v in from_yaml.items() if v is not None}
            if from_yaml:
                settings = settings.replace_from(
                    f"{getattr(proj, 'path', 'cirron.yaml')} profiling", **from_yaml
                )
        overrides = {
            k: v
            for k, v in (
                ("snapshots", snapshots),
                ("sample_rate", sample_rate),
                ("flush_interval", flush_interval),
            )
            if v is not None
        }
        if path is not None:
            overrides["output_dir"] = os.fspath(path)
        return settings.replace(**overrides) if overrides else settings

    def _start(self, p: Profiler, frameworks: Sequence[str] | None) -> None:
        from cirron.core.context import read_context
        from cirron.core.flush import Flusher
        from cirron.core.lifecycle import Lifecycle
        from cirron.core.seal import Sealer
        from cirron.core.spool import Spool
        from cirron.core.transport import select_transport

        settings = p.settings
        assert settings is not None
        rec = self._rec
        rec.enable()
        ctx = read_context()
        root = settings.output_path
        p.transport = select_transport(
            api_key=settings.api_key,
            api_endpoint=settings.api_endpoint,
            ingest_path=settings.ingest_path,
            run_id=ctx.run_id,
            spool_dir=root / "spool",
            sdk_version=__version__,
        )
        if "spool" in p.outputs:
            p.spool = Spool(root, settings.spool_max_bytes)
            p.spool.open()
        p.sealer = Sealer(
            rec, rank=ctx.rank, session_id=lambda: p.session.id if p.session is not None else None
        )
        p.flusher = Flusher(
            rec,
            p.sealer,
            interval=settings.flush_interval,
            spool=p.spool,
            outputs=p.outputs,
            sink=p.transport,
            on_error=rec.internal_error,
            before_flush=p.run_flush_hooks,
        )
        p.session_attrs = self._session_attrs(ctx, p)
        # Each step registers its undo at once: if a later step fails, profile() removes
        # everything (no thread, hook or open session is left behind).
        p.session = rec.open_root("cirron.session", p.session_attrs)
        p._undo.append(lambda: rec.discard_root(p.session))
        p.flusher.start()
        p._undo.append(p.flusher.abort)
        rec.on_new_buffer = None
        p.transport.start()
        p._undo.append(lambda: p.transport.close(0.0))
        p.lifecycle = Lifecycle(p)
        p.lifecycle.install()
        p._undo.append(p.lifecycle.uninstall)
        from cirron.integrations import install_frameworks

        p.frameworks = install_frameworks(self, p, frameworks)
        if self._watched:
            for model in self._watched:
                self._watch_now(model)

    def _session_attrs(self, ctx: Any, p: Profiler) -> dict[str, Any]:
        proj = self.project
        attrs: dict[str, Any] = {
            "sdk_version": __version__,
            "python": platform.python_version(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "snapshots": p.settings.snapshots if p.settings else None,
        }
        attrs.update(ctx.as_attrs())
        attrs.setdefault("run_id", ctx.run_id or _job_run_id())
        if self.settings.workspace_id and "workspace_id" not in attrs:
            attrs["workspace_id"] = self.settings.workspace_id
        if proj is not None:
            attrs["name"] = proj.name
            attrs["version"] = proj.version
            attrs["framework"] = proj.framework
            attrs["type"] = proj.type
        if p.config:
            attrs["config"] = p.config
        return attrs

    # -- recording (delegating to the recorder's hot path) --------------------------------------
    @property
    def scope(self) -> type[Scope]:
        """``with c.scope("name", index=None, **attrs):`` — a timed span (also a decorator)."""
        return self._rec.Scope

    @property
    def mark(self) -> Any:
        """``c.mark(name, value, *, kind="point", **attrs)`` — record a named value."""
        return self._rec.mark

    def epochs(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield each item inside an ``epoch`` span indexed from 0."""
        return self._rec.epochs(iterable)

    def batches(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield each item inside a ``batch`` span indexed from 0."""
        return self._rec.batches(iterable)

    def watch(self, model: Any) -> None:
        """Register a model for weight/gradient statistics at every epoch boundary."""
        try:
            if any(m is model for m in self._watched):
                return
            self._watched.append(model)
            if self.profiling:
                self._watch_now(model)
        except CirronError:
            raise
        except Exception as exc:
            self._rec.internal_error("watch", exc)

    def _watch_now(self, model: Any) -> None:
        from cirron.integrations import watch_model

        watch_model(self, model)

    def wrap(self, obj: Any) -> Any:
        """Instrument an estimator, an ONNX session, a Keras model, a LightningModule or a torch
        module, picking the adapter by the object's type."""
        from cirron.integrations import wrap

        return wrap(self, obj)

    # -- session control -----------------------------------------------------------------------
    def flush(self) -> None:
        """Synchronously write everything recorded so far to the spool."""
        p = self._profiler
        if p is not None:
            p.flush()

    def health(self) -> dict[str, Any]:
        """Counters that say whether recording is healthy. Never raises."""
        try:
            from cirron.core.health import health_report

            return health_report(self)
        except Exception as exc:  # pragma: no cover - health must never raise
            return {"enabled": False, "error": f"{type(exc).__name__}: {exc}"}

    def shutdown(self) -> None:
        """Close the session, flush synchronously, stop threads, remove hooks. Idempotent.

        A later ``profile()`` starts a fresh session.
        """
        with self._lock:
            p = self._profiler
            if p is not None:
                p.finish()
            self._profiler = None
            self._rec.reset_session()

    def trace(
        self, format: str = "tree", name: str | None = None, last: int | None = None, **kw: Any
    ) -> Any:
        """Read this session back (including what was already flushed).

        ``format``: ``"tree"`` (text), ``"dict"``, ``"json"`` or ``"df"`` (pandas).
        """
        from cirron.core.readback import read_session

        return read_session(self, format=format, name=name, last=last, **kw)


def _parse_output(output: str | Sequence[str] | None) -> tuple[str, ...]:
    if output is None:
        return ("spool",)
    items = [output] if isinstance(output, str) else list(output)
    bad = [o for o in items if o not in OUTPUTS]
    if bad or not items:
        raise CirronConfigError(
            f"profile(output={output!r}): unknown output {bad[0] if bad else '(empty)'!r}; "
            f"use one or more of {', '.join(map(repr, OUTPUTS))}.",
            key="output",
            source="argument",
        )
    return tuple(o for o in items if o != "none")


def _job_run_id() -> str:
    """One logical run id for every rank of a job, agreed without any collective.

    In order: an id a parent process already chose (``CIRRON_JOB_RUN_ID``, inherited by the
    ranks it spawns); the launcher's job id (torchelastic, SLURM); the rendezvous address
    shared by all ranks of a torchrun/Lightning job plus the launcher's pid. The chosen id is
    exported so that processes started later inherit it.
    """
    import hashlib

    global _exported_run_id
    env = os.environ
    rid = env.get("CIRRON_JOB_RUN_ID")
    if rid and rid == _exported_run_id:
        rid = None  # our own export from an earlier session of this process: a new run
    if not rid:
        seed = None
        if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
            seed = f"elastic:{env['TORCHELASTIC_RUN_ID']}"
        elif env.get("SLURM_JOB_ID"):
            seed = f"slurm:{env['SLURM_JOB_ID']}:{env.get('SLURM_STEP_ID', '')}"
        elif (
            env.get("MASTER_ADDR") and env.get("MASTER_PORT") and env.get("WORLD_SIZE", "1") != "1"
        ):
            # Ranks launched by one process (torchrun's agent, Lightning's rank 0) share it.
            launcher = (
                os.getppid()
                if "LOCAL_RANK" in env and "TORCHELASTIC_RUN_ID" in env
                else (
                    os.getpid()
                    if env.get("LOCAL_RANK", "0") == "0" and "RANK" not in env
                    else os.getppid()
                )
            )
            seed = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}:{env['WORLD_SIZE']}:{launcher}"
        rid = hashlib.sha256(seed.encode()).hexdigest()[:32] if seed else os.urandom(16).hex()
        env["CIRRON_JOB_RUN_ID"] = _exported_run_id = rid
    return rid


# The run id this process exported for processes it starts (see _job_run_id).
_exported_run_id: str | None = None
