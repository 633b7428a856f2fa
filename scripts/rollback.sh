#!/usr/bin/env bash
# Roll back (or abort a canary) on the running TorchServe without dropping a request (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${root}/.venv/bin/python"
if [[ ! -x "${python}" ]]; then
  echo "error: ${python} not found; run 'make venv' first" >&2
  exit 1
fi
export YOLO_OFFLINE=1
cd "${root}"
exec "${python}" -m scripts.deploy rollback "$@"
