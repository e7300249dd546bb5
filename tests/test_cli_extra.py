"""The CLI is an optional extra: the library runs without typer and rich, and the
`livekit-history` command says in one line what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_the_library_works_without_typer_and_rich() -> None:
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
