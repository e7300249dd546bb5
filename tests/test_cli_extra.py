"""The CLI is an optional extra: the library runs without typer and rich, and the
`livekit-history` command says in one line what to install."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# makes `import typer` / `import rich` fail as if they were not installed
BLOCK = "import sys\nfor name in {names}:\n    sys.modules[name] = None\n"


def _python(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(names=list(blocked)) + code],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )


def test_typer_and_rich_are_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]}
    assert not {"typer", "rich"} & names
    extras = project["optional-dependencies"]
    for extra in ("cli", "dev", "all"):
        assert any(d.startswith("typer") for d in extras[extra]), extra
        assert any(d.startswith("rich") for d in extras[extra]), extra
    assert project["scripts"]["livekit-history"] == "livekit_history_plugin._cli_main:main"


LIBRARY = ROOT / "livekit_history_plugin"
CLI_ONLY = {"cli.py", "demo.py"}  # the CLI and the demo it runs


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_library_module_imports_typer_or_rich() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_modules(path) & {"typer", "rich"})
        for path in LIBRARY.rglob("*.py")
        if path.name not in CLI_ONLY or path.parent != LIBRARY
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _livekit_needs(names: tuple[str, ...]) -> bool:
    """livekit-agents <= 1.4 imports typer itself (its own CLI); there the library
    cannot run without it whatever this package does."""
    proc = _python("import livekit.agents\n", names)
    return proc.returncode != 0


def test_the_library_works_without_typer_and_rich() -> None:
    if _livekit_needs(("typer", "rich")):
        pytest.skip("this livekit-agents release imports typer / rich itself")
    code = (
        "import livekit_history_plugin as lhp\n"
        "from livekit_history_plugin.testing import RealtimeEmulator\n"
        "import livekit_history_plugin.example_agents\n"
        "assert lhp.HistoryPlugin and lhp.wrap_realtime_model and lhp.open_store\n"
        "print('ok')\n"
    )
    proc = _python(code, ("typer", "rich"))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_command_without_its_extra_is_one_error_line() -> None:
    code = "from livekit_history_plugin._cli_main import main\nsys.exit(main(['stats']))\n"
    for blocked, named in (
        (("typer", "rich"), "typer and rich, which are"),
        (("rich",), "rich, which is"),
    ):
        proc = _python(code, blocked)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.splitlines()
        assert lines == [
            f"error: the livekit-history CLI needs {named} not installed: "
            "pip install 'livekit-history-plugin[cli]'"
        ], proc.stderr


def test_the_entry_point_runs_the_cli_when_installed(tmp_path: Path) -> None:
    code = "from livekit_history_plugin._cli_main import main\nsys.exit(main(['--version']))\n"
    proc = _python(code, ())
    assert proc.returncode == 0 and proc.stdout.startswith("livekit-history "), proc.stderr
