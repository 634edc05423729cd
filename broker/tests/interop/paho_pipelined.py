"""paho-mqtt's everyday pattern: connect(), subscribe() and publish() before the network loop runs, so
SUBSCRIBE and PUBLISH leave right behind CONNECT, before any CONNACK has been read.

Usage: paho_pipelined.py PORT. Prints "<topic> <payload> <qos>" for the message it receives back.
"""
import queue
import sys

import paho.mqtt.client as mqtt

PORT = int(sys.argv[1])
received = queue.Queue()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-pipelined", protocol=mqtt.MQTTv311)
client.on_message = lambda client, userdata, message: received.put(message)
client.connect("127.0.0.1", PORT, keepalive=10)
client.subscribe("pipelined/#", qos=1)
client.publish("pipelined/paho", b"right-behind-connect", qos=1)
client.loop_start()
message = received.get(timeout=10)
print(message.topic, message.payload.decode(), message.qos, flush=True)
client.disconnect()
client.loop_stop()
