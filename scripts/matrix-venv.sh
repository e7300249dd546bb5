#!/usr/bin/env bash
# Build (or reuse) the cached virtual environment for one livekit release of the
# CI matrix and print its path. Usage: scripts/matrix-venv.sh 1.4.3
set -euo pipefail
ver="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LHP_VENV_CACHE:-$HOME/.cache/livekit-history-plugin/venvs}"
venv="$cache/livekit-$ver"
stamp="$venv/.lhp-stamp"
want="$ver $(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  rm -rf "$venv"
  uv venv -q -p "${UV_PYTHON:-$(command -v python3.11 || command -v python3)}" "$venv" >&2
  # releases up to 1.5.x import httpx without declaring it
  VIRTUAL_ENV="$venv" uv pip install -q -e "$root[dev]" \
    "livekit-agents==$ver" "livekit-plugins-openai==$ver" httpx >&2
  echo "$want" > "$stamp"
fi
echo "$venv"
