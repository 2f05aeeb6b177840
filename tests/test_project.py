"""cirron.yaml / cirron.yml / cirron.json: discovery, the model, and the error messages."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

import cirron.core.project as project_module
from cirron.core.errors import CirronYamlError
from cirron.core.project import find_project, find_project_file, load_project

MINIMAL = "name: churn-model\nversion: '1.2'\nframework: pytorch\ntype: classification\n"

FULL = {
    "name": "churn-model",
    "version": "2.0.1",
    "description": "Predicts churn",
    "framework": "sklearn",
    "type": "classification",
    "profiling": {"snapshots": "sampled", "sample_rate": 0.1, "flush_interval": 2.5},
    "servingConfig": {
        "runtime": "python3.11",
        "input_schema": {"type": "object", "properties": {"age": {"type": "number"}}},
        "output_schema": {"type": "object"},
        "class_labels": ["stay", "churn"],
        "feature_order": ["age", "plan"],
        "replicas": 2,
    },
    "env": {"LOG_LEVEL": "info"},
    "secrets": ["openai-api-key"],
    "data": {"train": "s3://bucket/train.parquet"},
    "build": {"dockerfile": "Dockerfile"},
    "deploy": {"region": "eu-west-1"},
    "environments": {"staging": {"replicas": 1}},
}


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(CirronYamlError) as info:
        load_project(path)
    assert info.value.path == str(path)
    return str(info.value)


# ---- discovery


def test_no_file_gives_none(tmp_path: Path) -> None:
    assert find_project_file() is None
    assert find_project() is None


def test_found_in_working_directory() -> None:
    path = write(Path.cwd(), "cirron.yaml", MINIMAL)
    assert find_project_file() == path
    project = find_project()
    assert project is not None and project.name == "churn-model" and project.path == path


def test_search_goes_upwards_to_the_git_root(tmp_path: Path) -> None:
    root = Path.cwd()  # conftest gives it a .git
    path = write(root, "cirron.yaml", MINIMAL)
    deep = root / "src" / "models" / "v1"
    deep.mkdir(parents=True)
    assert find_project_file(deep) == path


def test_search_stops_at_the_first_directory_with_git(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    write(outer, "cirron.yaml", MINIMAL)
    repo = outer / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "pkg").mkdir()
    assert find_project_file(repo / "pkg") is None
    inside = write(repo, "cirron.yml", MINIMAL)  # the .git directory itself is still searched
    assert find_project_file(repo / "pkg") == inside


def test_git_file_also_marks_the_root(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    write(outer, "cirron.yaml", MINIMAL)
    worktree = outer / "worktree"
    write(worktree, ".git", "gitdir: /elsewhere\n")
    assert find_project_file(worktree) is None


def test_nearest_file_wins(tmp_path: Path) -> None:
    root = Path.cwd()
    write(root, "cirron.yaml", MINIMAL)
    nested = write(root / "models" / "a", "cirron.json", json.dumps(FULL))
    assert find_project_file(root / "models" / "a") == nested


def test_yaml_then_yml_then_json() -> None:
    root = Path.cwd()
    as_json = write(root, "cirron.json", json.dumps(FULL))
    assert find_project_file() == as_json
    as_yml = write(root, "cirron.yml", MINIMAL)
    assert find_project_file() == as_yml
    as_yaml = write(root, "cirron.yaml", MINIMAL)
    assert find_project_file() == as_yaml


def test_search_reaches_the_filesystem_root_without_git(tmp_path: Path) -> None:
    lonely = tmp_path / "no" / "repo" / "here"
    lonely.mkdir(parents=True)
    assert find_project_file(lonely) is None


# ---- the model


def test_minimal_file_takes_documented_defaults() -> None:
    project = load_project(write(Path.cwd(), "cirron.yaml", MINIMAL))
    assert (project.name, project.version, project.framework, project.type) == (
        "churn-model", "1.2", "pytorch", "classification",
    )  # fmt: skip
    assert project.description is None
    assert (project.profiling.snapshots, project.profiling.sample_rate, project.profiling.flush_interval) == (
        "stats", 0.01, 1.0,
    )  # fmt: skip
    assert project.serving_config is None
    assert (project.env, project.secrets, project.data) == ({}, [], {})


def test_full_file_with_extra_sections() -> None:
    project = load_project(write(Path.cwd(), "cirron.yaml", yaml.safe_dump(FULL)))
    assert project.profiling.snapshots == "sampled" and project.profiling.sample_rate == 0.1
    serving = project.serving_config
    assert serving is not None
    assert serving.runtime == "python3.11" and serving.class_labels == ["stay", "churn"]
    assert serving.feature_order == ["age", "plan"]
    assert serving.input_schema == FULL["servingConfig"]["input_schema"]  # type: ignore[index]
    assert serving.model_extra == {"replicas": 2}
    assert project.env == {"LOG_LEVEL": "info"} and project.secrets == ["openai-api-key"]
    assert project.model_extra is not None
    assert project.model_extra["build"] == {"dockerfile": "Dockerfile"}
    assert project.model_extra["environments"] == {"staging": {"replicas": 1}}


def test_yaml_and_json_give_the_same_model() -> None:
    root = Path.cwd()
    from_yaml = load_project(write(root, "cirron.yaml", yaml.safe_dump(FULL)))
    from_json = load_project(write(root, "cirron.json", json.dumps(FULL)))
    assert from_yaml == from_json
    assert from_yaml.path != from_json.path


@pytest.mark.parametrize("spelling", ["servingConfig", "serving_config"])
def test_serving_config_spellings_are_interchangeable(spelling: str) -> None:
    data = {**yaml.safe_load(MINIMAL), spelling: {"runtime": "onnx", "classLabels": [0, 1]}}
    project = load_project(write(Path.cwd(), "cirron.yaml", yaml.safe_dump(data)))
    assert project.serving_config is not None
    assert project.serving_config.runtime == "onnx" and project.serving_config.class_labels == [
        0,
        1,
    ]


def test_both_serving_spellings_at_once_is_an_error() -> None:
    data = {**yaml.safe_load(MINIMAL), "servingConfig": {}, "serving_config": {}}
    message = load_error(write(Path.cwd(), "cirron.yaml", yaml.safe_dump(data)))
    assert "servingConfig or serving_config, not both" in message


def test_numeric_version_becomes_text_as_written() -> None:
    text = MINIMAL.replace("version: '1.2'", "version: 1.10")
    assert load_project(write(Path.cwd(), "cirron.yaml", text)).version == "1.10"
    data = {**yaml.safe_load(MINIMAL), "version": 3}
    assert load_project(write(Path.cwd(), "cirron.json", json.dumps(data))).version == "3"


def test_env_scalars_become_strings_and_empty_sections_are_absent() -> None:
    text = MINIMAL + "env:\n  PORT: 8080\n  DEBUG: true\nprofiling:\nsecrets:\n"
    project = load_project(write(Path.cwd(), "cirron.yaml", text))
    assert project.env == {"PORT": "8080", "DEBUG": "true"}
    assert project.profiling.snapshots == "stats" and project.secrets == []


def test_static_view_matches_the_runtime_models() -> None:
    """The TYPE_CHECKING declarations in project.py list the same fields as the real models."""
    tree = ast.parse(Path(project_module.__file__).read_text())
    declared: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for cls in node.body:
                if isinstance(cls, ast.ClassDef):
                    declared[cls.name] = {
                        s.target.id
                        for s in cls.body
                        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                    }
    assert set(declared) == {"ProfilingConfig", "ServingConfig", "ProjectConfig"}
    for name, fields in declared.items():
        assert set(getattr(project_module, name).model_fields) == fields, name


# ---- errors


def test_invalid_fields_are_named_by_dotted_path() -> None:
    data = {**yaml.safe_load(MINIMAL), "framework": "jax", "profiling": {"sample_rate": 1.5}}
    path = write(Path.cwd(), "cirron.yaml", yaml.safe_dump(data))
    message = load_error(path)
    assert str(path) in message
    assert "framework:" in message and "'pytorch'" in message and "'jax'" in message
    assert "profiling.sample_rate: expected a number from 0 to 1" in message and "1.5" in message


def test_missing_required_fields_are_listed() -> None:
    message = load_error(write(Path.cwd(), "cirron.yaml", "name: x\n"))
    for field in ("version", "framework", "type"):
        assert f"{field}: required, but missing" in message


def test_bad_type_and_nested_serving_field() -> None:
    data = {
        **yaml.safe_load(MINIMAL),
        "type": "clustering",
        "servingConfig": {"feature_order": "age"},
    }
    message = load_error(write(Path.cwd(), "cirron.yaml", yaml.safe_dump(data)))
    assert "type:" in message and "'computer-vision'" in message
    assert "servingConfig.feature_order:" in message


def test_bad_secret_name_is_rejected() -> None:
    data = {**yaml.safe_load(MINIMAL), "secrets": ["ok", "../etc/passwd"]}
    message = load_error(write(Path.cwd(), "cirron.yaml", yaml.safe_dump(data)))
    assert "secrets.1:" in message


def test_yaml_syntax_error_gives_line_and_column() -> None:
    text = "name: demo\nversion: [1.0\nframework: pytorch\n"
    message = load_error(write(Path.cwd(), "cirron.yaml", text))
    assert "is not valid YAML at line" in message and "column" in message
    assert "line 2, column 10" in message  # where the unclosed sequence started


def test_json_syntax_error_gives_line_and_column() -> None:
    message = load_error(write(Path.cwd(), "cirron.json", '{\n  "name": "x",\n  "version": }\n'))
    assert "is not valid JSON at line 3, column 14" in message


@pytest.mark.parametrize(("name", "text"), [("cirron.yaml", ""), ("cirron.yml", "# only a comment\n"), ("cirron.json", "  \n")])  # fmt: skip
def test_empty_file_says_what_is_required(name: str, text: str) -> None:
    message = load_error(write(Path.cwd(), name, text))
    assert "is empty" in message and "name, version, framework, type" in message


@pytest.mark.parametrize(("name", "text", "kind"), [("cirron.yaml", "- a\n- b\n", "list"), ("cirron.json", '"hello"', "string")])  # fmt: skip
def test_top_level_must_be_a_mapping(name: str, text: str, kind: str) -> None:
    message = load_error(write(Path.cwd(), name, text))
    assert "top level must be a mapping" in message and f"not a {kind}" in message


def test_unreadable_file_is_a_yaml_error(tmp_path: Path) -> None:
    path = tmp_path / "cirron.yaml"
    path.mkdir()
    assert "Cannot read" in load_error(path)
