#!/usr/bin/env bash
# The project's test command (README "Set-up", second command): lint, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AURALSAM2_VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest -q "$@"
