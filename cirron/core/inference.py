"""``@ci.inference``: one ``inference`` span per request, for sync, async and streaming code.

Each call gets a request id and its own span; scopes and marks inside the call nest under it,
isolated per thread and per asyncio task. A generator's span stays open while it streams and
records ``time_to_first_item_ns`` and ``items``.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from time import perf_counter_ns
from typing import Any

from cirron.core.recorder import Recorder

__all__ = ["inference_decorator"]


def inference_decorator(
    rec: Recorder, fn: Callable[..., Any] | None = None, *, config: dict[str, Any] | None = None
) -> Any:
    """Implements ``cirron.inference``; usable bare (``@ci.inference``) or called."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        name = getattr(f, "__qualname__", getattr(f, "__name__", "function"))
        if inspect.isasyncgenfunction(f):
            wrapper: Callable[..., Any] = _async_gen(rec, f, name)
        elif inspect.iscoroutinefunction(f):
            wrapper = _async(rec, f, name)
        elif inspect.isgeneratorfunction(f):
            wrapper = _gen(rec, f, name)
        else:
            wrapper = _sync(rec, f, name)
        wrapper._cirron_config = config  # type: ignore[attr-defined]
        return wrapper

    return decorate(fn) if fn is not None else decorate


def _attrs(name: str) -> dict[str, Any]:
    return {"function": name, "request_id": os.urandom(16).hex()}


def _sync(rec: Recorder, f: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with rec.Scope("inference", None, **_attrs(name)):
            return f(*args, **kwargs)

    return wrapper


def _async(rec: Recorder, f: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(f)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        with rec.Scope("inference", None, **_attrs(name)):
            return await f(*args, **kwargs)

    return wrapper


def _gen(rec: Recorder, f: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with rec.Scope("inference", None, **_attrs(name)) as s:
            for n, item in enumerate(f(*args, **kwargs), 1):
                if n == 1:
                    s.attrs["time_to_first_item_ns"] = perf_counter_ns() - s.start
                s.attrs["items"] = n
                yield item

    return wrapper


def _async_gen(rec: Recorder, f: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(f)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        with rec.Scope("inference", None, **_attrs(name)) as s:
            n = 0
            async for item in f(*args, **kwargs):
                if n == 0:
                    s.attrs["time_to_first_item_ns"] = perf_counter_ns() - s.start
                n += 1
                s.attrs["items"] = n
                yield item

    return wrapper
