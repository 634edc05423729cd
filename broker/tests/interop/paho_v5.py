"""Drives the broker with paho-mqtt at MQTT 5: a subscriber with no-local and a subscription identifier,
a publisher with properties and a topic alias, and a session resumed after its connection ended.

Usage: paho_v5.py PORT. Prints what each step saw, one line each.
"""
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])
WAIT = 10


def client(client_id, expiry=None, clean_start=True):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.connack = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        c.connack = {"reason": str(reason_code), "present": flags.session_present, "properties": properties}
        connected.set()

    c.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    if expiry is not None:
        props.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", PORT, keepalive=10, clean_start=clean_start, properties=props)
    c.loop_start()
    assert connected.wait(WAIT), "CONNACK in time"
    return c


def subscribed(c, topic, options, identifier=None):
    done = threading.Event()
    c.on_subscribe = lambda client, userdata, mid, reason_codes, properties: done.set()
    props = None
    if identifier is not None:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = identifier
    c.subscribe(topic, options=options, properties=props)
    assert done.wait(WAIT), "SUBACK in time"


received = []
# One release per message, so none is missed however they interleave with the waits.
got = threading.Semaphore(0)


def on_message(client, userdata, message):
    p = message.properties
    users = getattr(p, "UserProperty", [])
    ids = getattr(p, "SubscriptionIdentifier", [])
    received.append(
        f"{client._client_id.decode()} {message.topic} {message.payload.decode()} qos={message.qos} "
        f"user={users} ids={ids} content={getattr(p, 'ContentType', None)}"
    )
    got.release()


# The subscriber: no local, QoS 1, identifier 5.
sub = client("paho5-sub")
print("connack", sub.connack["reason"], sub.connack["properties"].TopicAliasMaximum, flush=True)
sub.on_message = on_message
subscribed(sub, "paho5/#", SubscribeOptions(qos=1, noLocal=True), identifier=5)

# Its own message does not come back; the publisher's do, with their properties, the second one sent
# through the topic alias the first set up.
sub.publish("paho5/own", b"mine", qos=1).wait_for_publish(WAIT)
pub = client("paho5-pub")
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = [("k", "v"), ("k", "w")]
props.ContentType = "text/plain"
props.TopicAlias = 3
pub.publish("paho5/aliased", b"first", qos=1, properties=props).wait_for_publish(WAIT)
alias_only = Properties(PacketTypes.PUBLISH)
alias_only.TopicAlias = 3
pub.publish("", b"second", qos=1, properties=alias_only).wait_for_publish(WAIT)
for _ in range(2):
    assert got.acquire(timeout=WAIT), "a message in time"
for line in received:
    print(line, flush=True)
received.clear()

# A session with an expiry interval outlives its connection and keeps what was published meanwhile.
keeper = client("paho5-keeper", expiry=60, clean_start=False)
subscribed(keeper, "kept/#", SubscribeOptions(qos=1))
keeper.disconnect()
keeper.loop_stop()
pub.publish("kept/while-away", b"queued", qos=1).wait_for_publish(WAIT)
back = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho5-keeper", protocol=mqtt.MQTTv5)
back.on_message = on_message
present = threading.Event()
back.on_connect = lambda client, userdata, flags, reason_code, properties: (
    print("resumed present", flags.session_present, flush=True),
    present.set(),
)
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 60
back.connect("127.0.0.1", PORT, keepalive=10, clean_start=False, properties=props)
back.loop_start()
assert present.wait(WAIT), "CONNACK in time"
assert got.acquire(timeout=WAIT), "the queued message in time"
print(received[0], flush=True)
for c in (sub, pub, back):
    c.disconnect()
    c.loop_stop()
