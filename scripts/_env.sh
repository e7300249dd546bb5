# Shared by scripts/test and scripts/demo: a project venv in .venv with the
# package installed editable. Needs only python3 (>= 3.10) and the package
# registry; when uv is missing it is installed into a private bootstrap venv
# (never into the python3 it found), and the script says so.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(command -v python3.11 || command -v python3.12 || command -v python3)"
if ! command -v uv >/dev/null 2>&1; then
  BOOT="${XDG_CACHE_HOME:-$HOME/.cache}/livekit-history-plugin/bootstrap"
  if [ ! -x "$BOOT/bin/uv" ]; then
    echo "uv not found: installing it into $BOOT (a private venv; $PY is not changed)" >&2
    "$PY" -m venv "$BOOT" >&2 || {
      echo "error: cannot create $BOOT with $PY -m venv; install uv (https://docs.astral.sh/uv/) and rerun" >&2
      exit 1
    }
    "$BOOT/bin/python" -m pip install --quiet uv >&2
  fi
  export PATH="$BOOT/bin:$PATH"
fi
# the interpreter matrix venvs are built from (not UV_PYTHON: uv pip would
# then install into that interpreter instead of the venv)
export LHP_PYTHON="$PY"
if [ ! -x .venv/bin/python ]; then
  uv venv --quiet -p "$PY" .venv >&2
fi
uv pip install --quiet --python "$ROOT/.venv/bin/python" -e ".[dev,providers]" >&2
