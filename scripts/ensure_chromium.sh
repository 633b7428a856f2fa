#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests (tests/test_web_ui.py).
# Playwright drives this system browser; `playwright install` would download its own, and the
# test machines are offline apart from the package mirrors.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--help]

Installs Debian's chromium package (apt-get, no recommends) when $CHROMIUM is missing.
Does nothing when it is already there. Needs root to install.
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
esac

if [[ -x "$CHROMIUM" ]]; then
    echo "chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: $CHROMIUM is missing and installing it needs root." >&2
    echo "       run: sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2
    exit 1
fi

echo "installing Debian's chromium (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "chromium installed: $("$CHROMIUM" --version)"
