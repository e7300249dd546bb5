#!/usr/bin/env bash
# Build (or reuse) the cached virtual environment for one livekit release of the
# CI matrix and print its path.
#   scripts/matrix-venv.sh 1.4.3          livekit-agents and livekit-plugins-openai 1.4.3
#   scripts/matrix-venv.sh 1.9.0:1.9.1    livekit-agents 1.9.0, livekit-plugins-openai 1.9.1
# The cache key is the release plus a hash of the project's declared
# dependencies (not of the whole pyproject.toml, so editing tool settings does
# not rebuild ten venvs). Builds are locked per release and land by rename, so
# concurrent callers never see a half-built venv; uv's shared download cache
# makes a rebuild mostly hard links.
set -euo pipefail
spec="$1"
agents="${spec%%:*}"
plugin="${spec#*:}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LHP_VENV_CACHE:-$HOME/.cache/livekit-history-plugin/venvs}"
name="livekit-$agents"
[ "$plugin" = "$agents" ] || name="livekit-$agents-openai-$plugin"
# The package is installed editable, so a venv belongs to one checkout: a clone
# elsewhere (CI) must not import another tree's code through a shared venv.
name="$name-$(printf '%s' "$root" | sha256sum | cut -c1-8)"
venv="$cache/$name"
py="${LHP_PYTHON:-$(command -v python3.11 || command -v python3)}"
mkdir -p "$cache"

deps_hash() {
  # hatchling needs Python >= 3.8; tomllib is 3.11+, so fall back to the file
  "$py" - "$root/pyproject.toml" <<'EOF' 2>/dev/null || sha256sum "$root/pyproject.toml" | cut -c1-16
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
key = {"deps": project["dependencies"], "extras": project.get("optional-dependencies", {}),
       "python": project.get("requires-python")}
print(hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16])
EOF
}

want="$agents $plugin $(deps_hash)"

ready() { [ -x "$venv/bin/pytest" ] && "$venv/bin/pytest" --version >/dev/null 2>&1 && [ "$(cat "$venv/.lhp-stamp" 2>/dev/null)" = "$want" ]; }

if ! ready; then
  exec 9>"$cache/.lock-$name"
  flock 9
  if ! ready; then
    tmp="$cache/.build-$name-$$"
    rm -rf "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    # relocatable: the venv is built aside and renamed into place
    uv venv -q --relocatable -p "$py" "$tmp" >&2
    # livekit 1.0 - 1.5 import httpx without declaring it; the dev extra has it.
    # The provider plugins (xAI) exist from livekit 1.3.7 on.
    extras="dev"
    printf '%s\n' 1.3.7 "$agents" | sort -V -C && extras="dev,providers"
    uv pip install -q --python "$tmp/bin/python" -e "$root[$extras]" \
      "livekit-agents==$agents" "livekit-plugins-openai==$plugin" >&2
    echo "$want" > "$tmp/.lhp-stamp"
    rm -rf "$venv"
    mv "$tmp" "$venv"
    trap - EXIT
  fi
fi
echo "$venv"
