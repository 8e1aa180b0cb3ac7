#!/usr/bin/env bash
# Makes (or reuses) the Python test environment from requirements.txt and prints its python.
# Usage: bash tests/python/setup.sh [DIR]   (default $SAERL_TEST_VENV or ~/.cache/saerl-pyenv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-${SAERL_TEST_VENV:-$HOME/.cache/saerl-pyenv}}"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    echo "$want" >"$venv/.requirements"
fi
echo "$venv/bin/python"
