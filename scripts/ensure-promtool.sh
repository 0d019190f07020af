#!/usr/bin/env bash
# Makes sure promtool (from Debian's prometheus package) is installed for the alert-rule
# tests, or fails with the fix.
set -euo pipefail

PROMTOOL="${PROMTOOL_PATH:-/usr/bin/promtool}"
if [ -x "$PROMTOOL" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "promtool is not installed: installing Debian's prometheus for the alert-rule tests" >&2
  apt-get update -qq
  # The package's service is not wanted here, only its promtool.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  exit 0
fi
echo "promtool is needed for the alert-rule tests and is not at $PROMTOOL." >&2
echo "Fix: apt-get install prometheus (or set PROMTOOL_PATH)." >&2
exit 1
