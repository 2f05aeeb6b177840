"""A synthetic spool writer for the read-side tests: realistic sessions without the runtime.

>>> run = write_training_run(tmp / ".cirron", epochs=3, batches=32)   # doctest: +SKIP

It lays out a session → epoch → batch → data_load/forward/backward/optimizer_step tree with
point marks (one NaN loss as ``null`` + ``attrs.non_finite``), summary marks per epoch,
snapshots per epoch, provisional (``attrs.open``) records of the session and epochs in the
early batches, and splits the records over several batch files sealed in time order. Every
file it writes validates against the schema; the broken ones (``write_corrupt`` and friends)
are for tests that remove them again before they return.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.schema import validate_batch

SDK = "0.1.0"
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
MS = 1_000_000


class Ids:
    """Deterministic 32-hex ids: a per-process prefix plus a counter, like the runtime's."""

    def __init__(self, seed: int) -> None:
        self.prefix = random.Random(seed).getrandbits(64) | 1
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return format((self.prefix << 64) | (1 << 40) | self.n, "032x")


def span(
    id: str, name: str, parent: str | None, start: int, end: int, *, index: int | None = None,
    session_id: str | None = None, rank: int = 0, pid: int = 4242, attrs: dict[str, Any] | None = None,
    mark_ids: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    rec = {
        "id": id, "name": name, "parent_id": parent, "index": index, "start_ns": start,
        "end_ns": end, "cpu_ns": None, "gpu_ns": None, "memory_peak_bytes": None,
        "thread_id": 1, "pid": pid, "rank": rank, "attrs": dict(attrs or {}),
        "mark_ids": list(mark_ids or []),
    }  # fmt: skip
    if session_id is not None:
        rec["session_id"] = session_id
    return rec


def mark(
    id: str, span_id: str, name: str, value: Any, ts: int, *, kind: str = "point"
) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if isinstance(value, float) and not math.isfinite(value):
        attrs["non_finite"] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        value = None
    vtype = {bool: "bool", int: "int", str: "string"}.get(type(value), "float")
    return {"id": id, "span_id": span_id, "name": name, "value_type": vtype, "value": value,
            "attrs": attrs, "ts_ns": ts, "kind": kind}  # fmt: skip


def snapshot(
    id: str, span_id: str, tensor: str, ts: int, seed: float, blob: str | None = None
) -> dict[str, Any]:
    return {
        "id": id, "span_id": span_id, "tensor_name": tensor, "shape": [4, 3], "dtype": "float32",
        "mode": "full" if blob else "stats",
        "stats": {"mean": 0.01 * seed, "std": 0.5 + seed / 100, "min": -1.0, "max": 1.0,
                  "norm": 2.0 + seed, "histogram": {"bins": [-1.0 + i / 8 for i in range(17)],
                                                     "counts": [1] * 12 + [0] * 4}},
        "blob_uri": blob, "ts_ns": ts, "attrs": {},
    }  # fmt: skip


def write_batch(
    spool: Path, spans: list[dict[str, Any]], marks: list[dict[str, Any]] = (),  # type: ignore[assignment]
    snapshots: list[dict[str, Any]] = (), *, created_ns: int, batch_id: str | None = None,  # type: ignore[assignment]
    validate: bool = True, **extra: Any,
) -> Path:  # fmt: skip
    """Write one schema-valid batch file (validated before it is written)."""
    batch_id = batch_id or format(random.Random(created_ns).getrandbits(128), "032x")
    batch = {"schema_version": 1, "sdk_version": SDK, "batch_id": batch_id, "created_ns": created_ns,
             "spans": list(spans), "marks": list(marks), "snapshots": list(snapshots), **extra}  # fmt: skip
    if validate and batch["schema_version"] == 1:
        validate_batch(batch)
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f"{created_ns:020d}-{batch_id}.json"
    path.write_text(json.dumps(batch, allow_nan=False))
    return path


@dataclass
class Run:
    """What ``write_training_run`` wrote, for the tests' assertions."""

    root: Path
    session_id: str
    epoch_ids: list[str] = field(default_factory=list)
    batch_ids: list[list[str]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0
    nan_batch: tuple[int, int] | None = None


def write_training_run(
    root: Path, *, epochs: int = 3, batches: int = 32, seed: int = 0, start_ns: int = T0,
    rank: int = 0, world_size: int = 1, run_id: str | None = None, name: str = "demo",
    version: str = "0.1.0", status: str | None = "finished", pid: int = 4242, per_file: int = 200,
    validation: bool = True, snapshots: bool = True, nan_at: tuple[int, int] | None = (0, 5),
    validate: bool = True,
) -> Run:  # fmt: skip
    """A whole session in ``root/spool`` (and blobs in ``root/snapshots``).

    ``status=None`` is a kill -9: the last records never reach the spool and the session exists
    only as a provisional record. ``validate=False`` skips the per-batch schema check (for big
    spools written outside the test's own directory; the same generator is checked elsewhere).
    """
    rng = random.Random(seed)
    ids = Ids(seed * 7919 + rank + 1)
    sid = ids()
    run = Run(root=root, session_id=sid, start_ns=start_ns, nan_batch=nan_at)
    recs: list[tuple[int, str, dict[str, Any]]] = []  # (close time, kind, record)
    t = start_ns + 2 * MS
    session_attrs = {"name": name, "version": version, "framework": "none", "device": "cpu",
                     "rank": rank, "world_size": world_size, "sdk_version": SDK, "pid": pid,
                     "host": f"node-{rank}"}  # fmt: skip
    if run_id:
        session_attrs["run_id"] = run_id

    def add_span(rec: dict[str, Any]) -> None:
        recs.append((rec["end_ns"], "span", rec))

    def add_mark(span_id: str, mname: str, value: Any, ts: int, kind: str = "point") -> str:
        mid = ids()
        recs.append((ts, "mark", mark(mid, span_id, mname, value, ts, kind=kind)))
        return mid

    opens: list[tuple[int, dict[str, Any]]] = []  # (open time, provisional template)
    for e in range(epochs):
        eid = ids()
        run.epoch_ids.append(eid)
        run.batch_ids.append([])
        e_start = t
        e_marks = []
        for b in range(batches):
            bid = ids()
            run.batch_ids[-1].append(bid)
            b_start, cur, kids = t, t, []
            for child, base in (
                ("data_load", 0.8),
                ("forward", 1.2),
                ("backward", 1.6),
                ("optimizer_step", 0.4),
            ):
                dur = int(base * MS * (0.8 + 0.4 * rng.random()))
                kids.append(
                    span(ids(), child, bid, cur, cur + dur, session_id=sid, rank=rank, pid=pid)
                )
                cur += dur + 20_000
            loss = 2.3 * math.exp(-0.05 * (e * batches + b)) + 0.05 * rng.random()
            loss = math.nan if nan_at == (e, b) else loss
            run.losses.append(loss)
            mid = add_mark(bid, "loss", loss, cur)
            t = cur + 30_000
            add_span(
                span(
                    bid,
                    "batch",
                    eid,
                    b_start,
                    t,
                    index=b,
                    session_id=sid,
                    rank=rank,
                    pid=pid,
                    mark_ids=[mid],
                )
            )
            for k in kids:
                add_span(k)
        if validation:
            vid = ids()
            v_start = t
            for vb in range(2):
                vb_id = ids()
                add_span(span(vb_id, "batch", vid, t, t + 2 * MS, index=vb, session_id=sid, rank=rank,
                              pid=pid, attrs={"phase": "validation"}))  # fmt: skip
                t += 2 * MS + 10_000
            add_span(span(vid, "validation", eid, v_start, t, session_id=sid, rank=rank, pid=pid))
        e_marks.append(add_mark(eid, "val_acc", round(0.7 + 0.05 * e, 4), t, kind="summary"))
        e_marks.append(add_mark(eid, "lr", 0.001 / (e + 1), t))
        if snapshots:
            blob = None
            if e == epochs - 1:
                blob_dir = root / "snapshots" / eid
                blob_dir.mkdir(parents=True, exist_ok=True)
                (blob_dir / "weights.safetensors").write_bytes(
                    b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
                )
                blob = (blob_dir / "weights.safetensors").resolve().as_uri()
            for i, tensor in enumerate(("fc1.weight", "fc1.bias", "fc1.weight.grad")):
                recs.append(
                    (
                        t,
                        "snapshot",
                        snapshot(
                            ids(),
                            eid,
                            tensor,
                            t,
                            e + i / 10,
                            blob if "grad" not in tensor else None,
                        ),
                    )
                )
        e_rec = span(
            eid,
            "epoch",
            sid,
            e_start,
            t,
            index=e,
            session_id=sid,
            rank=rank,
            pid=pid,
            mark_ids=e_marks,
        )
        add_span(e_rec)
        opens.append((e_start, e_rec))
        t += 1 * MS
    run.end_ns = t + MS
    session_rec = span(sid, "cirron.session", None, start_ns, run.end_ns, session_id=sid, rank=rank,
                       pid=pid, attrs={**session_attrs, "status": status or "finished"})  # fmt: skip
    if status is not None:
        add_span(session_rec)
    run.files = _seal(
        root / "spool",
        recs,
        opens,
        session_rec,
        per_file,
        crashed=status is None,
        validate=validate,
    )
    return run


def _seal(
    spool: Path, recs: list[tuple[int, str, dict[str, Any]]], opens: list[tuple[int, dict[str, Any]]],
    session_rec: dict[str, Any], per_file: int, *, crashed: bool, validate: bool = True,
) -> list[Path]:  # fmt: skip
    """Cut records into batches in close-time order; each batch re-writes what is still open."""
    recs.sort(key=lambda r: (r[0], r[1] != "span"))
    chunks = [recs[i : i + per_file] for i in range(0, len(recs), per_file)]
    if crashed and len(chunks) > 1:
        chunks = chunks[:-1]  # killed: the last interval never reached the spool
    files = []
    for chunk in chunks:
        seal = chunk[-1][0] + 1000
        spans = [r for _, k, r in chunk if k == "span"]
        closed = {s["id"] for s in spans}
        for opened, rec in [(session_rec["start_ns"], session_rec), *opens]:
            if opened <= seal < rec["end_ns"] and rec["id"] not in closed:
                attrs = {k: v for k, v in rec["attrs"].items() if k != "status"}
                spans.append({**rec, "end_ns": seal, "attrs": {**attrs, "open": True}})
        files.append(write_batch(spool, spans, [r for _, k, r in chunk if k == "mark"],
                                 [r for _, k, r in chunk if k == "snapshot"], created_ns=seal, validate=validate))  # fmt: skip
    return files


# -- broken files (remove them before the test returns: the suite validates every spool file) --


def write_corrupt(spool: Path, created_ns: int) -> Path:
    path = spool / f"{created_ns:020d}-{'c' * 32}.json"
    path.write_text("this is { not json")
    return path


def write_truncated(spool: Path, created_ns: int) -> Path:
    good = write_batch(spool, [], created_ns=created_ns, batch_id="d" * 32)
    good.write_text(good.read_text()[:40])
    return good


def write_future_version(spool: Path, created_ns: int) -> Path:
    path = spool / f"{created_ns:020d}-{'e' * 32}.json"
    path.write_text(json.dumps({"schema_version": 2, "sdk_version": "9.0.0", "batch_id": "e" * 32,
                                "created_ns": created_ns, "spans": [], "marks": [], "snapshots": []}))  # fmt: skip
    return path


def write_non_object(spool: Path, created_ns: int) -> Path:
    path = spool / f"{created_ns:020d}-{'f' * 32}.json"
    path.write_text("[1, 2, 3]")
    return path
