"""Entry point of the `livekit-history` console script.

The CLI is an optional extra (`pip install 'livekit-history-plugin[cli]'`): a
library should not pull typer and rich into every agent that uses it. Without
them the command says so in one line instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

CLI_REQUIREMENTS = ("typer", "rich")
INSTALL_HINT = "pip install 'livekit-history-plugin[cli]'"


def missing_requirements() -> list[str]:
    """The CLI's requirements that cannot be imported."""
    missing = []
    for name in CLI_REQUIREMENTS:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; exit code 1 with one `error:` line when its extra is not installed."""
    missing = missing_requirements()
    if missing:
        sys.stderr.write(
            f"error: the livekit-history CLI needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}\n"
        )
        return 1
    from .cli import main as cli_main

    return cli_main(argv)
