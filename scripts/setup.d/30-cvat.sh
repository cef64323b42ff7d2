#!/usr/bin/env bash
# CVAT adapter (plugins/cvat): cvat-sdk (REST client + CVAT's mask RLE) and nuclio-sdk (the
# handler contract, and nuclio_sdk.test.Platform that the tests run the function with).
# Both are wheels on PyPI; nothing else is fetched. Deploying the function needs nuctl and
# Docker on the CVAT host (manifests/cvat/README.md), not here.
# Run by scripts/setup.sh with VENV and PIP set; idempotent.
set -euo pipefail
VENV=${VENV:-.venv}
PIP=${PIP:-"$VENV/bin/python -m pip --disable-pip-version-check -q"}

if "$VENV/bin/python" - <<'PY' 2>/dev/null; then
import importlib.metadata as md, sys
try:
    ok = md.version("cvat-sdk").startswith("2.80.") and md.version("nuclio-sdk") == "0.6.3"
except md.PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
  echo "30-cvat: cvat-sdk and nuclio-sdk already installed"
  exit 0
fi
$PIP install "cvat-sdk==2.80.*" "nuclio-sdk==0.6.3"
"$VENV/bin/python" -c "import cvat_sdk, nuclio_sdk; print('30-cvat: cvat-sdk', cvat_sdk.__version__)"
