"""``ci.trace()``: read the current session back, including what was already flushed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["read_session"]


def read_session(
    cirron: Any,
    *,
    format: str = "tree",
    name: str | None = None,
    last: int | None = None,
    **kw: Any,
) -> Any:
    """Flush, then render this instance's newest session from its spool."""
    from cirron.core import trace as tr

    p = cirron.profiler
    if p is not None:
        p.flush()
    session_id = p.session_id if p is not None else kw.pop("session_id", None)
    root = Path(
        p.settings.output_dir
        if p is not None and p.settings is not None
        else cirron.settings.output_dir
    ).expanduser()
    memory = p.flusher.memory if p is not None and p.flusher is not None else None
    if memory is not None:  # the spool sink is off: read the recent batches kept in memory
        batches = list(memory)
    else:
        batches = [b for _, b in tr.iter_batches(root / "spool")]
    data = tr.load(batches)
    try:
        return tr.render(data, session_id=session_id, format=format, name=name, last=last, **kw)
    except tr.SessionNotFound:  # a session that has recorded nothing yet reads back empty
        return tr.render(tr.load([]), format=format, name=name, last=last, **kw)
