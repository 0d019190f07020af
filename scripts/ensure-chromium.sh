#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the browser tests, or fails with the fix.
set -euo pipefail

CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Chromium is not installed: installing Debian's chromium for the browser tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  exit 0
fi
echo "Chromium is needed for the browser tests and is not at $CHROMIUM." >&2
echo "Fix: apt-get install chromium (or set CHROMIUM_PATH)." >&2
exit 1
