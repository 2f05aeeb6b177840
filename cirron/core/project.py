"""The project file: ``cirron.yaml``, ``cirron.yml`` or ``cirron.json``.

The file is shared by the Cirron CLI, the SDK and the platform; the SDK reads a subset and lets
every other section (``build``, ``deploy``, ``environments``, ...) pass untouched.

>>> import pathlib, tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "cirron.yaml").write_text("name: demo\\nversion: 1.0\\nframework: pytorch\\n"
...                                        "type: classification\\nprofiling: {sample_rate: 0.5}\\n")
>>> project = find_project(root)
>>> project.name, project.version, project.profiling.sample_rate, project.profiling.snapshots
('demo', '1.0', 0.5, 'stats')

Importing this module is cheap: pydantic and PyYAML are imported when a file is loaded.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Literal, cast

from cirron.core.errors import CirronYamlError

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import BaseModel

    # The static view of the models built by _models() below (pydantic is imported lazily, so
    # the classes can only be created at run time). tests/test_project.py keeps the two in step.

    class ProfilingConfig(BaseModel):
        snapshots: Literal["stats", "sampled", "full"]
        sample_rate: float
        flush_interval: float

    class ServingConfig(BaseModel):
        runtime: str | None
        input_schema: dict[str, Any] | None
        output_schema: dict[str, Any] | None
        class_labels: list[Any] | None
        feature_order: list[str] | None

    class ProjectConfig(BaseModel):
        name: str
        version: str
        framework: Literal["pytorch", "tensorflow", "sklearn", "onnx"]
        type: Literal["classification", "regression", "time-series", "embedding", "computer-vision"]  # fmt: skip
        description: str | None
        profiling: ProfilingConfig
        serving_config: ServingConfig | None
        env: dict[str, str]
        secrets: list[str]
        data: dict[str, Any]

        @property
        def path(self) -> Path | None: ...


__all__ = [
    "PROJECT_FILE_NAMES",
    "ProfilingConfig",
    "ProjectConfig",
    "ServingConfig",
    "find_project",
    "find_project_file",
    "load_project",
]

PROJECT_FILE_NAMES = ("cirron.yaml", "cirron.yml", "cirron.json")
"""Looked for in this order in each directory."""

REQUIRED_FIELDS = ("name", "version", "framework", "type")


def find_project_file(start: Path | str | None = None) -> Path | None:
    """The nearest ``cirron.yaml`` / ``cirron.yml`` / ``cirron.json``, searching ``start``
    (default: the working directory) and then each parent. The search stops after the first
    directory that holds ``.git`` (the repository root) or at the filesystem root.

    >>> import tempfile
    >>> find_project_file(tempfile.mkdtemp()) is None
    True
    """
    from pathlib import Path

    directory = Path.cwd() if start is None else Path(start).absolute()
    if directory.is_file():
        directory = directory.parent
    for folder in (directory, *directory.parents):
        for name in PROJECT_FILE_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
        if (folder / ".git").exists():
            return None
    return None


def find_project(start: Path | str | None = None) -> ProjectConfig | None:
    """Load the project file :func:`find_project_file` finds, or ``None`` when there is none."""
    path = find_project_file(start)
    return None if path is None else load_project(path)


def load_project(path: Path | str) -> ProjectConfig:
    """Read and validate a project file (YAML, or JSON when the name ends in ``.json``).

    Raises :class:`CirronYamlError` naming the file and, for invalid content, each bad field
    by its dotted path and what was expected.
    """
    from pathlib import Path

    path = Path(path)
    data = _read_mapping(path)
    from pydantic import ValidationError

    try:
        project = _models().ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise CirronYamlError(_describe(path, exc), path=str(path)) from None
    project._path = path
    return cast("ProjectConfig", project)


# ---- reading


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise CirronYamlError(f"Cannot read {path}: {reason}.", path=str(path)) from None
    data = _parse_json(path, text) if path.suffix == ".json" else _parse_yaml(path, text)
    if data is None:
        raise CirronYamlError(
            f"{path} is empty. A cirron project file needs at least: {', '.join(REQUIRED_FIELDS)}.",
            path=str(path),
        )
    if not isinstance(data, dict):
        raise CirronYamlError(
            f"{path}: the top level must be a mapping of fields ({', '.join(REQUIRED_FIELDS)}, ...), "
            f"not a {_kind(data)}.",
            path=str(path),
        )
    return data


def _parse_yaml(path: Path, text: str) -> object:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        raise CirronYamlError(_yaml_syntax_message(path, exc), path=str(path)) from None
    except yaml.YAMLError as exc:
        raise CirronYamlError(f"{path} is not valid YAML: {exc}", path=str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("version"), int | float):
        data["version"] = _version_as_written(text, loader) or data["version"]
    return data


def _yaml_syntax_message(path: Path, exc: Any) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    message = f"{path} is not valid YAML{where}: {exc.problem or exc.context or 'syntax error'}"
    start = exc.context_mark
    if exc.problem and exc.context and start and start is not mark:
        message += f" ({exc.context} at line {start.line + 1}, column {start.column + 1})"
    return message + "."


def _version_as_written(text: str, loader: Any) -> str | None:
    """``version: 1.10`` loads as the float 1.1; take the text the user wrote instead."""
    import yaml

    root = yaml.compose(text, Loader=loader)
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "version" and isinstance(value, yaml.ScalarNode):
                return str(value.value)
    return None


def _parse_json(path: Path, text: str) -> object:
    import json

    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CirronYamlError(
            f"{path} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.",
            path=str(path),
        ) from None


def _kind(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _describe(path: Path, exc: Any) -> str:
    """One line per pydantic error: ``profiling.sample_rate: expected ... (got 1.5)``."""
    lines = [f"{path} is not a valid cirron project file:"]
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "missing":
            lines.append(f"  {field}: required, but missing")
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        got = repr(error.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        lines.append(f"  {field}: {message} (got {got})")
    return "\n".join(lines)


# ---- the models


class _Models:
    # Typed Any: the classes are local to _models(); callers cast to the static view above.
    ProfilingConfig: Any
    ServingConfig: Any
    ProjectConfig: Any


@cache
def _models() -> _Models:
    """Build the pydantic models on first use, so ``import cirron`` never imports pydantic."""

    from typing import Annotated

    from pydantic import (
        AfterValidator,
        BaseModel,
        ConfigDict,
        Field,
        PrivateAttr,
        ValidationInfo,
        field_validator,
        model_validator,
    )
    from pydantic.alias_generators import to_camel

    from cirron.core.config import parse_setting
    from cirron.core.secrets import check_secret_name

    class ProfilingConfig(BaseModel):
        """``profiling``: defaults for ``ci.profile()``, validated like the settings."""

        model_config = ConfigDict(extra="allow")

        snapshots: Literal["stats", "sampled", "full"] = "stats"
        sample_rate: float = 0.01
        flush_interval: float = 1.0

        @field_validator("snapshots", "sample_rate", "flush_interval", mode="before")
        @classmethod
        def _like_settings(cls, value: object, info: ValidationInfo) -> object:
            return parse_setting(str(info.field_name), value)

    class ServingConfig(BaseModel):
        """``servingConfig``: the serving contract. Keys in snake_case or camelCase."""

        model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

        runtime: str | None = None
        input_schema: dict[str, Any] | None = None
        output_schema: dict[str, Any] | None = None
        class_labels: list[Any] | None = None
        feature_order: list[str] | None = None

    class ProjectConfig(BaseModel):
        """A validated cirron project file; ``path`` is the file it came from."""

        model_config = ConfigDict(extra="allow", populate_by_name=True)

        name: str = Field(min_length=1)
        version: str = Field(min_length=1)
        framework: Literal["pytorch", "tensorflow", "sklearn", "onnx"]
        type: Literal["classification", "regression", "time-series", "embedding", "computer-vision"]  # fmt: skip
        description: str | None = None
        profiling: ProfilingConfig = Field(default_factory=ProfilingConfig)
        serving_config: ServingConfig | None = Field(default=None, alias="servingConfig")
        env: dict[str, str] = Field(default_factory=dict)
        secrets: list[Annotated[str, AfterValidator(check_secret_name)]] = Field(
            default_factory=list
        )
        data: dict[str, Any] = Field(default_factory=dict)

        _path: Path | None = PrivateAttr(default=None)

        @property
        def path(self) -> Path | None:
            """The file this project was loaded from (``None`` when built in code)."""
            return self._path

        @model_validator(mode="before")
        @classmethod
        def _one_spelling(cls, data: object) -> object:
            if isinstance(data, dict) and "servingConfig" in data and "serving_config" in data:
                raise ValueError("give servingConfig or serving_config, not both")
            return data

        @field_validator("profiling", "env", "secrets", "data", mode="before")
        @classmethod
        def _empty_section(cls, value: object, info: ValidationInfo) -> object:
            # "profiling:" with nothing under it loads as None: treat it as absent.
            if value is None:
                return [] if info.field_name == "secrets" else {}
            return value

        @field_validator("version", mode="before")
        @classmethod
        def _version_text(cls, value: object) -> object:
            return (
                str(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else value
            )

        @field_validator("env", mode="before")
        @classmethod
        def _env_scalars(cls, value: object) -> object:
            if not isinstance(value, dict):
                return value
            return {key: _env_text(item) for key, item in value.items()}

        def __eq__(self, other: object) -> bool:
            # Equal content is an equal project, whichever file (YAML or JSON) it came from.
            if not isinstance(other, ProjectConfig):
                return NotImplemented
            return self.model_dump() == other.model_dump()

        __hash__ = None  # type: ignore[assignment]

    models = _Models()
    models.ProfilingConfig = ProfilingConfig
    models.ServingConfig = ServingConfig
    models.ProjectConfig = ProjectConfig
    return models


def _env_text(value: object) -> object:
    """``PORT: 8080`` and ``DEBUG: true`` are meant as the strings "8080" and "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def __getattr__(name: str) -> Any:
    if name in ("ProfilingConfig", "ServingConfig", "ProjectConfig"):
        return getattr(_models(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
