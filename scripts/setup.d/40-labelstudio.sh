#!/usr/bin/env bash
# Label Studio adapter (plugins/label_studio).
# - The ML backend itself runs in the main venv: Starlette served by uvicorn.
# - The Label Studio *server* (1.23.2) pins Django and friends that clash with the model's
#   environment, so it gets its own venv (.venv-labelstudio). It is used by the end-to-end
#   tests (and by anyone who wants a local Label Studio); its label-studio-sdk also checks
#   our brush RLE against Label Studio's own decoder.
# Run by scripts/setup.sh with VENV and PIP set; idempotent. AURALSAM2_NO_LABEL_STUDIO_SERVER=1
# skips the server venv (the Dockerfile's runtime image; the end-to-end tests then skip).
set -euo pipefail
VENV=${VENV:-.venv}
PIP=${PIP:-"$VENV/bin/python -m pip --disable-pip-version-check -q"}
LS_VENV=${AURALSAM2_LS_VENV:-.venv-labelstudio}
PY=${PYTHON:-python3}

$PIP install "starlette>=0.37" "uvicorn>=0.30"

if [ "${AURALSAM2_NO_LABEL_STUDIO_SERVER:-0}" = 1 ]; then
  echo "40-labelstudio: AURALSAM2_NO_LABEL_STUDIO_SERVER=1: no Label Studio server venv"
  exit 0
fi

if [ -x "$LS_VENV/bin/label-studio" ] && "$LS_VENV/bin/python" - <<'PY' 2>/dev/null; then
import importlib.metadata as md, sys
sys.exit(0 if md.version("label-studio") == "1.23.2" else 1)
PY
  echo "40-labelstudio: label-studio 1.23.2 already installed in $LS_VENV"
  exit 0
fi
[ -x "$LS_VENV/bin/python" ] || "$PY" -m venv "$LS_VENV"
"$LS_VENV/bin/python" -m pip --disable-pip-version-check -q install --upgrade pip
"$LS_VENV/bin/python" -m pip --disable-pip-version-check -q install "label-studio==1.23.2"
"$LS_VENV/bin/python" -c "import label_studio, label_studio_sdk; print('40-labelstudio: label-studio', label_studio.__version__)"
