"""``cirron spool inspect | flush | clear``: read, upload or delete the local spool.

``--dir`` takes the ``.cirron`` directory or its ``spool/`` subdirectory (default ``./.cirron``),
so a spool copied from another machine works the same. Exit codes: 0 success, 1 error (named in
the message), 2 usage.

Example::

    $ cirron spool inspect
    Spool: /home/me/project/.cirron/spool  (3 files, 0.01 MB)
    ...
    $ CIRRON_API_KEY=... cirron spool flush
    Uploaded 3 of 3 pending batches to https://api.cirron.com/api/traces.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

__all__ = ["spool"]

SCHEMA_VERSION = 1
DEFAULT_ENDPOINT = "https://api.cirron.com"
DEFAULT_INGEST_PATH = "/api/traces"


@dataclass
class Entry:
    """One batch file as ``inspect`` shows it."""

    file: str
    batch_id: str
    created_ns: int
    time: str
    bytes: int
    spans: int
    marks: int
    snapshots: int
    state: str  # "sent" | "pending"


@click.group("spool")
def spool() -> None:
    """Inspect, upload or delete the local spool (./.cirron/spool)."""


_DIR = click.option(
    "--dir",
    "dir_",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The .cirron directory or its spool/ subdirectory (default: ./.cirron).",
)


# -- inspect -----------------------------------------------------------------------------------


@spool.command("inspect")
@_DIR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def inspect_cmd(dir_: Path | None, as_json: bool) -> None:
    """List every batch: time, size, spans / marks / snapshots, sent or pending."""
    spool_dir = resolve_spool_dir(dir_)
    entries, skipped, total = read_spool(spool_dir)
    for name, reason in skipped:
        click.echo(f"warning: skipped {spool_dir / name}: {reason}", err=True)
    n_files = len(entries) + len(skipped)
    if as_json:
        doc = {
            "spool": str(spool_dir),
            "files": n_files,
            "bytes": total,
            "sent": sum(e.state == "sent" for e in entries),
            "pending": sum(e.state == "pending" for e in entries),
            "batches": [asdict(e) for e in entries],
            "skipped": [{"file": n, "reason": r} for n, r in skipped],
            "oldest": asdict(entries[0]) if entries else None,
            "newest": asdict(entries[-1]) if entries else None,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"Spool: {spool_dir}  ({n_files} files, {total / 1e6:.2f} MB)")
    if not entries:
        click.echo("No batches.")
        return
    if sys.stdout.isatty():
        _rich_table(entries)
    else:
        _plain_table(entries)
    sent = sum(e.state == "sent" for e in entries)
    click.echo(f"{sent} sent, {len(entries) - sent} pending")
    click.echo(f"Oldest: {entries[0].time}  {entries[0].file}")
    click.echo(f"Newest: {entries[-1].time}  {entries[-1].file}")


def _plain_table(entries: list[Entry]) -> None:
    rows = [("TIME", "SIZE", "SPANS", "MARKS", "SNAPSHOTS", "STATE", "BATCH")]
    rows += [
        (e.time, _size(e.bytes), str(e.spans), str(e.marks), str(e.snapshots), e.state, e.batch_id)
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _rich_table(entries: list[Entry]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for title in ("time", "size", "spans", "marks", "snapshots", "state", "batch"):
        table.add_column(title, justify="right" if title in ("size", "spans", "marks") else "left")
    for e in entries:
        state = "[green]sent[/]" if e.state == "sent" else "[yellow]pending[/]"
        cells = (e.time, _size(e.bytes), str(e.spans), str(e.marks), str(e.snapshots), state)
        table.add_row(*cells, e.batch_id)
    Console().print(table)


def read_spool(spool_dir: Path) -> tuple[list[Entry], list[tuple[str, str]], int]:
    """Every readable batch oldest first, the skipped files with why, and the bytes of all."""
    from cirron.core.ledger import Ledger
    from cirron.core.transport import BATCH_NAME

    sent = Ledger(spool_dir).sent_ids()
    entries: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    total = 0
    for name in sorted(n for n in os.listdir(spool_dir) if BATCH_NAME.match(n)):
        try:
            data = (spool_dir / name).read_bytes()
        except FileNotFoundError:  # evicted while we looked
            continue
        except OSError as exc:
            skipped.append((name, f"unreadable: {exc.strerror or exc}"))
            continue
        total += len(data)
        entry = _entry(name, data, sent)
        if isinstance(entry, str):
            skipped.append((name, entry))
        else:
            entries.append(entry)
    return entries, skipped, total


def _entry(name: str, data: bytes, sent: frozenset[str]) -> Entry | str:
    """The row for one file, or why it was skipped."""
    try:
        batch = json.loads(data)
    except ValueError as exc:
        return f"corrupt or truncated JSON ({exc})"
    if not isinstance(batch, dict):
        return "not a batch object"
    if batch.get("schema_version") != SCHEMA_VERSION:
        return f"unknown schema_version {batch.get('schema_version')!r} (this cirron reads 1)"
    created_ns, batch_id = int(name[:20]), name[21:53]

    def count(key: str) -> int:
        value = batch.get(key)
        return len(value) if isinstance(value, list) else 0

    return Entry(
        file=name,
        batch_id=batch_id,
        created_ns=created_ns,
        time=_iso(created_ns),
        bytes=len(data),
        spans=count("spans"),
        marks=count("marks"),
        snapshots=count("snapshots"),
        state="sent" if batch_id in sent else "pending",
    )


# -- flush -------------------------------------------------------------------------------------


@spool.command("flush")
@_DIR
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=3,
    show_default=True,
    help="Retries per batch on 429/5xx, timeouts and connection errors.",
)
def flush_cmd(dir_: Path | None, retries: int) -> None:
    """Upload the pending batches (and the snapshot blobs they cite) to the platform."""
    from cirron.core.ledger import Ledger
    from cirron.core.transport_http import RetryPolicy, Uploader

    spool_dir = resolve_spool_dir(dir_)
    api_key, endpoint, ingest_path = _upload_settings()
    ledger = Ledger(spool_dir)
    entries, skipped, _ = read_spool(spool_dir)
    for name, reason in skipped:
        click.echo(f"warning: skipped {spool_dir / name}: {reason}", err=True)
    pending = [e for e in entries if e.state == "pending"]
    if not pending:
        click.echo(f"Nothing to upload: {len(entries)} batches in {spool_dir}, all sent.")
        return
    uploader = Uploader(
        api_key=api_key,
        api_endpoint=endpoint,
        ingest_path=ingest_path,
        sdk_version=_sdk_version(),
        ledger=ledger,
        policy=RetryPolicy(base=0.5, cap=5.0),
    )
    try:
        sent, failures = _upload_all(uploader, spool_dir, pending, retries)
    finally:
        uploader.close()
    click.echo(f"Uploaded {sent} of {len(pending)} pending batches to {uploader.url}.")
    if failures:
        lines = "\n".join(f"  {name}: {why}" for name, why in failures)
        raise click.ClickException(f"{len(failures)} batches were not uploaded:\n{lines}")


def _upload_all(
    uploader: Any, spool_dir: Path, pending: list[Entry], retries: int
) -> tuple[int, list[tuple[str, str]]]:
    from rich.progress import Progress

    sent, failures = 0, []
    with Progress(disable=not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task("Uploading", total=len(pending))
        for i, entry in enumerate(pending):
            outcome = _upload_one(uploader, spool_dir / entry.file, retries)
            bar.advance(task)
            if outcome.kind == "sent":
                sent += 1
            elif outcome.kind == "paused":
                failures += [(e.file, "not attempted") for e in pending[i + 1 :]]
                raise click.ClickException(
                    f"the platform refused the API key (HTTP {outcome.status}) for {entry.file}: "
                    "check CIRRON_API_KEY and that the key belongs to this workspace"
                )
            elif outcome.kind != "gone":
                failures.append((entry.file, outcome.error or outcome.kind))
                if outcome.kind == "retry" and outcome.status is None:  # unreachable: stop here
                    failures += [(e.file, "not attempted") for e in pending[i + 1 :]]
                    break
    return sent, failures


def _upload_one(uploader: Any, path: Path, retries: int) -> Any:
    outcome = uploader.upload_file(path)
    for attempt in range(1, retries + 1):
        if outcome.kind != "retry":
            break
        time.sleep(uploader.policy.delay(attempt, outcome.retry_after))
        outcome = uploader.upload_file(path)
    return outcome


def _upload_settings() -> tuple[str, str, str]:
    """(api_key, api_endpoint, ingest_path) from cirron's settings, or the environment."""
    from cirron.core.errors import CirronConfigError
    from cirron.core.transport import check_endpoint

    try:
        try:
            from cirron.core.config import resolve_settings
        except ImportError:
            env = os.environ
            key = env.get("CIRRON_API_KEY")
            endpoint = env.get("CIRRON_API_ENDPOINT") or DEFAULT_ENDPOINT
            path = env.get("CIRRON_INGEST_PATH") or DEFAULT_INGEST_PATH
        else:
            settings = resolve_settings()
            key, endpoint, path = settings.api_key, settings.api_endpoint, settings.ingest_path
        if not key:
            raise click.ClickException(
                "no API key: set CIRRON_API_KEY (or api_key in ~/.cirron/config.toml) to upload"
            )
        check_endpoint(endpoint)
    except CirronConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return str(key), str(endpoint), str(path)


def _sdk_version() -> str:
    from cirron._version import __version__

    return __version__


# -- clear -------------------------------------------------------------------------------------


@spool.command("clear")
@_DIR
@click.option("--force", is_flag=True, help="Delete without asking.")
def clear_cmd(dir_: Path | None, force: bool) -> None:
    """Delete every batch file (sent or not) and the sent-record from the spool."""
    from cirron.core.ledger import LEDGER_NAME
    from cirron.core.transport import BATCH_NAME

    spool_dir = resolve_spool_dir(dir_)
    names = [
        n
        for n in os.listdir(spool_dir)
        if BATCH_NAME.match(n) or n == LEDGER_NAME or n.endswith(".json.tmp")
    ]
    batches = sum(1 for n in names if BATCH_NAME.match(n))
    size = sum(_file_size(spool_dir / n) for n in names)
    if not names:
        click.echo(f"Nothing to clear in {spool_dir}.")
        return
    if not force:
        if not stdin_is_terminal():
            raise click.ClickException(
                f"refusing to delete {batches} batches in {spool_dir} without confirmation; "
                "re-run with --force"
            )
        question = f"Delete {batches} batches ({size / 1e6:.2f} MB) from {spool_dir}?"
        if not click.confirm(question, default=False):
            raise click.ClickException("nothing deleted")
    for name in names:
        try:
            (spool_dir / name).unlink()
        except FileNotFoundError:
            pass
    click.echo(f"Deleted {batches} batches ({size / 1e6:.2f} MB) from {spool_dir}.")


def stdin_is_terminal() -> bool:
    """Whether a person can answer the confirmation question."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


# -- shared ------------------------------------------------------------------------------------


def resolve_spool_dir(dir_: Path | None) -> Path:
    """The spool directory for ``--dir`` (a ``.cirron`` root or its ``spool/``); exit 1 if absent."""
    root = (dir_ if dir_ is not None else Path(".cirron")).expanduser()
    if not root.is_dir():
        hint = (
            "" if dir_ is not None else " (run from the directory holding .cirron/, or pass --dir)"
        )
        raise click.ClickException(f"no spool directory at {root.resolve()}{hint}")
    spool_dir = root / "spool"
    return (spool_dir if spool_dir.is_dir() else root).resolve()


def _iso(ns: int) -> str:
    moment = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
