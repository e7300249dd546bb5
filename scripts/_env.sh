# Shared by scripts/test and scripts/demo: a project venv in .venv with the
# package installed editable. Needs only python3 (>= 3.10) and the package
# registry; uv is installed with pip when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(command -v python3.11 || command -v python3.12 || command -v python3)"
if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install --quiet uv >&2
  export PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
fi
# the interpreter matrix venvs are built from (not UV_PYTHON: uv pip would
# then install into that interpreter instead of the venv)
export LHP_PYTHON="$PY"
if [ ! -x .venv/bin/python ]; then
  uv venv --quiet -p "$PY" .venv >&2
fi
uv pip install --quiet --python "$ROOT/.venv/bin/python" -e ".[dev]" >&2
