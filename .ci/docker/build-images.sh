#!/usr/bin/env bash
# Builds midge-broker:latest, midge-mgmt:latest and midge-nats:latest without any registry: a Debian base from
# debootstrap (made once, then reused), and the binaries cargo built on this host.
#   PROFILE=debug|release (default debug: the tests already built it)
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-debug}
BASE=midge-runtime-base:bookworm

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    }
    rootfs=$(mktemp -d)
    echo "making $BASE with debootstrap (once per machine)"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi

if [ "$PROFILE" = release ]; then
    cargo build --release --locked -p midge-broker -p midge-mgmt -p midge-ctl
else
    cargo build --locked -p midge-broker -p midge-mgmt -p midge-ctl
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# Wherever cargo put them (CARGO_TARGET_DIR, if set, moves the target directory).
bin="${CARGO_TARGET_DIR:-target}/$PROFILE"
cp ".ci/docker/Dockerfile" deploy/acl.conf deploy/broker-entrypoint.sh "$bin/midge-broker" "$bin/midge-mgmt" "$bin/midge-ctl" "$context/"
docker build -q --target broker -t midge-broker:latest "$context" >/dev/null
docker build -q --target mgmt -t midge-mgmt:latest "$context" >/dev/null
echo "built midge-broker:latest and midge-mgmt:latest ($PROFILE binaries on $BASE)"
# The cluster's NATS server: Debian's, from this host (.ci/run installs the package).
if command -v nats-server >/dev/null; then
    cp "$(command -v nats-server)" "$context/"
    docker build -q --target nats -t midge-nats:latest "$context" >/dev/null
    echo "built midge-nats:latest ($(nats-server --version))"
fi
