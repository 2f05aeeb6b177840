"""``cirron doctor``: what this Python sees — versions, frameworks, settings and their sources.

Nothing optional is imported to find out whether it is installed (metadata and import specs
only), so ``doctor`` is fast and safe even where a framework is broken. The API key is masked.
Exit code 0, or 1 when the settings or the project file are invalid.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from cirron._version import __version__

__all__ = ["OPTIONAL_PACKAGES", "collect_report", "doctor"]

OPTIONAL_PACKAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (shown name, import name, distribution names to ask importlib.metadata)
    ("torch", "torch", ("torch",)),
    ("lightning", "lightning", ("lightning",)),
    ("pytorch_lightning", "pytorch_lightning", ("pytorch-lightning",)),
    ("keras", "keras", ("keras",)),
    (
        "tensorflow",
        "tensorflow",
        ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"),
    ),
    ("scikit-learn", "sklearn", ("scikit-learn",)),
    ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-silicon")),
    ("pandas", "pandas", ("pandas",)),
    ("pyarrow", "pyarrow", ("pyarrow",)),
    ("python-dotenv", "dotenv", ("python-dotenv",)),
    ("safetensors", "safetensors", ("safetensors",)),
)


def package_version(module: str, distributions: tuple[str, ...]) -> str | None:
    """The installed version, without importing the package: the first distribution with
    metadata, else "installed (version unknown)" when the module can be found, else ``None``."""
    from importlib import metadata, util

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        found = util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return "installed (version unknown)" if found else None


def collect_report() -> tuple[dict[str, Any], list[str]]:
    """Everything ``doctor`` shows, as plain data, and the errors found on the way."""
    errors: list[str] = []
    report: dict[str, Any] = {
        "python": {"version": sys.version.split()[0], "executable": sys.executable},
        "cirron": {"version": __version__},
        "frameworks": {
            shown: package_version(module, dists) for shown, module, dists in OPTIONAL_PACKAGES
        },
        "config_file": _config_file(),
        "settings": _settings(errors),
        "context": _context(),
        "project": _project(errors),
    }
    return report, errors


def _config_file() -> dict[str, Any]:
    from cirron.core.config import config_file_location

    path, table = config_file_location()
    return {"path": path, "exists": os.path.isfile(path), "table": table}


def _settings(errors: list[str]) -> list[dict[str, str]] | None:
    from cirron.core.config import resolve_settings
    from cirron.core.errors import CirronConfigError

    try:
        settings = resolve_settings()
    except CirronConfigError as exc:
        errors.append(str(exc))
        return None
    return [
        {"key": key, "value": value, "source": source} for key, value, source in settings.as_rows()
    ]


def _context() -> dict[str, Any]:
    from cirron.core.context import read_context

    ctx = read_context()
    return {
        "run_id": ctx.run_id,
        "pipeline_id": ctx.pipeline_id,
        "deployment_id": ctx.deployment_id,
        "workspace_id": ctx.workspace_id,
        "rank": ctx.rank,
        "local_rank": ctx.local_rank,
        "world_size": ctx.world_size,
        "warnings": list(ctx.warnings),
    }


def _project(errors: list[str]) -> dict[str, Any]:
    from cirron.core.errors import CirronYamlError
    from cirron.core.project import find_project_file, load_project

    path = find_project_file()
    if path is None:
        return {"path": None}
    try:
        project = load_project(path)
    except CirronYamlError as exc:
        errors.append(str(exc))
        return {"path": str(path), "valid": False}
    identity = {"name": project.name, "version": project.version, "framework": project.framework}
    return {"path": str(path), "valid": True, **identity}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Show Python, cirron and framework versions, every setting with its source, the platform
    context and the cirron.yaml in use. The API key is masked."""
    report, errors = collect_report()
    if as_json:
        click.echo(json.dumps({**report, "errors": errors}, indent=2))
    else:
        click.echo(render(report))
    for error in errors:
        click.echo(f"Error: {error}", err=True)
    if errors:
        sys.exit(1)


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    python, config = report["python"], report["config_file"]
    lines = [
        f"cirron   {report['cirron']['version']}",
        f"Python   {python['version']} ({python['executable']})",
        "",
        "Optional packages (found without importing them)",
    ]
    for name, version in report["frameworks"].items():
        lines.append(f"  {name:<20} {version or 'not installed'}")
    state = "" if config["exists"] else " (not found)"
    lines += ["", f"Config file  {config['path']}{state}, table [{config['table']}]"]
    lines += ["", "Settings (first match wins: argument, CIRRON_* variable, config file, default)"]
    if report["settings"] is None:
        lines.append("  (could not be resolved; see the error below)")
    for row in report["settings"] or ():
        lines.append(f"  {row['key']:<16} {row['value']:<28} {row['source']}")
    lines += ["", "Platform context"]
    context = report["context"]
    for key in ("run_id", "pipeline_id", "deployment_id", "workspace_id"):
        lines.append(f"  {key:<16} {context[key] or '(not set)'}")
    ranks = ", ".join(f"{key} {context[key]}" for key in ("rank", "local_rank", "world_size"))
    lines.append(f"  {ranks}")
    lines += [f"  warning: {warning}" for warning in context["warnings"]]
    lines += ["", f"Project file  {_project_line(report['project'])}"]
    return "\n".join(lines)


def _project_line(project: dict[str, Any]) -> str:
    if project["path"] is None:
        return "none (searched from the working directory up to the repository root)"
    if not project["valid"]:
        return f"{project['path']} (invalid; see the error below)"
    return f"{project['path']} ({project['name']} {project['version']}, {project['framework']})"
