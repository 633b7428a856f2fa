#!/usr/bin/env bash
# Package YOLO weights into serving/model-store/<name>_v<version>.mar (see --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv_python.sh"
exec "${python}" -m scripts.package_mar "$@"
