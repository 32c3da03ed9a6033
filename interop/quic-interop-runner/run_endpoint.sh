#!/bin/bash
# Entry point of the multiplex image for the QUIC interop runner.
#
# The runner sets ROLE (client|server), TESTCASE, and for servers mounts /www and
# /certs (cert.pem, priv.key) and sets SSLKEYLOGFILE and QLOGDIR; logs go to /logs.
# multiplex is a server: ROLE=client exits 127 ("unsupported"), as does any test case
# the endpoint does not support (interop/endpoint.py decides and says why).
set -e

# Routing through the network simulator (provided by the base image).
if [ -f /setup.sh ]; then
    # shellcheck disable=SC1091
    source /setup.sh
fi

if [ "$ROLE" = "client" ]; then
    echo "multiplex is a server only: the client role is not supported" >&2
    exit 127
fi

PYTHON="${PYTHON:-python3}"
SRC="${MULTIPLEX_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
export LOGS="${LOGS:-/logs}"

echo "Starting multiplex: ROLE=${ROLE:-server} TESTCASE=${TESTCASE} SERVER_PARAMS=${SERVER_PARAMS}"
cd "$SRC"
# exec: the endpoint's exit status (127 for an unsupported test case) is the container's,
# and SIGTERM from docker reaches it directly.
exec "$PYTHON" -m interop.endpoint
