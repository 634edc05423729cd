"""paho-mqtt (MQTT 5) sessions with a 2-second expiry: parked together, some resumed in between, each
must be there before its expiry and gone after it, also when the client comes back soon after.

Usage: paho_expiry.py PORT. Prints one "<what> <session present>" line per connection.
"""
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PORT = int(sys.argv[1])


def connect(client_id, expiry, clean=False):
    """Connects; the client (its network loop running) and the CONNACK's session present flag."""
    flags = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda _c, _u, connack, _rc, _p: flags.setdefault("present", connack.session_present)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry
    client.connect("127.0.0.1", PORT, clean_start=clean, properties=properties)
    client.loop_start()
    deadline = time.monotonic() + 5
    while "present" not in flags and time.monotonic() < deadline:
        time.sleep(0.01)
    return client, flags.get("present")


def leave(client):
    client.disconnect()
    client.loop_stop()


for i in range(5):
    client, _ = connect(f"paho-exp-{i}", 2, clean=True)
    client.subscribe(f"paho-exp/{i}", qos=1)
    time.sleep(0.05)
    leave(client)
time.sleep(0.5)
client, present = connect("paho-exp-2", 2)
print("resumed-early", present)
leave(client)
client, present = connect("paho-exp-0", 2)
print("resumed-early", present)
leave(client)
# 2.4 s after the last one parked again: every session is past its expiry, the sweep or not.
time.sleep(2.4)
for i in range(5):
    client, present = connect(f"paho-exp-{i}", 0)
    print("after-expiry", present)
    leave(client)
