"""``cirron traces``: read the sessions of a local spool, offline and without an account.

    cirron traces list                        one row per session (a distributed run: one row)
    cirron traces view --name epoch --depth 2 the span tree with durations and marks
    cirron traces export --format otel        json | csv | parquet | otel (OTLP/JSON)
    cirron traces snapshots                   per-epoch weight and gradient statistics

Every command reads ``--dir`` (the ``.cirron`` directory or its ``spool/``; default ``./.cirron``)
and works on a spool copied from another machine. Exit codes: 0 ok, 1 error (missing directory,
unknown or ambiguous session, missing extra), 2 bad usage. A corrupt or unreadable batch file is
named in a warning on stderr and the rest is still shown.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["traces"]


# -- shared options and helpers ----------------------------------------------------------------


def _dir_option(func: F) -> F:
    return click.option(
        "--dir",
        "directory",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path(".cirron"),
        show_default=True,
        help="The .cirron directory (or its spool/ subdirectory) to read.",
    )(func)


def _session_option(default: str | None, help_text: str) -> Callable[[F], F]:
    return click.option("--session", "session", default=default, metavar="ID", help=help_text)


def _json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(
        func
    )


def _load(directory: Path) -> Any:
    from cirron.core.trace import load_dir, spool_dir_of

    directory = directory.expanduser()
    if not directory.exists():
        raise click.ClickException(
            f"no such directory: {directory}. Run from the directory holding .cirron/, or pass "
            "--dir with the .cirron directory a profiled run wrote (or its spool/ subdirectory)."
        )
    spool = spool_dir_of(directory)
    if not spool.is_dir():
        raise click.ClickException(f"no spool under {directory} (expected {spool}/).")
    return load_dir(directory, on_warning=lambda msg: click.echo(f"warning: {msg}", err=True))


def _resolve(data: Any, ref: str | None) -> list[str]:
    from cirron.core.trace import AmbiguousSession, SessionNotFound, resolve_sessions

    try:
        return resolve_sessions(data, ref)
    except AmbiguousSession as exc:
        lines = "\n".join(f"  {m}" for m in exc.matches)
        raise click.ClickException(f"session {ref!r} is ambiguous; it matches:\n{lines}") from None
    except SessionNotFound as exc:
        raise click.ClickException(str(exc)) from None


def _console() -> Any:
    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(
        file=sys.stdout,
        highlight=False,
        soft_wrap=False,
        width=None if tty else 1000,  # piped: never wrap or cut a cell
        no_color=not tty or "NO_COLOR" in os.environ,
    )


def _local_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, allow_nan=False, default=str))


class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from cirron.core.trace_render import parse_duration

        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


# -- the group ---------------------------------------------------------------------------------


@click.group("traces")
def traces() -> None:
    """Read the sessions recorded in a local spool (offline, no account needed)."""


@traces.command("list")
@_dir_option
@_json_option
def list_(directory: Path, as_json: bool) -> None:
    """One row per session; the ranks of a distributed run share one row."""
    from cirron.core.trace import group_runs, sessions

    data = _load(directory)
    groups = group_runs(sessions(data))
    rows = [_run_row(g) for g in groups]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo(f"No sessions in {directory}.")
        return
    _print_list(rows)


def _run_row(group: list[Any]) -> dict[str, Any]:
    first = group[0]
    statuses = sorted({s.status for s in group})
    ranks = [s.rank for s in group if s.rank is not None]
    return {
        "id": first.run_id if len(group) > 1 and first.run_id else first.id,
        "run_id": first.run_id,
        "start_ns": min(s.start_ns for s in group),
        "end_ns": max(s.end_ns for s in group),
        "duration_ns": max(s.end_ns for s in group) - min(s.start_ns for s in group),
        "status": statuses[0] if len(statuses) == 1 else " / ".join(statuses),
        "ranks": ranks,
        "span_count": sum(s.span_count for s in group),
        "name": first.name,
        "version": first.version,
        "sessions": [s.as_dict() for s in group],
    }


def _print_list(rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    from cirron.core.trace_render import fmt_duration

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("SESSION", "START", "DURATION", "STATUS", "RANKS", "SPANS", "PROJECT"):
        table.add_column(col, justify="right" if col in ("DURATION", "SPANS") else "left")
    for row in rows:
        sid = row["id"] if len(row["sessions"]) > 1 else row["id"][:12]
        project = " ".join(str(row[k]) for k in ("name", "version") if row[k] is not None)
        table.add_row(
            sid,
            _local_time(row["start_ns"]),
            fmt_duration(row["duration_ns"]),
            row["status"],
            ",".join(map(str, row["ranks"])) or "-",
            str(row["span_count"]),
            project or "-",
        )
    _console().print(table)


@traces.command("view")
@_dir_option
@_session_option(None, "Session id, unique prefix, run id or 'all' (default: the newest).")
@click.option(
    "--name", help="Only spans with this name (or glob, e.g. 'val*') and what is under them."
)
@click.option("--last", type=click.IntRange(min=1), help="Only the N most recently closed spans.")
@click.option("--depth", type=click.IntRange(min=0), help="Levels to show below each root.")
@click.option(
    "--min-wall", type=_Duration(), help="Hide spans shorter than this (5ms, 250us, 1.5s)."
)
@click.option(
    "--color/--no-color", default=None, help="Colour (default: on a terminal, unless NO_COLOR)."
)
@_json_option
def view(
    directory: Path,
    session: str | None,
    name: str | None,
    last: int | None,
    depth: int | None,
    min_wall: int | None,
    color: bool | None,
    as_json: bool,
) -> None:
    """The span tree: durations, indices and marks."""
    from cirron.core.trace import render

    data = _load(directory)
    _resolve(data, session)
    if not data.session_ids:
        click.echo(f"No sessions in {directory}.")
        return

    def show(fmt: str, color: bool = False) -> Any:
        return render(
            data,
            session_id=session,
            format=fmt,
            name=name,
            last=last,
            depth=depth,
            min_wall_ns=min_wall,
            color=color,
        )

    if as_json:
        _echo_json(show("dict"))
        return
    if color is None:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(show("tree", color), color=color)


@traces.command("export")
@_dir_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv", "parquet", "otel"]),
    required=True,
    help="json: spans/marks/snapshots; csv/parquet: one row per span; otel: OTLP/JSON.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File to write (csv/parquet also write <stem>.marks.<ext>). Default: stdout.",
)
@_session_option("all", "Session id, unique prefix, run id or 'all' (default: all).")
def export(directory: Path, fmt: str, output: Path | None, session: str) -> None:
    """Export sessions for other tools (pandas, DuckDB, an OpenTelemetry collector)."""
    from cirron.core.errors import CirronDependencyError
    from cirron.core.trace import export as do_export

    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE.parquet")
    data = _load(directory)
    _resolve(data, session)
    try:
        result = do_export(data, fmt, session_id=session, output=output)
    except CirronDependencyError as exc:
        raise click.ClickException(str(exc)) from None
    if isinstance(result, str):
        click.echo(result, nl=not result.endswith("\n"))
    else:
        click.echo("wrote " + ", ".join(str(p) for p in result), err=True)


@traces.command("snapshots")
@click.argument("span", required=False)
@_dir_option
@_session_option(None, "Session id, unique prefix or run id (default: the newest).")
@_json_option
def snapshots(span: str | None, directory: Path, session: str | None, as_json: bool) -> None:
    """Weight and gradient statistics per epoch (SPAN: an epoch span id, or its unique start or end)."""
    from cirron.core.trace import AmbiguousSpan, snapshot_table

    data = _load(directory)
    if span is None:
        _resolve(data, session)
    try:
        rows = snapshot_table(data, span, session)
    except AmbiguousSpan as exc:
        lines = "\n".join(f"  {m}" for m in exc.matches)
        raise click.ClickException(f"span {span!r} is ambiguous; it matches:\n{lines}") from None
    if span is not None and not rows:
        raise click.ClickException(f"no snapshots recorded for span {span!r}")
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("No snapshots recorded in this session.")
        return
    _print_snapshots(rows, data.root)


def _short_blob(blob: str | None, root: Path | None) -> str:
    """A blob under the .cirron directory as a relative path; anything else as it is."""
    if not blob:
        return "-"
    if blob.startswith("file://") and root is not None:
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(blob).path))
        try:
            return str(path.relative_to(root.resolve()))
        except ValueError:
            return str(path)
    return blob


def _print_snapshots(rows: list[dict[str, Any]], root: Path | None) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ("EPOCH", "SPAN", "KIND", "TENSOR", "SHAPE", "MEAN", "STD", "MIN", "MAX", "NORM", "BLOB")
    for col in cols:
        table.add_column(col, justify="right" if col in cols[5:10] else "left")
    for r in rows:
        stats = [_num(r[k]) for k in ("mean", "std", "min", "max", "norm")]
        shape = "x".join(map(str, r["shape"])) or "scalar"
        epoch = "-" if r["epoch"] is None else str(r["epoch"])
        table.add_row(
            epoch, r["span_id"], r["kind"], r["tensor"], shape, *stats, _short_blob(r["blob"], root)
        )
    _console().print(table)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"
