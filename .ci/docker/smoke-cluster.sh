#!/usr/bin/env bash
# The cluster for real: docker-compose.cluster.yml (three NATS servers, three brokers, the sidecar)
# from images built offline, checked for what a cluster promises. Tears everything down at the end,
# also on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

source .ci/docker/lib.sh
COMPOSE+=(-f docker-compose.cluster.yml)
SMOKE="cluster smoke"

export COMPOSE_PROJECT_NAME=midge-cluster-smoke
export MIDGE_MGMT_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export MIDGE_MQTT_PORT_1=$(free_port) MIDGE_MQTT_PORT_2=$(free_port) MIDGE_MQTT_PORT_3=$(free_port)
export MIDGE_API_PORT=$(free_port) MIDGE_DASHBOARD_PORT=$(free_port)
API=http://127.0.0.1:$MIDGE_API_PORT/api/v2
AUTH=admin:public
# nodes_are LIST: management/nodes names exactly these nodes (comma-separated, sorted).
nodes_are() {
    curl -s -m 5 -u "$AUTH" "$API/management/nodes" \
        | python3 -c 'import json,sys; print(",".join(sorted(n["name"] for n in json.load(sys.stdin)["result"])))' \
        | grep -qx "$1"
}
# routed TOPIC NODE: the API's routes list TOPIC on NODE.
routed() { curl -s -m 5 -u "$AUTH" "$API/routes/$1" | grep -q "\"node\":\"$2\""; }
# across FROM_PORT TO_PORT TOPIC: a message published on one broker arrives once at a subscriber on the other.
across() {
    local out="$work/across.${3//\//_}"
    mosquitto_sub -h 127.0.0.1 -p "$2" -t "$3" -q 1 -W 6 > "$out" 2>/dev/null &
    local sub=$!
    sleep 1
    mosquitto_pub -h 127.0.0.1 -p "$1" -t "$3" -m "across" -q 1 || return 1
    wait "$sub" || true
    [ "$(cat "$out")" = across ]
}

bash .ci/docker/build-images.sh
docker image inspect midge-nats:latest >/dev/null 2>&1 || fail "no midge-nats image: is nats-server installed?"
"${COMPOSE[@]}" up -d --no-build
for service in broker1 broker2 broker3 mgmt; do
    wait_for 90 healthy "$service" || fail "$service never healthy"
done
ALL=midge@broker1,midge@broker2,midge@broker3
wait_for 60 nodes_are "$ALL" || fail "management/nodes: $(curl -s -u "$AUTH" "$API/management/nodes")"
ok "cluster up; management/nodes lists the three brokers"

# A publish on one broker reaches a subscriber on another, once; the API sees the route there.
mosquitto_sub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT_3" -i smoke-sub3 -t smoke/x -q 1 -W 8 > "$work/sub3.out" &
sub=$!
wait_for 20 routed smoke%2Fx midge@broker3 || fail "routes/smoke/x does not show broker3"
mosquitto_pub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT_1" -t smoke/x -m once -q 1 || fail "publish on broker1"
wait "$sub" || true
[ "$(cat "$work/sub3.out")" = once ] || fail "subscriber on broker3 got: $(cat "$work/sub3.out")"
ok "publish on broker1 reaches a subscriber on broker3 once; routes show it on broker3"

got=$(mosquitto_sub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT_2" -t '$SYS/brokers' -C 1 -W 10) || fail "no \$SYS/brokers"
[ "$got" = "$ALL" ] || fail "\$SYS/brokers on broker2: $got"
ok "\$SYS/brokers on broker2 lists every node"

# A broker killed: gone from the API's nodes and from $SYS/brokers; the rest go on.
"${COMPOSE[@]}" kill -s KILL broker3 >/dev/null
sys_two() { [ "$(mosquitto_sub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT_1" -t '$SYS/brokers' -C 1 -W 3)" = midge@broker1,midge@broker2 ]; }
wait_for 10 sys_two || fail "\$SYS/brokers on broker1 still lists broker3"
wait_for 30 nodes_are midge@broker1,midge@broker2 || fail "management/nodes still lists broker3"
across "$MIDGE_MQTT_PORT_2" "$MIDGE_MQTT_PORT_1" smoke/after-kill || fail "broker2 -> broker1 after broker3 died"
ok "SIGKILL of broker3: gone from nodes and \$SYS/brokers; broker2 -> broker1 still works"

# A NATS server killed: the brokers on it move to another, and cross-node traffic goes on.
"${COMPOSE[@]}" kill -s KILL nats1 >/dev/null
wait_for 30 across "$MIDGE_MQTT_PORT_1" "$MIDGE_MQTT_PORT_2" smoke/after-nats || fail "broker1 -> broker2 after nats1 died"
ok "SIGKILL of nats1: broker1 -> broker2 still works"

echo "cluster smoke: $passed passed, 0 failed"
