#!/bin/sh
# Starts the broker (the command given), in the image and from scripts/run.sh, with TLS listeners
# when there is a certificate to serve them: if MIDGE_CERTS_DIR (default /etc/midge/certs) holds
# server.crt and server.key, mqtt:ssl listens on MIDGE_SSL_LISTEN (default 0.0.0.0:8883) and mqtt:wss
# on MIDGE_WSS_LISTEN (default 0.0.0.0:8084). Settings given explicitly (MIDGE_CERTFILE,
# MIDGE_SSL_LISTEN, ...) are left as they are; one set to nothing (MIDGE_WSS_LISTEN=) keeps that
# listener off. Client certificates are required only if MIDGE_CACERTFILE is set.
#   broker-entrypoint.sh midge-broker [ARGS...]
set -eu
certs=${MIDGE_CERTS_DIR:-/etc/midge/certs}
if [ -z "${MIDGE_CERTFILE:-}" ] && [ -e "$certs/server.crt" ] && [ -e "$certs/server.key" ]; then
    for file in "$certs/server.crt" "$certs/server.key"; do
        if [ ! -r "$file" ]; then
            echo "broker-entrypoint: $file is there but this user ($(id -u)) cannot read it" >&2
            exit 1
        fi
    done
    export MIDGE_CERTFILE="$certs/server.crt" MIDGE_KEYFILE="$certs/server.key"
    export MIDGE_SSL_LISTEN="${MIDGE_SSL_LISTEN-0.0.0.0:8883}" MIDGE_WSS_LISTEN="${MIDGE_WSS_LISTEN-0.0.0.0:8084}"
fi
exec "$@"
