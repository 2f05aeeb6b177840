"""Entry point of the ``cirron`` command.

Sub-commands live in their own modules and are attached here. Exit codes: 0 success, 1 error,
2 usage (click's own convention for bad arguments).
"""

from __future__ import annotations

import sys

import click

from cirron._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", "-V", prog_name="cirron", message="%(prog)s %(version)s"
)
def cli() -> None:
    """cirron: read, export and ship the profiles that cirron records."""


def _attach() -> None:
    from cirron.cli.doctor import doctor

    cli.add_command(doctor)
    try:  # filled in by the delivery work; absent modules simply add no command
        from cirron.cli.spool import spool

        cli.add_command(spool)
    except ImportError:
        pass
    try:
        from cirron.cli.traces import traces

        cli.add_command(traces)
    except ImportError:
        pass


_attach()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code instead of exiting when ``argv`` is given."""
    try:
        cli.main(args=argv, prog_name="cirron", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if argv is None:
            raise
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
