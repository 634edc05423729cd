"""Drives the broker with paho-mqtt, once per protocol version: subscribe, publish QoS 2, receive it.

Usage: paho_roundtrip.py PORT. Prints one line per protocol: "<protocol> <topic> <payload> <qos>".
"""
import sys

import paho.mqtt.client as mqtt

PORT = int(sys.argv[1])


def round_trip(protocol, name):
    received = []

    def on_connect(client, userdata, flags, reason_code, properties=None):
        client.subscribe("paho/#", qos=2)

    def on_subscribe(client, userdata, mid, reason_codes, properties=None):
        client.publish("paho/" + name, ("from-" + name).encode(), qos=2)

    def on_message(client, userdata, message):
        received.append(message)
        client.disconnect()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-" + name, protocol=protocol)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", PORT, keepalive=10)
    client.loop_forever(timeout=1.0)
    message = received[0]
    print(name, message.topic, message.payload.decode(), message.qos, flush=True)


round_trip(mqtt.MQTTv311, "v311")
round_trip(mqtt.MQTTv31, "v31")
