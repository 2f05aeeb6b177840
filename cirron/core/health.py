"""``ci.health()``: is recording healthy, and what, if anything, was lost? Never raises."""

from __future__ import annotations

from typing import Any

__all__ = ["health_report"]


def health_report(cirron: Any) -> dict[str, Any]:
    """Counters of one :class:`cirron.Cirron`. Every drop is counted here, by reason."""
    rec = cirron._rec
    p = cirron.profiler
    active = p is not None and not p._finished
    cur = rec.current()
    report: dict[str, Any] = {
        "enabled": bool(p is not None and p.enabled and active),
        "status": p.status if p is not None else "not started",
        "session_id": p.session_id if p is not None else None,
        "transport": "file_only",
        "frameworks_installed": list(p.frameworks) if p is not None else [],
        "scope_depth": cur.depth if cur is not None else 0,
        "hot_path": rec.hot_path,  # "c" (the built extension) or "python"
        "threads": len(rec.buffers),
        "output_dir": None,
        "outputs": list(p.outputs) if p is not None else [],
    }
    drops: dict[str, int] = {}
    if p is not None and p.sealer is not None:
        drops = p.sealer.drops.as_dict()
    # Counts still sitting in thread buffers (not yet sealed) are part of the truth too.
    drops["scopes_depth"] = drops.get("scopes_depth", 0) + sum(tb.depth_drops for tb in rec.buffers)
    drops["bad_mark_values"] = drops.get("bad_mark_values", 0) + sum(
        tb.bad_values for tb in rec.buffers
    )
    report["drops"] = drops
    report["mark_drop_count"] = drops.get("marks", 0)
    report["span_drop_count"] = drops.get("spans", 0)
    spool = p.spool if p is not None else None
    if spool is not None:
        st = spool.stats
        drops["spool_files"] = st.evicted_files
        report.update(
            output_dir=str(spool.root),
            spool_files=st.files,
            spool_bytes=st.bytes,
            spool_write_failures=st.write_failures,
            spool_last_error=st.last_error,
            spool_recreated=st.recreated_dirs,
        )
    report["spool_drop_count"] = drops.get("spool_files", 0)
    report.setdefault("spool_bytes", 0)
    report.setdefault("spool_files", 0)
    f = p.flusher if p is not None else None
    report["flush_latency_ns"] = f.stats.last_latency_ns if f is not None else 0
    report["flush_latency_max_ns"] = f.stats.max_latency_ns if f is not None else 0
    report["batches_written"] = f.stats.batches if f is not None else 0
    t = p.transport if p is not None else None
    if t is not None:
        try:
            th = dict(t.health())
            report["transport"] = th.pop("transport", getattr(t, "name", "file_only"))
            report["transport_stats"] = th
        except Exception as exc:
            report["transport_stats"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["internal_errors"] = rec.internal_errors
    report["last_internal_error"] = rec.last_internal_error
    return report
