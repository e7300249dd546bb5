#!/usr/bin/env bash
# Build (or reuse) the cached virtual environment for one livekit release of the
# CI matrix and print its path. Usage: scripts/matrix-venv.sh 1.4.3
# The cache key is the release plus a hash of pyproject.toml; builds are locked
# and land by rename, so concurrent callers never see a half-built venv.
set -euo pipefail
ver="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LHP_VENV_CACHE:-$HOME/.cache/livekit-history-plugin/venvs}"
venv="$cache/livekit-$ver"
want="$ver $(sha256sum "$root/pyproject.toml" | cut -c1-16)"
mkdir -p "$cache"

ready() { [ -x "$venv/bin/pytest" ] && "$venv/bin/pytest" --version >/dev/null 2>&1 && [ "$(cat "$venv/.lhp-stamp" 2>/dev/null)" = "$want" ]; }

if ! ready; then
  exec 9>"$cache/.lock-$ver"
  flock 9
  if ! ready; then
    tmp="$cache/.build-$ver-$$"
    rm -rf "$tmp"
    # relocatable: the venv is built aside and renamed into place
    uv venv -q --relocatable -p "${LHP_PYTHON:-$(command -v python3.11 || command -v python3)}" "$tmp" >&2
    # releases up to 1.5.x import httpx without declaring it
    uv pip install -q --python "$tmp/bin/python" -e "$root[dev]" \
      "livekit-agents==$ver" "livekit-plugins-openai==$ver" httpx >&2
    echo "$want" > "$tmp/.lhp-stamp"
    rm -rf "$venv"
    mv "$tmp" "$venv"
  fi
fi
echo "$venv"
