#!/usr/bin/env bash
# Midge against Mosquitto and rumqttd, same machine, same load generator: prints one table.
#   scripts/bench.sh [--only fanin0,fanin1,fanout0,latency,idle] [--idle-connections N]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }
# The cluster scenario's NATS server (Debian's package); without it that scenario is skipped.
command -v nats-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server || true; }
# 10,000 idle connections need file descriptors on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# rumqttd, the second peer, built from crates.io into target/ (not --locked: the metrics crate its lock
# file names no longer compiles with current Rust).
RUMQTTD=target/tools/bin/rumqttd
[ -x "$RUMQTTD" ] || cargo install rumqttd --version 0.20.0 --root target/tools
cargo build --release -p midge-broker -p midge-mgmt -p midge-bench
exec ./target/release/midge-bench --midge target/release/midge-broker --mgmt target/release/midge-mgmt \
    --rumqttd "$RUMQTTD" "$@"
