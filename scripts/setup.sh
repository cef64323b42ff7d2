#!/usr/bin/env bash
# Install everything AuralSAM2 needs into ./.venv (idempotent; a fresh Debian 12 / Python 3.11
# machine with PyPI and Debian mirrors is enough). Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AURALSAM2_VENV:-.venv}
PY=${PYTHON:-python3}

# Media tools used by the tests and the demo (generated clips, speech).
if ! command -v ffmpeg >/dev/null || ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng sox >/dev/null
  else
    echo "setup: please install ffmpeg, espeak-ng and sox (apt-get install ffmpeg espeak-ng sox)" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip setuptools wheel
# The one torch / torchvision / torchaudio triple that installs together here (ENVIRONMENT.md).
if ! "$VENV/bin/python" -c "import torch, torchaudio, torchvision; assert torch.__version__.startswith('2.9.1')" 2>/dev/null; then
  $PIP install torch==2.9.1 torchvision==0.24.1
  $PIP install torch==2.9.1 'torchaudio==2.9.*'
fi
# sam2 ships only an sdist: build it against the torch above (no isolated build env that would
# fetch another torch), without the optional CUDA extension.
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 $PIP install --no-build-isolation sam2==1.1.0
fi
$PIP install -e ".[test]"
# Per-platform extras (FiftyOne, CVAT, Label Studio...): one script each, run in name order.
for extra in scripts/setup.d/*.sh; do
  [ -e "$extra" ] || continue
  VENV="$VENV" PIP="$PIP" bash "$extra"
done
echo "setup: done ($VENV)"
