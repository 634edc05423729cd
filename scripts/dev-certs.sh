#!/usr/bin/env bash
# Makes a throwaway certificate authority and certificates to try TLS with, in DIR (default ./certs,
# which git ignores): ca.crt/ca.key, server.crt/server.key for localhost, 127.0.0.1, ::1 and the
# compose service name `broker` (plus any names given after DIR), and client.crt/client.key (CN
# "client") for client-certificate checks. For development only: the keys are not protected, and the
# server key is readable by all so that the broker's container user can read it from a mount.
#   scripts/dev-certs.sh [DIR [NAME...]]
set -euo pipefail
dir=${1:-certs}
shift || true
mkdir -p "$dir"
cd "$dir"
if [ -e ca.key ]; then
    echo "$dir already holds a CA (ca.key); remove it first to make a new one" >&2
    exit 1
fi

names="DNS:localhost,DNS:broker,IP:127.0.0.1,IP:::1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.:]+$ ]]; then names+=",IP:$name"; else names+=",DNS:$name"; fi
done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=Midge development CA" -keyout ca.key -out ca.crt 2>/dev/null

issue() { # issue NAME SUBJECT EXTENSIONS
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
        -extfile <(printf '%s\n' "$3") -out "$1.crt" 2>/dev/null
    rm "$1.csr"
}
issue server "/CN=midge broker" "subjectAltName=$names
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
issue client "/CN=client" "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
rm -f ca.srl
chmod 600 ca.key client.key
chmod 644 server.key ca.crt server.crt client.crt
echo "made in $dir: ca.crt, server.crt/server.key ($names), client.crt/client.key"
