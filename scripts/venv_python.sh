# Sourced by the shell entry points: run from the repository root with the project's
# virtualenv Python, offline. Sets $python; fails with a clear message before `make venv`.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${root}/.venv/bin/python"
if [[ ! -x "${python}" ]]; then
  echo "error: ${python} not found; run 'make venv' first" >&2
  exit 1
fi
export YOLO_OFFLINE=1
cd "${root}"
