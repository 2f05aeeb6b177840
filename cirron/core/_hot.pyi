# Types of the optional C extension cirron/core/_hot.c (the scope hot path).
from contextvars import ContextVar
from typing import Any, Literal

WAKE_MASK: int
SOURCE_HASH: str

def perf_counter_ns() -> int: ...

class Binding:
    tls: Any
    root_id: int | None
    def __init__(self, rec: Any, cur: ContextVar[Any], tls: Any, max_depth: int) -> None: ...
    def forget(self) -> None: ...
    def mark(self, name: str, value: Any, /, *, kind: str = "point", **attrs: Any) -> None: ...

class ScopeCore:
    name: str
    index: int | None
    attrs: dict[str, Any]
    tb: Any
    parent: Any
    id: int
    start: int
    depth: int
    def __init__(self, name: str, /, index: int | None = None, **attrs: Any) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, et: Any, ev: Any, tb: Any) -> Literal[False]: ...
