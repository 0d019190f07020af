#!/usr/bin/env bash
# Installs python-socketio (the client Python integrations use) into .venv/ for the tests that
# run it, or fails with the fix. Pinned to the 5.x line the tests were written against.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import socketio, websocket, requests' 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV" || {
  echo "python3 -m venv failed. Fix: apt-get install python3-venv" >&2
  exit 1
}
"$VENV/bin/pip" install --quiet --disable-pip-version-check "python-socketio[client]>=5.18,<6" || {
  echo "Installing python-socketio from PyPI failed; the python-socketio tests need it." >&2
  exit 1
}
