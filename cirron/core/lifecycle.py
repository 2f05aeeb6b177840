"""Process lifecycle: exit, crashes, SIGTERM and fork.

* atexit closes whatever is still open and writes it; no user code needs ``shutdown()``.
* ``sys.excepthook`` is chained (never replaced) to learn that the run crashed or was
  interrupted; the previous hook always runs.
* cirron does not take over signals: on SIGTERM it flushes and closes the session, then runs the
  handler that was installed before (or the default action, which ends the process as usual).
  Ctrl-C stays a ``KeyboardInterrupt``; nothing is installed for SIGINT.
* After ``fork()`` the child starts with empty buffers and its own flusher thread.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Protocol

__all__ = ["Lifecycle", "Session"]


class Session(Protocol):
    """What the lifecycle needs from a profiling session."""

    status: str
    exception: str | None

    def finish(self, status: str | None = None, *, timeout: float | None = None) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_fork_registered = False


def _after_fork_in_child() -> None:
    for session in list(_live):
        try:
            session.after_fork_in_child()
        except Exception:
            pass


class Lifecycle:
    """Installs and removes the process-level hooks of one session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._prev_excepthook: Callable[..., Any] | None = None
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self._installed = False

    def install(self) -> None:
        global _fork_registered
        atexit.register(self._at_exit)
        self._prev_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        self._install_sigterm()
        _live.add(self.session)
        if not _fork_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_registered = True
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        atexit.unregister(self._at_exit)
        if sys.excepthook == self._excepthook and self._prev_excepthook is not None:
            sys.excepthook = self._prev_excepthook
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._prev_sigterm)
            except (ValueError, OSError):
                pass
        self._sigterm_installed = False
        _live.discard(self.session)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        try:
            self._prev_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True
        except (ValueError, OSError):
            pass

    def _at_exit(self) -> None:
        self.session.finish()

    def _excepthook(
        self, et: type[BaseException], ev: BaseException, tb: TracebackType | None
    ) -> None:
        try:
            if self._installed and self.session.status == "running":
                self.session.status = (
                    "interrupted" if issubclass(et, KeyboardInterrupt) else "crashed"
                )
                self.session.exception = et.__name__
        finally:
            prev = self._prev_excepthook or sys.__excepthook__
            prev(et, ev, tb)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        prev = self._prev_sigterm
        if prev == signal.SIG_IGN:
            self.session.flush(timeout=1.0)
            return
        self.session.status = "terminated"
        if callable(prev):
            # The program's own handler decides what happens next; make the data safe first.
            self.session.flush(timeout=1.0)
            prev(signum, frame)
            return
        # Default action: close everything, then let the signal end the process as it would
        # have without cirron (exit status 128 + SIGTERM).
        self.session.finish("terminated")
        self.uninstall()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
