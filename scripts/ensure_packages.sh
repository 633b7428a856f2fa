#!/usr/bin/env bash
# Make sure the Debian programs the tests drive are installed: Chromium for the browser tests
# (Playwright drives this system browser; `playwright install` would download its own) and
# redis-server for the shared state store's tests, promtool (Debian's prometheus package) for
# the alert rules' tests. The test machines are offline apart from the package mirrors.
set -euo pipefail

# program it must provide : Debian package
NEEDED=(/usr/bin/chromium:chromium /usr/bin/redis-server:redis-server /usr/bin/promtool:prometheus)

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--help]

Installs the Debian packages the tests need (apt-get, no recommends) when their programs are
missing: ${NEEDED[*]}.
Does nothing when they are all there. Needs root to install.
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
esac

missing=()
for entry in "${NEEDED[@]}"; do
    program="${entry%%:*}"
    if [[ -x "$program" ]]; then
        echo "present: $program"
    else
        missing+=("${entry#*:}")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: ${missing[*]} missing and installing needs root." >&2
    echo "       run: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "installing ${missing[*]} (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
