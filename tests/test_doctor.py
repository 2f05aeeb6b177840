"""`cirron doctor`: what it prints, its JSON, exit codes, and that the API key stays masked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cirron._version import __version__
from cirron.cli.doctor import doctor

API_KEY = "sk-live-DOCTOR-DISTINCTIVE-0000-a1b2"
FRAMEWORKS = ("torch", "lightning", "pytorch_lightning", "keras", "tensorflow", "scikit-learn",
              "onnxruntime", "pandas", "pyarrow", "python-dotenv", "safetensors")  # fmt: skip


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(doctor, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_human_report_shows_versions_settings_context_and_project(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIRRON_SAMPLE_RATE", "0.5")
    monkeypatch.setenv("CIRRON_RUN_ID", "run_42")
    Path("cirron.yaml").write_text("name: demo\nversion: '3'\nframework: onnx\ntype: regression\n")
    code, out, err = run()
    assert code == 0, err
    assert f"cirron   {__version__}" in out
    assert sys.version.split()[0] in out and sys.executable in out
    for name in FRAMEWORKS:
        assert name in out
    assert "sample_rate      0.5" in out and "environment variable CIRRON_SAMPLE_RATE" in out
    assert "snapshots        stats" in out
    assert "run_id           run_42" in out
    assert f"{Path.cwd() / 'cirron.yaml'} (demo 3, onnx)" in out
    assert "config.toml (not found)" in out


def test_no_project_file_says_none() -> None:
    code, out, _ = run()
    assert code == 0
    assert "Project file  none" in out


def test_json_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_SNAPSHOTS", "full")
    code, out, _ = run("--json")
    assert code == 0
    report = json.loads(out)
    assert report["cirron"]["version"] == __version__
    assert report["python"]["executable"] == sys.executable
    assert set(report["frameworks"]) == set(FRAMEWORKS)
    rows = {row["key"]: row for row in report["settings"]}
    assert rows["snapshots"] == {
        "key": "snapshots",
        "value": "full",
        "source": "environment variable CIRRON_SNAPSHOTS",
    }
    assert report["project"] == {"path": None}
    assert report["context"]["world_size"] == 1
    assert report["errors"] == []


def test_framework_versions_come_from_metadata_without_importing() -> None:
    code, out, _ = run("--json")
    assert code == 0
    report = json.loads(out)
    from importlib.metadata import version

    assert report["frameworks"]["python-dotenv"] == version("python-dotenv")
    probe = "import sys; from cirron.cli.doctor import collect_report; collect_report(); " \
        "print([m for m in ('torch','tensorflow','keras','lightning','sklearn','onnxruntime','pandas') if m in sys.modules])"  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_api_key_is_masked_in_both_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_API_KEY", API_KEY)
    for args in ((), ("--json",)):
        code, out, err = run(*args)
        assert code == 0
        assert API_KEY not in out + err and "DISTINCTIVE" not in out + err
        assert "sk-…a1b2" in (json.loads(out)["settings"][0]["value"] if args else out)


def test_bad_setting_exits_1_with_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_SAMPLE_RATE", "2")
    code, out, err = run()
    assert code == 1
    assert "Traceback" not in out + err
    error_lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert "'sample_rate'" in error_lines[0] and "CIRRON_SAMPLE_RATE" in error_lines[0]
    assert "could not be resolved" in out  # the rest of the report is still printed


def test_bad_api_key_error_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_API_KEY", API_KEY.replace("-0000-", " 0000 "))
    code, out, err = run("--json")
    assert code == 1
    assert "DISTINCTIVE" not in out + err
    assert "'api_key'" in json.loads(out)["errors"][0]


def test_invalid_project_file_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("cirron.yaml").write_text("name: demo\n")
    code, out, err = run()
    assert code == 1
    assert "(invalid; see the error below)" in out
    assert "version: required, but missing" in err


def test_real_subprocess(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CIRRON_")}
    environ["CIRRON_API_KEY"] = API_KEY
    result = subprocess.run(
        [sys.executable, "-m", "cirron.cli.main", "doctor"],
        capture_output=True,
        text=True,
        env=environ,
        cwd=Path.cwd(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Settings (first match wins" in result.stdout
    assert "environment variable CIRRON_API_KEY" in result.stdout
    assert API_KEY not in result.stdout + result.stderr
