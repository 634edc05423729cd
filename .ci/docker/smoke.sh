#!/usr/bin/env bash
# The two-container stack for real: build images offline, bring docker-compose.yml up, and check
# what users rely on. Tears everything down at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

source .ci/docker/lib.sh

export COMPOSE_PROJECT_NAME=midge-smoke
export MIDGE_MGMT_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export MIDGE_MQTT_PORT=$(free_port) MIDGE_API_PORT=$(free_port) MIDGE_DASHBOARD_PORT=$(free_port)
export MIDGE_WS_PORT=$(free_port) MIDGE_MQTTS_PORT=$(free_port) MIDGE_WSS_PORT=$(free_port)
NODE=midge@broker
API=http://127.0.0.1:$MIDGE_API_PORT/api/v2
AUTH=admin:public

# code GET|POST|... PATH [BODY]: prints the API's code field ("http" if HTTP itself failed).
code() {
    local out
    out=$(curl -s -m 10 -u "$AUTH" -X "$1" "$API/$2" ${3:+-d "$3"}) || { echo http; return; }
    python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("code"))' "$out" 2>/dev/null || echo "bad:$out"
}
node_known() { [ "$(code GET "management/nodes/$NODE")" = 0 ]; }

# Certificates as an operator would mount them: TLS comes up because they are there.
command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; }
bash scripts/dev-certs.sh "$work/certs" >/dev/null
export MIDGE_CERTS_DIR=$work/certs

bash .ci/docker/build-images.sh
"${COMPOSE[@]}" up -d --no-build
wait_for 90 healthy broker || fail "broker never healthy"
wait_for 90 healthy mgmt || fail "sidecar never healthy"
wait_for 30 node_known || fail "sidecar never reached the broker"
ok "stack up and healthy"

# (1) and (2): a subscriber on the published port is listed, and an API publish reaches it.
mosquitto_sub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT" -i smoke-sub -t smoke/topic -C 1 -W 30 > "$work/sub.out" &
sub=$!
listed() { curl -s -u "$AUTH" "$API/nodes/$NODE/clients" | grep -q '"client_id":"smoke-sub"'; }
wait_for 20 listed || fail "GET nodes/$NODE/clients does not list the subscriber"
ok "nodes/{node}/clients lists the subscriber"
"${COMPOSE[@]}" exec -T -e MIDGE_CTL_USER="${AUTH%%:*}" -e MIDGE_CTL_PASSWORD="${AUTH#*:}" mgmt midge-ctl clients list \
    | grep -q '^smoke-sub ' || fail "midge-ctl in the sidecar's container does not list the subscriber"
ok "midge-ctl clients list, inside the sidecar's container"
[ "$(code POST mqtt/publish '{"topic":"smoke/topic","payload":"through-the-sidecar","qos":1}')" = 0 ] || fail "publish refused"
wait "$sub" || fail "subscriber got nothing"
grep -qx "through-the-sidecar" "$work/sub.out" || fail "subscriber got: $(cat "$work/sub.out")"
ok "POST mqtt/publish reaches a subscriber on the broker's port"

# The dashboard on its published port, and its API behind it.
page() { curl -s -m 5 "http://127.0.0.1:$MIDGE_DASHBOARD_PORT/" | grep -q 'dashboard/app.js'; }
wait_for 20 page || fail "no dashboard on port $MIDGE_DASHBOARD_PORT"
curl -s -m 5 -u "$AUTH" "http://127.0.0.1:$MIDGE_DASHBOARD_PORT/api/v2/management/nodes" | grep -q "$NODE" \
    || fail "the dashboard's port does not serve the API"
ok "dashboard on its published port"

# (3) ops read $SYS from the host.
mosquitto_sub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT" -t '$SYS/brokers/+/uptime' -C 1 -W 15 -v > "$work/sys.out" \
    || fail "no \$SYS uptime from the host"
grep -q "^\$SYS/brokers/$NODE/uptime .*seconds" "$work/sys.out" || fail "uptime: $(cat "$work/sys.out")"
ok "\$SYS/brokers/+/uptime readable from the host"

# (4) the other listeners: MQTT/TLS checked against the CA, WebSocket and secure WebSocket at /mqtt.
mosquitto_sub -h localhost -p "$MIDGE_MQTTS_PORT" --cafile "$work/certs/ca.crt" -i smoke-tls -t smoke/tls -C 1 -W 30 \
    > "$work/tls.out" &
sub=$!
tls_listed() { curl -s -u "$AUTH" "$API/nodes/$NODE/clients" | grep -q '"client_id":"smoke-tls"'; }
wait_for 20 tls_listed || fail "no client over TLS on the mounted certificate"
mosquitto_pub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT" -t smoke/tls -m over-tls -q 1 || fail "publish for TLS"
wait "$sub" || fail "TLS subscriber got nothing"
grep -qx over-tls "$work/tls.out" || fail "TLS subscriber got: $(cat "$work/tls.out")"
ok "mqtt:ssl on $MIDGE_MQTTS_PORT with the mounted certificate"
transport=broker/tests/interop/paho_transport.py
out=$(python3 "$transport" "$MIDGE_WS_PORT" --ws /mqtt) || fail "paho over WebSocket: $out"
[ "$out" = "paho/transport over-ws 1" ] || fail "paho over WebSocket: $out"
out=$(python3 "$transport" "$MIDGE_WSS_PORT" --ws /mqtt --ca "$work/certs/ca.crt") || fail "paho over wss: $out"
[ "$out" = "paho/transport over-ws 1" ] || fail "paho over secure WebSocket: $out"
ok "mqtt:ws and mqtt:wss at /mqtt"

# (5) an admin user survives a sidecar restart and down/up with the volume kept.
[ "$(code POST users '{"username":"smoke-user","password":"smoke-pass","tags":"ops"}')" = 0 ] || fail "user not created"
user_works() { [ "$(curl -s -m 5 -X POST "$API/auth" -d '{"username":"smoke-user","password":"smoke-pass"}')" = '{"code":0,"result":[]}' ]; }
"${COMPOSE[@]}" restart mgmt >/dev/null
wait_for 60 user_works || fail "user lost on sidecar restart"
"${COMPOSE[@]}" down >/dev/null
"${COMPOSE[@]}" up -d --no-build >/dev/null
wait_for 90 user_works || fail "user lost on down/up"
wait_for 30 node_known || fail "sidecar lost the broker after down/up"
ok "admin user survives restart and down/up"

# (5b) a retained message survives a SIGKILL of the broker's container (its store is on a volume).
mosquitto_pub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT" -t smoke/kept -m survives-kill -r -q 1 || fail "retained publish"
"${COMPOSE[@]}" kill -s KILL broker >/dev/null
"${COMPOSE[@]}" start broker >/dev/null
wait_for 60 healthy broker || fail "broker never healthy after SIGKILL"
got=$(mosquitto_sub -h 127.0.0.1 -p "$MIDGE_MQTT_PORT" -t smoke/kept -C 1 -W 10) || fail "no retained message after SIGKILL"
[ "$got" = survives-kill ] || fail "retained after SIGKILL: $got"
ok "a retained message survives SIGKILL of the broker"

# (6) broker stopped: 101, quickly; started: back to normal.
"${COMPOSE[@]}" stop broker >/dev/null
start=$SECONDS
got=$(code GET "nodes/$NODE/clients")
[ "$got" = 101 ] || fail "broker down answered $got"
[ $((SECONDS - start)) -le 4 ] || fail "101 took $((SECONDS - start)) s"
"${COMPOSE[@]}" start broker >/dev/null
clients_ok() { [ "$(code GET "nodes/$NODE/clients")" = 0 ]; }
wait_for 60 clients_ok || fail "API never recovered after the broker came back"
ok "broker down answers 101 quickly and recovers"

echo "docker smoke: $passed passed, 0 failed"
