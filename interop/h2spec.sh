#!/usr/bin/env bash
# Run h2spec (https://github.com/summerwind/h2spec, the HTTP/2 conformance suite) against
# multiplex, over TLS and over cleartext h2c. We cannot ship h2spec: give its path.
#
#   interop/h2spec.sh /path/to/h2spec [extra h2spec options, e.g. http2/6.5]
#   H2SPEC=/path/to/h2spec interop/h2spec.sh
#
# Starts multiplex twice on free loopback ports (TLS with development certificates
# made in a temporary directory, and --h2c), serving interop/hello_app.py, runs
# `h2spec -t -k` and `h2spec` against them, stops both, and exits non-zero if either
# run failed. PYTHON selects the interpreter (default: .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

h2spec="${H2SPEC:-}"
if [ -z "$h2spec" ] && [ $# -gt 0 ] && [ -x "$1" ] && [ ! -d "$1" ]; then
    h2spec="$1"
    shift
fi
if [ -z "$h2spec" ] && command -v h2spec >/dev/null 2>&1; then
    h2spec="$(command -v h2spec)"
fi
if [ -z "$h2spec" ] || [ ! -x "$h2spec" ]; then
    cat >&2 <<'MSG'
h2spec not found. Download a release binary from
https://github.com/summerwind/h2spec/releases and run
    interop/h2spec.sh /path/to/h2spec      (or H2SPEC=/path/to/h2spec interop/h2spec.sh)
MSG
    exit 2
fi

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # port: until something listens there (at most 20 s)
    for _ in $(seq 200); do
        if "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2).close()" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "multiplex did not start on port $1; its log:" >&2
    cat "$work"/*.log >&2
    return 1
}

"$PYTHON" -c "from multiplex import devcerts; from pathlib import Path; devcerts.ensure(Path('$work/certs'))" || exit 1

tls_port="$(free_port)"
h2c_port="$(free_port)"
common=(interop.hello_app:app --no-access-log --log-level warning --lifespan off)
"$PYTHON" -m multiplex "${common[@]}" --bind "127.0.0.1:$tls_port" \
    --certfile "$work/certs/cert.pem" --keyfile "$work/certs/key.pem" >"$work/tls.log" 2>&1 &
pids+=($!)
"$PYTHON" -m multiplex "${common[@]}" --bind "127.0.0.1:$h2c_port" --h2c >"$work/h2c.log" 2>&1 &
pids+=($!)
wait_for "$tls_port" || exit 1
wait_for "$h2c_port" || exit 1

status=0
echo "== h2spec over TLS (h2, port $tls_port)"
timeout 600 "$h2spec" -h 127.0.0.1 -p "$tls_port" -t -k "$@" || status=1
echo
echo "== h2spec over cleartext (h2c, port $h2c_port)"
timeout 600 "$h2spec" -h 127.0.0.1 -p "$h2c_port" "$@" || status=1
echo
if [ "$status" = 0 ]; then echo "h2spec: both runs passed"; else echo "h2spec: failures (see above)"; fi
exit "$status"
