#!/usr/bin/env bash
# Deploy the AuralSAM2 CVAT function with nuctl (run on the CVAT host, from anywhere).
#   manifests/cvat/deploy.sh [--gpu] [extra nuctl deploy args, e.g. --env CVAT_URL=...]
# Builds this package's wheel into plugins/cvat/dist/ (the function's build installs it), then
# deploys plugins/cvat with function.yaml (CPU) or function-gpu.yaml (GPU) into CVAT's nuclio
# project. Needs nuctl, Docker and a running CVAT with serverless support.
# The access token is read from $CVAT_ACCESS_TOKEN and passed with --env, never written to disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
YAML=plugins/cvat/function.yaml
if [ "${1:-}" = "--gpu" ]; then YAML=plugins/cvat/function-gpu.yaml; shift; fi
PYTHON=${PYTHON:-python3}

rm -rf plugins/cvat/dist
"$PYTHON" -m pip wheel --no-deps -q -w plugins/cvat/dist .
ls plugins/cvat/dist/auralsam2-*.whl >/dev/null

ENV_ARGS=()
[ -n "${CVAT_URL:-}" ] && ENV_ARGS+=(--env "CVAT_URL=$CVAT_URL")
[ -n "${CVAT_ACCESS_TOKEN:-}" ] && ENV_ARGS+=(--env "CVAT_ACCESS_TOKEN=$CVAT_ACCESS_TOKEN")

nuctl create project cvat --platform local >/dev/null 2>&1 || true
nuctl deploy --project-name cvat --path plugins/cvat --file "$YAML" --platform local \
  "${ENV_ARGS[@]}" "$@"
nuctl get function --platform local | grep -i auralsam2 || true
