"""One MQTT 3.1.1 round trip with paho-mqtt over TLS and/or WebSocket: subscribe, publish QoS 1,
receive it.

Usage: paho_transport.py PORT [--ca CA] [--cert CERT --key KEY] [--ws PATH].
Prints "<topic> <payload> <qos>", or "refused: <error>" if no connection could be made.
"""
import argparse
import ssl

import paho.mqtt.client as mqtt

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("--ca")
parser.add_argument("--cert")
parser.add_argument("--key")
parser.add_argument("--ws")
args = parser.parse_args()

received = []
connected = []


def on_connect(client, userdata, flags, reason_code, properties=None):
    connected.append(reason_code)
    client.subscribe("paho/transport", qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties=None):
    client.publish("paho/transport", b"over-" + (b"ws" if args.ws else b"tcp"), qos=1)


def on_message(client, userdata, message):
    received.append(message)
    client.disconnect()


client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id="paho-transport",
    protocol=mqtt.MQTTv311,
    transport="websockets" if args.ws else "tcp",
)
if args.ws:
    client.ws_set_options(path=args.ws)
if args.ca:
    client.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
try:
    client.connect("localhost", args.port, keepalive=10)
except Exception as error:  # a refused handshake: the test expects it for a wrong CA
    print("refused:", type(error).__name__, flush=True)
    raise SystemExit(0)
# loop() rather than loop_forever(), which would reconnect after a refusal.
while not received:
    if client.loop(timeout=1.0) != mqtt.MQTT_ERR_SUCCESS:
        # Shut before CONNACK: under TLS 1.3 a refused client certificate shows only here.
        print("refused: closed before CONNACK" if not connected else "closed", flush=True)
        raise SystemExit(0)
message = received[0]
print(message.topic, message.payload.decode(), message.qos, flush=True)
