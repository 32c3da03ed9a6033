#!/usr/bin/env bash
# The full Autobahn WebSocket case set against multiplex, with kosoku (PyPI) as the
# fuzzing client: a thin wrapper around interop/autobahn.py, which starts the echo
# server, runs the cases with and without permessage-deflate and prints the verdicts.
#
#   interop/autobahn.sh                 # all cases (a few minutes)
#   interop/autobahn.sh --quick         # leave out sections 9, 12 and 13
#   interop/autobahn.sh -o reports/     # keep kosoku's reports
#
# PYTHON selects the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m interop.autobahn "$@"
