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
# torch: keep one that is already installed (e.g. a CUDA build you chose); otherwise
# AURALSAM2_TORCH (default torch==2.13.0, which pip takes from the CPU wheel, ~190 MB, that
# lies on this project's machines; elsewhere PyPI's Linux build, which carries CUDA, ~7 GB).
# Nothing here needs torchvision or torchaudio (our resampler is auralsam2_core/media/resample.py).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  $PIP install --no-cache-dir "${AURALSAM2_TORCH:-torch==2.13.0}"
fi
# sam2 ships only an sdist: build it against the torch above (no isolated build env that would
# fetch another torch), without the optional CUDA extension, and without its torchvision
# requirement (used only by sam2's image predictor / mask generator, never here; PyPI's
# torchvision does not load beside a CPU torch). Its other requirements come next.
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 $PIP install --no-build-isolation --no-deps sam2==1.1.0
fi
# This package and its test extras, with every requirement (its own and sam2's) but torch,
# torchvision and sam2 themselves, read from the metadata so that they are listed once.
reqs=$(mktemp)
"$VENV/bin/python" - > "$reqs" <<'PY'
import importlib.metadata as md
import tomllib

from pip._vendor.packaging.requirements import Requirement

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = md.requires("sam2") + project["dependencies"] + project["optional-dependencies"]["test"]
for line in wanted:
    req = Requirement(line)
    if req.name in ("torch", "torchvision", "sam2"):
        continue
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        print(line.split(";")[0])
PY
$PIP install -r "$reqs"
rm -f "$reqs"
$PIP install --no-deps -e .
# Per-platform extras (FiftyOne, CVAT, Label Studio...): one script each, run in name order.
for extra in scripts/setup.d/*.sh; do
  [ -e "$extra" ] || continue
  VENV="$VENV" PIP="$PIP" bash "$extra"
done
echo "setup: done ($VENV)"
