"""paho-mqtt publishing QoS 1 with no window of its own (max_inflight 65535) into a slow paho
subscriber: the broker must slow the publisher rather than acknowledge and drop.

Usage: paho_flood.py PORT COUNT. Prints "acked <n> received <n> in-order <bool>".
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt

PORT, COUNT = int(sys.argv[1]), int(sys.argv[2])
received = []
all_received = threading.Event()


def on_message(client, userdata, message):
    received.append(int(message.payload))
    if len(received) % 20 == 0:
        time.sleep(0.002)  # a subscriber slower than the publisher
    if len(received) == COUNT:
        all_received.set()


subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-slow", protocol=mqtt.MQTTv311)
subscriber.on_message = on_message
subscriber.connect("127.0.0.1", PORT)
subscriber.subscribe("flood/paho", qos=1)
subscriber.loop_start()
time.sleep(0.5)

acked = 0
all_acked = threading.Event()


def on_publish(client, userdata, mid, reason, properties):
    global acked
    acked += 1
    if acked == COUNT:
        all_acked.set()


publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-flood", protocol=mqtt.MQTTv311)
publisher.max_inflight_messages_set(65535)
publisher.on_publish = on_publish
publisher.connect("127.0.0.1", PORT)
publisher.loop_start()
for n in range(1, COUNT + 1):
    publisher.publish("flood/paho", str(n), qos=1)
all_acked.wait(10)
all_received.wait(5)
print("acked", acked, "received", len(received), "in-order", received == list(range(1, COUNT + 1)), flush=True)
for client in (publisher, subscriber):
    client.disconnect()
    client.loop_stop()
