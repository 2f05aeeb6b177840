"""The hot path: scopes, marks and loop wrappers.

Everything here runs inside the user's training step, so it follows three rules:

* no I/O, no lock, no uuid and no JSON: a record is a tuple appended to a per-thread ``deque``;
* ids are a per-process random prefix plus a per-thread counter, turned into hex at seal time;
* nothing raises into user code: a bad mark value is counted and warned about once.

The scope stack lives in a :class:`contextvars.ContextVar` holding the innermost open
:class:`Scope`; each scope points at its parent. Threads start with an empty stack, asyncio tasks
inherit a copy of their creator's, so interleaved tasks never see each other's scopes.

Records are drained by :mod:`cirron.core.seal` on the flusher thread. Buffers are bounded
(``MARK_CAPACITY`` / ``SPAN_CAPACITY`` per thread, drop-oldest); a drop leaves a gap in the
per-thread sequence numbers, which is how the drain counts drops exactly at no cost here.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import random
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from cirron.core.errors import CirronWarning

__all__ = [
    "MARK_CAPACITY",
    "MAX_DEPTH",
    "SPAN_CAPACITY",
    "Deferred",
    "Recorder",
    "Scope",
    "ThreadBuffer",
]

T = TypeVar("T")

MAX_DEPTH = 64
MARK_CAPACITY = 65_536
SPAN_CAPACITY = 65_536
STRING_CAP = 256
# Wake the flusher early when a thread has appended this many marks since the last wake.
_WAKE_MASK = 0x3FFF

_PLAIN: frozenset[type] = frozenset((float, int, str, bool))

# _RECORDS_UNTRACKABLE: the garbage collector untracks a tuple only when it holds no object that
# can be tracked, and any dict counts, even an empty one. Records therefore carry None (or, for
# a batch's data_load_ns, a bare int) instead of an empty or trivial attrs dict: they then leave
# the collector's books at its first young pass, instead of piling up in the oldest generation
# and triggering full collections in the training loop (measured: ~15 ms each 20k marks).


class Deferred:
    """A mark value or span attribute converted later, on the flusher thread.

    Tensors handed to ``mark`` are wrapped in one, so the training thread never waits for a
    device: the conversion (``.item()``) happens during sealing.
    """

    __slots__ = ("convert", "obj")

    def __init__(self, obj: Any, convert: Callable[[Any], Any]) -> None:
        self.obj = obj
        self.convert = convert

    def resolve(self) -> Any:
        return self.convert(self.obj)


def _item(obj: Any) -> Any:
    return obj.item()


def _numpy_item(obj: Any) -> Any:
    return obj.numpy().item()


def _coerce_unusual(value: Any) -> Any:
    """Classify a mark value that is not a plain int/float/str/bool.

    Returns a plain value, a :class:`Deferred`, or ``_BAD`` for values cirron does not record.
    Cheap checks only: no framework is imported and no device is touched.
    """
    if type(value) in _TORCH_TENSORS:  # a loss per step: the common case, checked first
        if not value.ndim:
            return value.item() if value.is_cpu else Deferred(value.detach(), _item)
        return _BAD
    shape = getattr(value, "shape", None)
    if shape is not None:
        try:
            zero_d = len(shape) == 0
        except TypeError:
            zero_d = False
        if not zero_d:
            return _BAD
        detach = getattr(value, "detach", None)
        if detach is not None:  # torch
            if type(value).__module__ == "torch" and hasattr(value, "is_cpu"):
                _TORCH_TENSORS.add(type(value))  # torch.Tensor / Parameter: no subclasses
            if getattr(value, "is_cpu", False):
                return value.item()  # reading a CPU tensor waits for no device: do it now
            return Deferred(detach(), _item)  # on a device: keep a reference, convert later
        if hasattr(value, "item"):
            if type(value).__module__ == "numpy":  # numpy scalars are cheap: convert now
                return value.item()
            return Deferred(value, _item)
        if hasattr(value, "numpy"):
            return Deferred(value, _numpy_item)
        return _BAD
    if isinstance(value, (int, float, str)):  # subclasses (IntEnum, numpy.float64, ...)
        return value
    return _BAD


_BAD = object()
_TORCH_TENSORS: set[type] = set()  # torch's own tensor classes, learnt from the first mark


# The kinds of child a batch's record can carry packed (Scope.close's ``children``): the index
# of each kind's start in that tuple; its end follows.
DATA_LOAD, FORWARD, BACKWARD, OPTIMIZER_STEP = 0, 2, 4, 6


class HeldChildren:
    """Timed children an adapter holds for one batch until the batch closes, then hands to
    :meth:`Scope.close` packed. One record per training step instead of five is most of what
    keeps framework hooks cheap."""

    __slots__ = ("batch", "slots")

    def __init__(self) -> None:
        self.batch = 0  # the id of the batch the slots belong to (0: none)
        self.slots = [-1] * 8  # start/end per kind (see DATA_LOAD...); end -1: none

    def hold(self, batch_id: int, kind: int, start_ns: int, end_ns: int) -> bool:
        """Hold a child of ``kind`` for the batch ``batch_id``. False when the batch already
        holds one of that kind (two models, two optimizers): record it as a span of its own."""
        s = self.slots
        if self.batch != batch_id:
            self.batch = batch_id
            s[1] = s[3] = s[5] = s[7] = -1
        elif s[kind + 1] >= 0:
            return False
        s[kind] = start_ns
        s[kind + 1] = end_ns
        return True

    def take(self, batch_id: int | None) -> tuple[int, ...] | None:
        """The children held for ``batch_id`` (closing now), packed; None if none."""
        if self.batch != batch_id:
            return None
        self.batch = 0
        return tuple(self.slots)


class ThreadBuffer:
    """One thread's record buffers. Appended by its own thread, drained by the flusher."""

    __slots__ = (
        "bad_values",
        "depth_drops",
        "last_mark_seq",
        "last_span_seq",
        "mark_seq",
        "marks",
        "number",
        "span_close_seq",
        "span_ids",
        "spans",
        "thread",
        "thread_id",
    )

    def __init__(self, number: int, prefix: int) -> None:
        self.marks: deque[tuple[Any, ...]] = deque(maxlen=MARK_CAPACITY)
        self.spans: deque[tuple[Any, ...]] = deque(maxlen=SPAN_CAPACITY)
        self.mark_seq = itertools.count()
        self.span_close_seq = itertools.count()

        self.number = number
        # 128-bit ids: 64-bit per-process random prefix, then thread number and counter.
        # Span ids count up from (prefix, thread number): next() gives the whole 128-bit id.
        self.span_ids = itertools.count(((prefix << 64) | (number << 40)) + 1)
        self.thread = threading.current_thread()
        self.thread_id = threading.get_ident()
        self.last_mark_seq = -1
        self.last_span_seq = -1
        self.depth_drops = 0
        self.bad_values = 0

    def mark_id(self, seq: int, prefix: int) -> int:
        return (prefix << 64) | (1 << 63) | (self.number << 40) | seq


class _PyScopeCore:
    """The pure-Python scope fields and ``with`` path: the twin of ``_hot.ScopeCore``.

    Used when the C extension is missing (no compiler at install time) or
    ``CIRRON_PURE_PYTHON=1``; ``Recorder(pure=True)`` also runs these methods over the C fields,
    which is how the tests hold both implementations to one behaviour.
    """

    __slots__ = ("attrs", "depth", "id", "index", "name", "parent", "start", "tb")
    rec: Recorder

    def __init__(self, name: str, /, index: int | None = None, **attrs: Any) -> None:
        self.name = name
        self.index = index
        self.attrs = attrs
        self.tb: ThreadBuffer | None = None

    # Hot path: written for speed, not for reading.
    def __enter__(self) -> Any:
        r = self.rec
        try:
            tb = r.tls.tb
        except AttributeError:
            tb = r.new_buffer()
        cur = r.cur
        p = cur.get()
        if p is None:
            self.depth = 1
        else:
            if p.tb is None:
                p = r.live_parent(p)
            d = self.depth = p.depth + 1 if p is not None else 1
            if d > MAX_DEPTH:
                r.depth_drop(self, tb, stacklevel=4)
                return self
        self.parent = p
        self.id = next(tb.span_ids)
        self.tb = tb
        cur.set(self)  # type: ignore[arg-type]
        self.start = perf_counter_ns()
        return self

    def __exit__(self, et: Any, ev: Any, _tb: Any) -> Literal[False]:
        end = perf_counter_ns()
        tb = self.tb
        if tb is None:
            return False
        self.tb = None
        r = self.rec
        p = self.parent
        cur = r.cur
        c = cur.get()
        if c is not self:
            r.unwind(self, c)  # type: ignore[arg-type]
        else:
            cur.set(p)
        n = next(tb.span_close_seq)
        tb.spans.append(
            (
                self.id,
                p.id if p is not None else r.root_id,
                self.name,
                self.index,
                self.start,
                end,
                self.attrs or None,  # never an empty dict: see _RECORDS_UNTRACKABLE
                et,
                n,
            )
        )
        if not n & _WAKE_MASK:  # a burst of spans: seal before the buffer fills
            r.wake()
        return False


# The scope hot path in C (cirron/core/_hot.c) when it was built, else in Python (above).
_hot: Any = None
if os.environ.get("CIRRON_PURE_PYTHON", "").strip() in ("", "0"):
    try:
        from cirron.core import _hot
    except ImportError:  # built without a C compiler: the pure-Python path, same behaviour
        _hot = None

#: Which implementation of the scope hot path this process runs: ``"c"`` or ``"python"``.
HOT_PATH = "c" if _hot is not None else "python"

if TYPE_CHECKING:
    _ScopeBase = _PyScopeCore
else:
    _ScopeBase = _hot.ScopeCore if _hot is not None else _PyScopeCore


class Scope(_ScopeBase):
    """A timed span: a context manager, a decorator, and the node of the scope tree.

    >>> import cirron as ci
    >>> with ci.scope("eval", index=0, split="val"):
    ...     pass
    """

    # ``rec`` (and ``_bind``, the C path's view of it) are class attributes: each Recorder
    # makes a subclass bound to itself.
    __slots__ = ()
    rec: Recorder
    # Whether framework hooks may hold this span's timed children for its closing record
    # (``Recorder.packer``); true for the batches of ``ci.batches`` and the torch hooks.
    packs = False

    if TYPE_CHECKING:

        def __enter__(self) -> Scope: ...

    def close(self, end_ns: int | None = None, children: tuple[int, ...] | None = None) -> None:
        """Close the span outside a ``with`` block (framework hooks use this).

        ``children``: a batch's timed children packed into its record, ``(data_load start,
        end, forward start, end, backward start, end, optimizer_step start, end)`` with end
        -1 for a child that did not happen; the sealer writes them as spans under this one.
        One record instead of five keeps a training step cheap."""
        tb = self.tb
        if tb is None:
            return
        self.tb = None
        r = self.rec
        p = self.parent
        c = r.cur.get()
        if c is self:
            r.cur.set(p)
        elif c is not None:
            r.unwind(self, c)
        end = perf_counter_ns() if end_ns is None else end_ns
        tb = r.buffer()  # the closing thread's buffer: sequence numbers stay single-writer
        tb.spans.append(
            (
                self.id,
                p.id if p is not None else r.root_id,
                self.name,
                self.index,
                self.start,
                end,
                self.attrs or None,
                children,
                next(tb.span_close_seq),
            )
        )

    @property
    def open(self) -> bool:
        return self.tb is not None

    @property
    def span_id(self) -> str | None:
        """The span's 32-hex id once entered (None if it was dropped)."""
        return format(self.id, "032x") if hasattr(self, "id") else None

    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]:
        """Use the scope as a decorator: every call runs in a fresh span of this name."""
        name, index, attrs, cls = self.name, self.index, self.attrs, type(self)

        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            with cls(name, index, **attrs):
                result = fn(*args, **kwargs)
            return result

        return wrapper

    def __repr__(self) -> str:
        state = "open" if self.tb is not None else "closed"
        return f"<cirron.Scope {self.name!r} index={self.index} {state}>"


class Recorder:
    """Per-instance recording state: the scope stack, per-thread buffers, drop counters.

    One per :class:`cirron.Cirron`. ``Recorder.Scope`` is a :class:`Scope` subclass bound to it.
    """

    def __init__(self, *, pure: bool = False) -> None:
        """``pure``: run the pure-Python scope path even where the C one is built (tests)."""
        self.cur: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
            "cirron_scope", default=None
        )
        self.bind: Any = None
        self.enabled = True
        self._reset_process_state()
        if _hot is not None:
            self.bind = _hot.Binding(self, self.cur, self.tls, MAX_DEPTH)
        body: dict[str, Any] = {"__slots__": (), "rec": self, "_bind": self.bind}
        if pure:
            body.update(
                __init__=_PyScopeCore.__init__,
                __enter__=_PyScopeCore.__enter__,
                __exit__=_PyScopeCore.__exit__,
            )
        self.hot_path = "python" if pure or _hot is None else "c"
        if self.hot_path == "c":
            self.mark = self.bind.mark  # type: ignore[method-assign]
        self.Scope: type[Scope] = type("Scope", (Scope,), body)
        self.root_id: int | None = None  # the open session span's id, else marks say "root"
        # Structural spans (session, epochs) the flusher writes provisionally while open.
        self.structural: dict[int, Scope] = {}
        self.epoch_listeners: list[Callable[[Scope], None]] = []
        # Run when an owner (a framework callback) takes levels: implicit structure the torch
        # hooks opened meanwhile gives way at once (see ``claim``).
        self.claim_listeners: list[Callable[[], None]] = []
        self.release_listeners: list[Callable[[], None]] = []  # after ``release``
        # Given a closing ``ci.batches`` batch, returns the children hooks held for it (the
        # packed tuple of Scope.close), or None. Set by the torch hooks while installed.
        self.packer: Callable[[Scope], tuple[int, ...] | None] | None = None
        self.PackScope: type[Scope] = type("Scope", (self.Scope,), {"__slots__": (), "packs": True})
        self.on_new_buffer: Callable[[], None] | None = None
        self.wake: Callable[[], None] = _noop
        # >0 while an explicit owner (ci.epochs/ci.batches, a framework callback) holds a level.
        # "step": the owner records data_load/forward/backward/optimizer_step itself (torch
        # hooks stay silent); "data_load": the owner times fetching itself.
        self.owners = {"epoch": 0, "batch": 0, "step": 0, "data_load": 0}
        self.snapshots: deque[dict[str, Any]] = deque()
        self._warned: set[str] = set()
        self.internal_errors = 0
        self.last_internal_error: str | None = None

    def _reset_process_state(self) -> None:
        self.prefix = random.SystemRandom().getrandbits(64) | 1
        self.tls = threading.local()
        if self.bind is not None:
            self.bind.tls = self.tls  # also forgets the C path's cached buffer
        self.buffers: list[ThreadBuffer] = []
        self._buffer_numbers = itertools.count(1)
        self._buffers_lock = threading.Lock()
        self.pid = os.getpid()

    def enable(self) -> None:
        """Record for real (the default)."""
        if not self.enabled:
            self.enabled = True
            self._reset_process_state()

    def disable(self) -> None:
        """``profile(enabled=False)``: every buffer keeps nothing, at no cost per call."""
        self.enabled = False
        for tb in self.buffers:
            tb.marks = deque(maxlen=0)
            tb.spans = deque(maxlen=0)
        if self.bind is not None:
            self.bind.forget()  # the C path cached the old deques

    def set_root_id(self, root_id: int | None) -> None:
        """The session span's id (None: none open), seen by Python and C paths alike."""
        self.root_id = root_id
        if self.bind is not None:
            self.bind.root_id = root_id

    def reset_session(self) -> None:
        """After shutdown: forget the session; keep ids and buffers (they are drained)."""
        self.set_root_id(None)
        self.structural.clear()
        self.epoch_listeners.clear()
        self.owners = {"epoch": 0, "batch": 0, "step": 0, "data_load": 0}
        self.on_new_buffer = None
        self.wake = _noop

    def after_fork_in_child(self) -> None:
        """A forked child starts with empty buffers and its own id prefix."""
        self._reset_process_state()
        self.snapshots = deque()

    # -- slow paths called from the hot path ------------------------------------------------

    def new_buffer(self) -> ThreadBuffer:
        with self._buffers_lock:
            tb = ThreadBuffer(next(self._buffer_numbers), self.prefix)
            if not self.enabled:
                tb.marks = deque(maxlen=0)
                tb.spans = deque(maxlen=0)
            self.buffers.append(tb)
        self.tls.tb = tb
        hook = self.on_new_buffer
        if hook is not None:
            hook()
        return tb

    def buffer(self) -> ThreadBuffer:
        try:
            tb: ThreadBuffer = self.tls.tb
        except AttributeError:
            tb = self.new_buffer()
        return tb

    def live_parent(self, p: Scope | None) -> Scope | None:
        """Skip frames that were closed under us (out-of-order close, another thread)."""
        while p is not None and p.tb is None:
            p = p.parent
        return p

    def unwind(self, closing: Scope, current: Scope | None) -> None:
        """``closing`` is not innermost: close what is open above it, then pop it."""
        above: list[Scope] = []
        f = current
        while f is not None and f is not closing:
            above.append(f)
            f = f.parent
        if f is None:  # not on this context's stack (closed from another thread/task)
            return
        for frame in above:
            if frame.tb is not None:
                frame.attrs["closed_by_parent"] = True
                frame.close()
        self.cur.set(closing.parent)

    def depth_drop(
        self, scope: Scope | _PyScopeCore, tb: ThreadBuffer, stacklevel: int = 3
    ) -> None:
        """A scope deeper than :data:`MAX_DEPTH`: count it, warn once; it is not recorded.
        ``stacklevel`` points the warning at the user's ``with`` (the C path has no frame)."""
        tb.depth_drops += 1
        if tb.depth_drops == 1:
            self.warn_once(
                "depth",
                f"cirron: scope {scope.name!r} is deeper than {MAX_DEPTH}"
                " levels; it is not recorded (the block still runs).",
                stacklevel,
            )

    def warn_once(self, key: str, message: str, stacklevel: int = 3) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        try:
            warnings.warn(message, CirronWarning, stacklevel=stacklevel)
        except Exception:  # `-W error` must not turn a warning into an exception in user code
            pass

    def bad_value(self, name: str, value: Any, what: str = "value", stacklevel: int = 3) -> None:
        self.buffer().bad_values += 1
        if what == "value":
            msg = (
                f"cirron: mark({name!r}, <{type(value).__name__}>) was not recorded: a mark "
                "takes an int, float, bool, str, numpy scalar or 0-d tensor."
            )
        elif what == "kind":
            msg = (
                f"cirron: mark({name!r}, ..., kind={value!r}) was not recorded: kind is "
                "'point' or 'summary'."
            )
        else:
            msg = f"cirron: mark(name={value!r}) was not recorded: the name must be a str."
        self.warn_once(
            "bad_value",
            msg + " Further bad marks are counted in "
            "ci.health()['drops']['bad_mark_values'] without warning.",
            stacklevel,
        )

    # -- the hot path -----------------------------------------------------------------------

    def mark(self, name: str, value: Any, /, *, kind: str = "point", **attrs: Any) -> None:
        """Record one named value against the innermost open scope. Never raises.

        ``value``: int, float, bool, str (capped at 256 bytes), a numpy scalar or a 0-d tensor
        (converted later, off the training thread). ``kind``: ``"point"`` (a time series while
        the span is open) or ``"summary"`` (the span's final value).

        >>> import cirron as ci
        >>> ci.mark("loss", 0.25)
        >>> ci.mark("accuracy", 0.91, kind="summary", split="val")
        """
        # Hot path: written for speed. ``ci.mark`` is this very method of the default recorder
        # (or its C twin, ``Binding.mark``, which calls ``mark_value`` for unusual values).
        try:
            tb = self.tls.tb
        except AttributeError:
            tb = self.new_buffer()
        if type(value) not in _PLAIN:
            value = self.mark_value(name, value, 5)
            if value is None:
                return
        # A bad ``kind`` or a non-str name is caught (counted, warned once) at seal time.
        f = self.cur.get()
        n = next(tb.mark_seq)
        tb.marks.append(
            (
                n,
                perf_counter_ns(),
                f.id
                if f is not None and f.tb is not None
                else (self.root_id if f is None else self._mark_target(f)),
                name,
                value,
                kind,
                attrs or None,  # never an empty dict: see _RECORDS_UNTRACKABLE
            )
        )
        if not n & _WAKE_MASK and n:
            self.wake()

    def mark_value(self, name: str, value: Any, stacklevel: int = 4) -> Any:
        """A mark value that is not a plain int/float/str/bool, made recordable: a CPU tensor
        read now, a device tensor or numpy scalar wrapped or converted. None when it cannot be
        recorded: then it is counted and warned about once, the warning pointing at the user's
        ``mark`` call (``stacklevel``: 4 from C's ``Binding.mark``, 5 from ``Recorder.mark``)."""
        tv = type(value)
        if tv in _TORCH_TENSORS and value.is_cpu and not value.ndim:
            return value.item()  # reading a CPU tensor waits for no device
        coerced = _coerce_unusual(value)
        if coerced is _BAD:
            self.bad_value(name, value, "value", stacklevel)
            return None
        return coerced

    def marks_on(self, scope: Scope, values: dict[str, Any], kind: str = "point") -> None:
        """Record each numeric item of ``values`` as a mark on ``scope`` (open, or closing now),
        one clock read for all, without touching the scope stack: a framework callback's
        metrics for its batch (Keras ``logs``). Numbers are ints and floats (not bools), numpy
        scalars and 0-d tensors; anything else in ``values`` is skipped silently."""
        try:
            tb = self.tls.tb
        except AttributeError:
            tb = self.new_buffer()
        sid = scope.id
        now = perf_counter_ns()
        marks = tb.marks
        seq = tb.mark_seq
        for name, value in values.items():
            tv = type(value)
            if tv is not float and tv is not int:
                if tv is bool or tv is str:
                    continue
                value = _coerce_unusual(value)
                if value is _BAD or type(value) is str:
                    continue
            n = next(seq)
            marks.append((n, now, sid, name, value, kind, None))
            if not n & _WAKE_MASK and n:
                self.wake()

    def _mark_target(self, f: Scope | None) -> int | None:
        f = self.live_parent(f)
        return f.id if f is not None else self.root_id

    # -- primitives for loop wrappers and framework adapters ----------------------------------

    def open(
        self,
        name: str,
        index: int | None = None,
        attrs: dict[str, Any] | None = None,
        *,
        structural: bool = False,
    ) -> Scope:
        """Open a span as the innermost scope of the calling context and return it.

        Close it with ``scope.close()``. ``structural`` spans (epochs) are also written
        provisionally while open, so a crash still leaves them in the spool.
        """
        s = self.Scope(name, index, **(attrs or {}))
        s.__enter__()
        if structural and s.tb is not None:
            self.structural[s.id] = s
        return s

    def close(self, scope: Scope, end_ns: int | None = None) -> None:
        scope.close(end_ns)
        self.structural.pop(getattr(scope, "id", 0), None)
        if scope.name == "epoch" and hasattr(scope, "id"):
            self.fire_epoch_end(scope)

    def claim(self, *levels: str) -> None:
        """An owner takes ``levels`` (e.g. "epoch", "batch"): count it in :attr:`owners`, then
        let the hooks close or drop what they opened implicitly, before the owner reads
        :meth:`current`. Give the levels back with :meth:`release`."""
        owners = self.owners
        for level in levels:
            owners[level] = owners.get(level, 0) + 1
        for listener in list(self.claim_listeners):
            try:
                listener()
            except Exception as exc:
                self.internal_error("claim listener", exc)

    def release(self, *levels: str) -> None:
        owners = self.owners
        for level in levels:
            owners[level] = max(0, owners.get(level, 0) - 1)
        for listener in list(self.release_listeners):
            try:
                listener()
            except Exception as exc:
                self.internal_error("release listener", exc)

    def fire_epoch_end(self, scope: Scope) -> None:
        for listener in list(self.epoch_listeners):
            try:
                listener(scope)
            except Exception as exc:  # a listener's fault is ours, never the user's
                self.internal_error("epoch listener", exc)

    def span(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        *,
        parent: Scope | None = None,
        index: int | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> int:
        """Record a span that already happened (timed by the caller) and return its id.

        Without ``parent`` it goes under the innermost open scope. Framework hooks call this a
        few times per training step: the common case (an open innermost scope) costs no call."""
        try:
            tb = self.tls.tb
        except AttributeError:
            tb = self.new_buffer()
        if parent is None:
            parent = self.cur.get()
            if parent is not None and parent.tb is None:
                parent = self.live_parent(parent)
        sid: int = next(tb.span_ids)
        tb.spans.append(
            (
                sid,
                parent.id if parent is not None else self.root_id,
                name,
                index,
                start_ns,
                end_ns,
                attrs or None,
                None,
                next(tb.span_close_seq),
            )
        )
        return sid

    def new_batch_id(self) -> str:
        """A random 32-hex batch id (UUID4-sized; flusher thread only)."""
        return os.urandom(16).hex()

    def open_root(self, name: str, attrs: dict[str, Any]) -> Scope:
        """Open the session span: a root that is not pushed on any context's stack, so every
        thread and task without an open scope attaches to it. ``health()``'s internal-error
        count, and its one warning, start afresh with each session."""
        self.internal_errors = 0
        self.last_internal_error = None
        self._warned.discard("internal")
        s = self.Scope(name)
        s.attrs = dict(attrs)
        try:
            tb = self.tls.tb
        except AttributeError:
            tb = self.new_buffer()
        s.parent = None
        s.depth = 0
        s.id = next(tb.span_ids)
        s.tb = tb
        s.start = perf_counter_ns()
        self.set_root_id(s.id)
        self.structural[s.id] = s
        return s

    def discard_root(self, s: Scope | None) -> None:
        """Forget a session span that will never be closed (a failed ``profile()``)."""
        if s is not None:
            self.structural.pop(getattr(s, "id", 0), None)
            if self.root_id == getattr(s, "id", None):
                self.set_root_id(None)

    def close_root(self, s: Scope, attrs: dict[str, Any]) -> None:
        tb = s.tb
        if tb is None:
            return
        s.tb = None
        tb = self.buffer()
        s.attrs.update(attrs)
        self.structural.pop(s.id, None)
        if self.root_id == s.id:
            self.set_root_id(None)
        tb.spans.append(
            (
                s.id,
                None,
                s.name,
                None,
                s.start,
                perf_counter_ns(),
                s.attrs,
                None,
                next(tb.span_close_seq),
            )
        )

    def current(self) -> Scope | None:
        return self.live_parent(self.cur.get())

    def new_id(self) -> str:
        """A fresh 32-hex id (for snapshot records and the like; not for the hot path)."""
        try:
            tb = self.tls.tb
        except AttributeError:
            tb = self.new_buffer()
        return format(next(tb.span_ids), "032x")

    def epochs(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield ``iterable``'s items, each inside an ``epoch`` span indexed from 0."""
        self.owners["epoch"] += 1
        scope: Scope | None = None
        exhausted = False
        try:
            for i, item in enumerate(iterable):
                if scope is not None:
                    self.close(scope)
                scope = self.open("epoch", i, structural=True)
                yield item
            exhausted = True
        finally:
            self.owners["epoch"] -= 1
            if scope is not None and scope.open:
                if not exhausted:  # break, return or an exception in the loop body
                    scope.attrs["stopped_early"] = True
                self.close(scope)

    def batches(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield ``iterable``'s items, each inside a ``batch`` span indexed from 0.

        The span covers fetching the item and the loop body; the fetch time is stored as the
        ``data_load_ns`` attribute (a DataLoader also gets a ``data_load`` child span).
        """
        it = iter(iterable)
        owners = self.owners
        owners["batch"] += 1
        cur = self.cur
        tb = self.buffer()
        parent = self.live_parent(cur.get())
        depth = parent.depth + 1 if parent is not None else 1
        s: Scope | None = None
        try:
            if depth > MAX_DEPTH:  # too deep to record: iterate untouched, count the drops
                for item in it:
                    tb.depth_drops += 1
                    yield item
                return
            # Hot path: one iteration must stay well under a microsecond. One span object
            # serves the whole loop (a batch closes before the next opens), re-stamped with a
            # new id each iteration; one clock read is both a batch's end and the next one's
            # start; and while the innermost scope is still this object, the context variable
            # is left alone between batches.
            s = object.__new__(self.PackScope)
            s.name = "batch"
            s.parent = parent
            s.depth = depth
            s.attrs = {}
            spans = tb.spans
            next_id = tb.span_ids.__next__
            next_close = tb.span_close_seq.__next__
            parent_id = parent.id if parent is not None else self.root_id
            i = 0
            pushed = False
            t0 = perf_counter_ns()
            while True:
                s.index = i
                s.id = sid = next_id()
                s.tb = tb
                if not pushed:
                    cur.set(s)
                    pushed = True
                s.start = t0
                try:
                    item = next(it)
                except StopIteration:  # the fetch found nothing: this batch never existed
                    s.tb = None
                    if cur.get() is s:
                        cur.set(parent)
                    s = None
                    return
                s.attrs = attrs = {"data_load_ns": perf_counter_ns() - t0}
                yield item
                end = perf_counter_ns()
                if s.tb is not None:
                    s.tb = None
                    if cur.get() is not s:  # the body left scopes open, or reset the stack
                        self.unwind(s, cur.get())
                        pushed = False
                    # Only data_load_ns? Record the bare int (see _RECORDS_UNTRACKABLE).
                    rec_attrs = attrs if len(attrs) != 1 else attrs.get("data_load_ns", attrs)
                    packer = self.packer
                    spans.append(
                        (
                            sid,
                            parent_id,
                            "batch",
                            i,
                            t0,
                            end,
                            rec_attrs,
                            packer(s) if packer is not None else None,
                            next_close(),
                        )
                    )
                else:  # closed from outside (out-of-order close): open the next one afresh
                    pushed = False
                t0 = end
                i += 1
        finally:
            owners["batch"] -= 1
            if s is not None and s.tb is not None:  # break, return or an exception in the body
                if not hasattr(s, "attrs"):
                    s.attrs = {}
                # The loop body's exception never reaches the generator (it is only closed),
                # so its type is not known here; the session records a crash.
                s.attrs["stopped_early"] = True
                s.__exit__(None, None, None)

    # -- faults --------------------------------------------------------------------------------

    def internal_error(self, where: str, exc: BaseException) -> None:
        """Count a fault of cirron's own and warn once. Never raises.

        Every fault is also appended to :data:`INTERNAL_ERRORS`, which cirron's own test suite
        checks after each test, so a swallowed fault still fails the tests.
        """
        from cirron.core.errors import CirronInternalWarning

        self.internal_errors += 1
        self.last_internal_error = f"{where}: {type(exc).__name__}: {exc}"
        if len(INTERNAL_ERRORS) < 100:
            INTERNAL_ERRORS.append(self.last_internal_error)
        if "internal" not in self._warned:
            self._warned.add("internal")
            try:
                warnings.warn(
                    f"cirron caught an internal error ({self.last_internal_error}); "
                    "recording continues. See ci.health().",
                    CirronInternalWarning,
                    stacklevel=2,
                )
            except Exception:  # warnings configured as errors must not escape either
                pass


# Faults caught by any Recorder in this process (bounded); see Recorder.internal_error.
INTERNAL_ERRORS: list[str] = []


def _noop() -> None:
    return None
