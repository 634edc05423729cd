#!/usr/bin/env bash
# Runs the broker and the management sidecar together with sane defaults; Ctrl-C stops both.
#
#   MQTT on 0.0.0.0:1883 and over WebSocket on ws://0.0.0.0:8083/mqtt, and with TLS on 8883 (mqtt:ssl) and
#   8084 (mqtt:wss) when ./certs (or MIDGE_CERTS_DIR) holds server.crt and server.key (scripts/dev-certs.sh
#   makes some to try); the API on http://0.0.0.0:8080/api/v2 (admin / public, or MIDGE_ADMIN_PASSWORD),
#   the sidecar's database in ./data/midge-mgmt.db. Any MIDGE_* variable you set is passed through.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p midge-broker -p midge-mgmt
mkdir -p data

# Both processes must share the management secret; make one up for this run if none is given.
if [ -z "${MIDGE_MGMT_SECRET:-}" ]; then
    MIDGE_MGMT_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
fi
export MIDGE_MGMT_SECRET

export MIDGE_WS_LISTEN=${MIDGE_WS_LISTEN-0.0.0.0:8083}
MIDGE_CERTS_DIR=${MIDGE_CERTS_DIR:-certs} deploy/broker-entrypoint.sh ./target/release/midge-broker &
broker=$!
./target/release/midge-mgmt --db "${MIDGE_MGMT_DB:-data/midge-mgmt.db}" &
mgmt=$!

stop() {
    kill -TERM "$mgmt" "$broker" 2>/dev/null || true
    wait "$mgmt" "$broker" 2>/dev/null || true
}
trap stop INT TERM EXIT
# Whichever exits first takes the other down with it.
wait -n "$broker" "$mgmt"
