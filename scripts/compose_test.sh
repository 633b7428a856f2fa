#!/usr/bin/env bash
# Build the images, start docker-compose.yml on a real Docker engine (starting one if
# none answers), exercise it and tear it down; exit 0 only if every check passed (see --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv_python.sh"
exec "${python}" -m scripts.compose_test "$@"
