"""The package's public face: what `import cirron` costs, imports and exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cirron
from cirron.core import errors
from tests.helpers.run import child_env, run_py

FRAMEWORKS = (
    "torch",
    "tensorflow",
    "keras",
    "lightning",
    "pytorch_lightning",
    "sklearn",
    "onnxruntime",
    "jax",
    "pandas",
    "pyarrow",
    "pydantic",
    "yaml",
    "requests",
    "click",
    "rich",
)


def imported_after(code: str, modules: tuple[str, ...], cwd: Path) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: list[str] = json.loads(out)
    return result


def test_import_cirron_imports_no_framework_and_no_heavy_dependency(tmp_path: Path) -> None:
    code = "import cirron as ci\nci.mark('x', 1)\nwith ci.scope('s'):\n    pass"
    assert imported_after(code, FRAMEWORKS, tmp_path) == []


def test_profile_with_nothing_imported_still_imports_no_framework(tmp_path: Path) -> None:
    code = (
        "import cirron as ci\nci.profile()\n"
        "for _ in ci.epochs(range(2)):\n    ci.mark('x', 1)\n"
        "ci.shutdown()"
    )
    assert imported_after(code, FRAMEWORKS[:9], tmp_path) == []


def test_public_names_are_pinned() -> None:
    assert sorted(cirron.__all__) == sorted(
        [
            "Cirron",
            "CirronConfigError",
            "CirronDataSizeError",
            "CirronDatasetNotFound",
            "CirronDependencyError",
            "CirronError",
            "CirronPlatformRequired",
            "CirronSecretNotFound",
            "CirronWarning",
            "CirronYamlError",
            "Profiler",
            "Scope",
            "__version__",
            "batches",
            "env",
            "epochs",
            "flush",
            "health",
            "inference",
            "mark",
            "profile",
            "scope",
            "secret",
            "shutdown",
            "trace",
            "watch",
            "wrap",
        ]
    )
    for name in cirron.__all__:
        assert getattr(cirron, name) is not None


def test_error_hierarchy() -> None:
    for cls in (
        errors.CirronConfigError,
        errors.CirronYamlError,
        errors.CirronSecretNotFound,
        errors.CirronDependencyError,
        errors.CirronDatasetNotFound,
        errors.CirronPlatformRequired,
        errors.CirronDataSizeError,
    ):
        assert issubclass(cls, errors.CirronError)
        assert getattr(cirron, cls.__name__) is cls
    assert issubclass(errors.CirronConfigError, ValueError)
    e = errors.CirronDependencyError.missing("pandas", "pandas", "ci.trace(format='df')")
    assert e.pip_line == "pip install 'cirron-sdk[pandas]'" and e.pip_line in str(e)
    assert str(errors.CirronSecretNotFound("no secret 'x'")) == "no secret 'x'"


def test_schema_shipped_matches_the_published_one() -> None:
    shipped = Path(cirron.__file__).parent / "schema" / "spool-batch-v1.schema.json"
    published = Path(__file__).resolve().parents[2] / "shared" / "spec" / shipped.name
    assert json.loads(shipped.read_text())["$id"] == "cirron/spool-batch-v1.schema.json"
    if published.exists():  # beside the repository on the project's machines
        assert json.loads(shipped.read_text()) == json.loads(published.read_text())


def test_without_a_c_compiler_it_installs_and_runs_pure_python(tmp_path: Path) -> None:
    """The C hot path is optional: a build whose compiler fails still gives a working wheel,
    and cirron then runs its pure-Python twin."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "cirron", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, src / f)
    env = child_env(CC="/bin/false")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "w"), "."],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "w").glob("cirron_sdk-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "cirron/core/recorder.py" in names and "cirron/schema/spool-batch-v1.schema.json" in names
    )
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    code = (
        "import cirron as ci\n"
        f"assert ci.__file__.startswith({str(target)!r}), ci.__file__\n"
        "ci.profile(frameworks=[])\n"
        "with ci.scope('step', 0):\n"
        "    ci.mark('loss', 0.5)\n"
        "print(ci.health()['hot_path'])\n"
        "print(ci.trace(format='dict')['children'][0]['name'])\n"
        "ci.shutdown()\n"
    )
    r = run_py(code, tmp_path, env=dict(env, PYTHONPATH=str(target)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["python", "step"]
    assert list((tmp_path / ".cirron").rglob("*.json"))
