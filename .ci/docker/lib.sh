# Shared by the docker smoke scripts (sourced): compose, free ports, cleanup, reporting, waiting.
# The caller sets COMPOSE_PROJECT_NAME and may add `-f FILE` to COMPOSE before using them.
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
passed=0
work=$(mktemp -d)
SMOKE=${SMOKE:-docker smoke}

cleanup() {
    jobs -p | xargs -r kill 2>/dev/null || true
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "$SMOKE FAILED: $*"; "${COMPOSE[@]}" logs --tail 40 || true; echo "$SMOKE: $passed passed, 1 failed"; exit 1; }
ok() { passed=$((passed + 1)); echo "ok - $*"; }
# wait_for SECONDS COMMAND...: retries until the command succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
}
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q "$1")")" = healthy ]; }
