#!/usr/bin/env bash
# A/B two broker builds under one steady load, alternating, since this machine's figures drift
# between minutes more than many changes move them:
#   scripts/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [RATE] [SCENARIO]
# Prints each run's mean delivered rate (see midge-bench --at).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 rounds=${3:-3} rate=${4:-400000} scenario=${5:-fanin1}
ulimit -n 20000 2>/dev/null || true
for round in $(seq "$rounds"); do
    for side in old new; do
        binary=${!side}
        mean=$(./target/release/midge-bench --midge "$binary" --only "$scenario" --at "$rate" 2>&1 | grep -a 'mean delivered')
        echo "round $round $side: $mean"
    done
done
