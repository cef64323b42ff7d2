#!/usr/bin/env bash
# Ray (auralsam2_service/batch.py, auralsam2_service/ray_serve.py): Ray Data for
# `auralsam2 batch --ray` (one model actor per GPU, CPU fallback) and Ray Serve for the HTTP
# service on many GPUs. Wheels from PyPI only; the tests start a local 2-CPU Ray cluster, and
# KubeRay (manifests/ray/) runs the same code on Kubernetes.
# ray[serve] would otherwise upgrade starlette past what FiftyOne accepts (fiftyone 1.22.1 needs
# starlette < 1.4), so every package already in the venv is held at its version (a constraints
# file from `pip freeze`) and pip picks a fastapi that fits.
# Run by scripts/setup.sh with VENV and PIP set; idempotent. The image the KubeRay manifests
# use (Dockerfile) is built by the same scripts.
set -euo pipefail
VENV=${VENV:-.venv}
PIP=${PIP:-"$VENV/bin/python -m pip --disable-pip-version-check -q"}
RAY_VERSION=${AURALSAM2_RAY_VERSION:-2.60.0}

if "$VENV/bin/python" - "$RAY_VERSION" <<'PY' 2>/dev/null; then
import importlib.metadata as md, sys
try:
    ok = md.version("ray") == sys.argv[1]
    import ray.data, ray.serve  # noqa: F401  (the data and serve extras are there)
except (md.PackageNotFoundError, ImportError):
    ok = False
sys.exit(0 if ok else 1)
PY
  echo "50-ray: ray $RAY_VERSION already installed"
  exit 0
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$VENV/bin/python" -m pip --disable-pip-version-check freeze --exclude-editable \
  | grep -v -e ' @ ' -e '^#' >"$constraints" || true
$PIP install "ray[data,serve]==$RAY_VERSION" -c "$constraints"
"$VENV/bin/python" -c "import ray, ray.data, ray.serve; print('50-ray: ray', ray.__version__)"
