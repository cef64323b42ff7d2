#!/usr/bin/env bash
# Deploy the AuralSAM2 CVAT function with nuctl (run on the CVAT host, from anywhere).
#   manifests/cvat/deploy.sh [--gpu] [extra nuctl deploy args]
# Builds this package's wheel into plugins/cvat/dist/ (the function's build installs it), then
# deploys plugins/cvat with function.yaml (CPU) or function-gpu.yaml (GPU) into CVAT's nuclio
# project, on CVAT's Docker network. Needs nuctl (nuclio 1.13.0 or newer), Docker and a running
# CVAT (2.48.0 or newer) with serverless support. See manifests/cvat/README.md.
#
# Environment: CVAT_URL (default http://cvat-server:8080), CVAT_ORG, CVAT_NETWORK (default
# cvat_cvat), and the secrets CVAT_ACCESS_TOKEN (or CVAT_USERNAME + CVAT_PASSWORD) and
# AURALSAM2_CVAT_WEBHOOK_SECRET, or their *_FILE forms naming a file on this host. Secrets are
# written to files under $AURALSAM2_CVAT_SECRETS (default ~/.config/auralsam2/cvat, mode 700,
# files 600) and mounted into the function: they never appear on a command line or in the
# nuclio function spec (nuctl --env would store them there and in the container's labels).
set -euo pipefail
cd "$(dirname "$0")/../.."
YAML=plugins/cvat/function.yaml
if [ "${1:-}" = "--gpu" ]; then YAML=plugins/cvat/function-gpu.yaml; shift; fi
PYTHON=${PYTHON:-python3}
NETWORK=${CVAT_NETWORK:-cvat_cvat}
MIN_NUCLIO=1.13.0
SECRETS=${AURALSAM2_CVAT_SECRETS:-$HOME/.config/auralsam2/cvat}
MOUNT=/run/secrets/auralsam2

die() { echo "deploy.sh: $*" >&2; exit 1; }

for arg in "$@"; do
  case "$arg" in
    *CVAT_ACCESS_TOKEN=*|*CVAT_PASSWORD=*|*AURALSAM2_CVAT_WEBHOOK_SECRET=*)
      die "a secret given to nuctl with --env is stored in the function spec and the container" \
          "labels; export CVAT_ACCESS_TOKEN / CVAT_PASSWORD / AURALSAM2_CVAT_WEBHOOK_SECRET" \
          "instead and this script mounts them as files" ;;
  esac
done

# nuclio: the python:3.11 runtime the function uses
command -v nuctl >/dev/null || die "nuctl not found: install the nuctl of CVAT's nuclio version"
command -v docker >/dev/null || die "docker not found"
label=$( (nuctl version 2>/dev/null || true) | sed -n 's/.*Label: *\([0-9][0-9.]*\).*/\1/p' |
  head -n 1)
[ -n "$label" ] || die "cannot read nuctl's version (nuctl version)"
if [ "$(printf '%s\n%s\n' "$MIN_NUCLIO" "$label" | sort -V | head -n 1)" != "$MIN_NUCLIO" ]; then
  die "nuctl $label is too old: the function needs nuclio $MIN_NUCLIO or newer (runtime" \
      "python:3.11); use the nuctl of CVAT's nuclio dashboard version"
fi
# CVAT's compose network, where http://cvat-server:8080 resolves
docker network inspect "$NETWORK" >/dev/null 2>&1 ||
  die "Docker network $NETWORK not found: start CVAT first, or set CVAT_NETWORK to the" \
      "network of CVAT's compose project (docker network ls | grep cvat)"

rm -rf plugins/cvat/dist
"$PYTHON" -m pip wheel --no-deps -q -w plugins/cvat/dist .
ls plugins/cvat/dist/auralsam2-*.whl >/dev/null

ARGS=(--env "CVAT_URL=${CVAT_URL:-http://cvat-server:8080}")
[ -n "${CVAT_ORG:-}" ] && ARGS+=(--env "CVAT_ORG=$CVAT_ORG")
[ -n "${CVAT_USERNAME:-}" ] && ARGS+=(--env "CVAT_USERNAME=$CVAT_USERNAME")

# mount_secret NAME FILE-NAME: $NAME (a value) or $NAME_FILE (a host file) as $NAME_FILE inside
mount_secret() {
  local name=$1 file=$2 value path
  value=${!name:-}
  path_var="${name}_FILE"
  path=${!path_var:-}
  if [ -n "$value" ]; then
    (umask 077; mkdir -p "$SECRETS"; chmod 700 "$SECRETS")
    path="$SECRETS/$file"
    (umask 077; printf '%s\n' "$value" > "$path")
    chmod 600 "$path"
  fi
  if [ -n "$path" ]; then
    [ -r "$path" ] || die "$path_var=$path is not a readable file"
    ARGS+=(--volume "$(cd "$(dirname "$path")" && pwd)/$(basename "$path"):$MOUNT/$file")
    ARGS+=(--env "${name}_FILE=$MOUNT/$file")
  fi
}
mount_secret CVAT_ACCESS_TOKEN cvat-access-token
mount_secret CVAT_PASSWORD cvat-password
mount_secret AURALSAM2_CVAT_WEBHOOK_SECRET webhook-secret

nuctl create project cvat --platform local >/dev/null 2>&1 || true
nuctl deploy --project-name cvat --path plugins/cvat --file "$YAML" --platform local \
  --platform-config "{\"attributes\": {\"network\": \"$NETWORK\"}}" \
  "${ARGS[@]}" "$@"
nuctl get function --platform local | grep -i auralsam2 || true
