#!/usr/bin/env bash
# Roll back (or abort a canary) on the running TorchServe without dropping a request (see --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv_python.sh"
exec "${python}" -m scripts.deploy rollback "$@"
