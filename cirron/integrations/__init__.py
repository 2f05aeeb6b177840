"""The registry behind ``profile()`` autodetect, ``ci.watch()`` and ``ci.wrap()``.

Detection works from a table of module names, so finding out what the program uses never
imports a framework: a framework counts as in use when its module is already in
``sys.modules``. A framework imported only *after* ``profile()`` is caught by a post-import hook.

Each adapter module may define:

* ``install(cirron, profiler) -> Callable[[], None]``: install hooks, return their undo
  (frameworks with automatic hooks, i.e. torch);
* ``watch(cirron, model) -> bool``: take a model for snapshots, True if it was one of its own;
* ``wrap(cirron, obj) -> object | None``: instrument ``obj``, or None if it is not its type.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from cirron.core.errors import CirronDependencyError, CirronError, CirronWarning

__all__ = ["FRAMEWORKS", "install_frameworks", "watch_model", "wrap"]


@dataclass(frozen=True)
class Framework:
    name: str
    adapter: str  # cirron.integrations.<module>
    modules: tuple[str, ...]  # top-level modules whose presence means "in use"
    extra: str  # the cirron-sdk extra that installs it
    package: str  # what to tell the user is missing


FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework("torch", "cirron.integrations.torch", ("torch",), "torch", "torch"),
        Framework(
            "lightning",
            "cirron.integrations.lightning",
            ("lightning", "pytorch_lightning"),
            "lightning",
            "lightning",
        ),
        Framework("keras", "cirron.integrations.keras", ("keras",), "keras", "keras"),
        Framework(
            "tensorflow", "cirron.integrations.keras", ("tensorflow",), "tensorflow", "tensorflow"
        ),
        Framework(
            "sklearn", "cirron.integrations.sklearn", ("sklearn",), "sklearn", "scikit-learn"
        ),
        Framework("onnx", "cirron.integrations.onnx", ("onnxruntime",), "onnx", "onnxruntime"),
    )
}
# cirron.yaml's ``framework`` narrows autodetect to these.
_PROJECT_FRAMEWORKS = {
    "pytorch": ("torch", "lightning"),
    "tensorflow": ("keras", "tensorflow"),
    "sklearn": ("sklearn",),
    "onnx": ("onnx",),
}
_ALIASES = {
    "pytorch": "torch",
    "pytorch_lightning": "lightning",
    "scikit-learn": "sklearn",
    "onnxruntime": "onnx",
    "tf": "tensorflow",
}


def _installed(fw: Framework) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in fw.modules)


def _adapter(fw: Framework) -> ModuleType:
    return importlib.import_module(fw.adapter)


def _try_adapter(cirron: Any, fw: Framework) -> ModuleType | None:
    """The adapter module, or None when it cannot be imported (counted as our own fault:
    the framework is imported, so its adapter should load)."""
    try:
        return _adapter(fw)
    except ImportError as exc:
        cirron._rec.internal_error(f"importing {fw.adapter}", exc)
        return None


def install_frameworks(cirron: Any, profiler: Any, requested: Sequence[str] | None) -> list[str]:
    """Install hooks for ``requested`` frameworks, or autodetect when None. Returns the names
    of the frameworks now hooked (or, for callback/wrapper frameworks, in use)."""
    if requested is not None:
        names = []
        for raw in requested:
            name = _ALIASES.get(raw, raw)
            if name not in FRAMEWORKS:
                warnings.warn(
                    f"cirron: unknown framework {raw!r} in profile(frameworks=...); "
                    f"known: {', '.join(FRAMEWORKS)}.",
                    CirronWarning,
                    stacklevel=4,
                )
                continue
            fw = FRAMEWORKS[name]
            if not _installed(fw):
                raise CirronDependencyError.missing(
                    fw.package, fw.extra, f"profile(frameworks=[{raw!r}])"
                )
            for m in fw.modules:  # asked for explicitly: importing it is what the user wants
                if importlib.util.find_spec(m) is not None:
                    importlib.import_module(m)
                    break
            names.append(name)
        return [n for n in names if _activate(cirron, profiler, FRAMEWORKS[n])]
    allowed = set(FRAMEWORKS)
    proj = cirron.project
    if proj is not None and getattr(proj, "framework", None) in _PROJECT_FRAMEWORKS:
        allowed = set(_PROJECT_FRAMEWORKS[proj.framework])
    active = []
    for fw in FRAMEWORKS.values():
        if fw.name not in allowed:
            continue
        if any(m in sys.modules for m in fw.modules):
            if _activate(cirron, profiler, fw):
                active.append(fw.name)
        elif _has_install(fw) and _installed(fw):
            _PostImportHook.watch(fw.modules[0], _later(cirron, profiler, fw))
    return active


def _has_install(fw: Framework) -> bool:
    return fw.name == "torch"


def _later(cirron: Any, profiler: Any, fw: Framework) -> Callable[[], None]:
    def activate() -> None:
        if profiler._finished or cirron.profiler is not profiler:
            return
        try:
            if _activate(cirron, profiler, fw):
                profiler.frameworks.append(fw.name)
        except Exception as exc:
            cirron._rec.internal_error(f"installing {fw.name} hooks after import", exc)

    return activate


def _activate(cirron: Any, profiler: Any, fw: Framework) -> bool:
    if not _has_install(fw):
        return True  # callback / wrapper frameworks need no hooks
    mod = _adapter(fw)
    install = getattr(mod, "install", None)
    if install is None:
        return True  # callback / wrapper frameworks need no hooks
    undo = install(cirron, profiler)
    if undo is not None:
        profiler._undo.append(undo)
    return True


def watch_model(cirron: Any, model: Any) -> None:
    """Hand ``model`` to the adapter of its framework for per-epoch statistics."""
    for name in ("keras", "torch"):
        fw = FRAMEWORKS[name]
        if any(m in sys.modules for m in fw.modules):
            watch = getattr(_try_adapter(cirron, fw), "watch", None)
            if watch is not None and watch(cirron, model):
                return
    raise CirronError(
        f"ci.watch() got a {type(model).__module__}.{type(model).__qualname__}; it takes a "
        "torch.nn.Module or a Keras model."
    )


_WRAP_ORDER = ("sklearn", "onnx", "keras", "lightning", "torch")


def wrap(cirron: Any, obj: Any) -> Any:
    """Instrument ``obj`` with the adapter of its framework (see :func:`cirron.wrap`)."""
    if getattr(obj, "__cirron_wrapped__", False):
        return obj
    for name in _WRAP_ORDER:
        fw = FRAMEWORKS[name]
        if not any(m in sys.modules for m in fw.modules):
            continue  # the program has not imported it, so obj cannot be one of its types
        wrapper = getattr(_try_adapter(cirron, fw), "wrap", None)
        if wrapper is None:
            continue
        out = wrapper(cirron, obj)
        if out is not None:
            return out
    raise CirronError(
        f"ci.wrap() does not know how to instrument a {type(obj).__module__}."
        f"{type(obj).__qualname__}. Supported: scikit-learn estimators, "
        "onnxruntime.InferenceSession, Keras models, LightningModules and torch.nn.Modules. "
        "For other code, use ci.scope() and ci.mark()."
    )


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs callbacks once a top-level module has finished importing."""

    _lock = threading.Lock()
    _pending: dict[str, list[Callable[[], None]]] = {}
    _installed: _PostImportHook | None = None

    @classmethod
    def watch(cls, module: str, callback: Callable[[], None]) -> None:
        with cls._lock:
            if module in sys.modules:
                run_now = True
            else:
                run_now = False
                cls._pending.setdefault(module, []).append(callback)
                if cls._installed is None:
                    cls._installed = cls()
                    sys.meta_path.insert(0, cls._installed)
        if run_now:
            callback()

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._pending:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec: importlib.machinery.ModuleSpec | None = (
                find(fullname, path, target) if find is not None else None
            )
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, name: str) -> None:
        self.inner = inner
        self.name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        result: ModuleType | None = self.inner.create_module(spec)
        return result

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__.loader = self.inner  # type: ignore[union-attr]
        self.inner.exec_module(module)
        with _PostImportHook._lock:
            callbacks = _PostImportHook._pending.pop(self.name, [])
        for cb in callbacks:
            try:
                cb()
            except Exception:
                pass
