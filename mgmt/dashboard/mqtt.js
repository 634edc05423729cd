// A small MQTT 3.1.1 client over WebSocket, for the dashboard's WebSocket page: connect (with a
// username and password if given), subscribe, unsubscribe, publish and receive at QoS 0, 1 and 2, and
// keep the connection alive. It speaks only what that page needs; it is not a general library.
'use strict';

(function (global) {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  const CONNACK_ERRORS = {
    1: 'unacceptable protocol version',
    2: 'client identifier rejected',
    3: 'server unavailable',
    4: 'bad username or password',
    5: 'not authorized',
  };

  function concat(parts) {
    const length = parts.reduce((sum, part) => sum + part.length, 0);
    const out = new Uint8Array(length);
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  function u16(n) {
    return Uint8Array.of(n >> 8, n & 0xff);
  }

  function str(s) {
    const bytes = encoder.encode(s);
    return concat([u16(bytes.length), bytes]);
  }

  // Fixed header (type, flags, remaining length) and body.
  function packet(type, flags, parts) {
    const body = concat(parts);
    const head = [(type << 4) | flags];
    let n = body.length;
    do {
      let digit = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) digit |= 0x80;
      head.push(digit);
    } while (n > 0);
    return concat([Uint8Array.from(head), body]);
  }

  class MqttClient {
    // options: {clientId, username, password, keepalive (seconds), clean (bool)}
    constructor(url, options) {
      this.url = url;
      this.options = options;
      this.buffer = new Uint8Array(0);
      this.nextId = 1;
      this.pending = new Map(); // packet id -> {resolve, reject, kind}
      this.onmessage = () => {};
      this.onclose = () => {};
      this.connected = false;
    }

    connect() {
      return new Promise((resolve, reject) => {
        let socket;
        try {
          socket = new WebSocket(this.url, ['mqtt']);
        } catch (e) {
          reject(e);
          return;
        }
        socket.binaryType = 'arraybuffer';
        this.socket = socket;
        this.connack = { resolve, reject };
        socket.onopen = () => socket.send(this.connectPacket());
        socket.onmessage = (event) => this.receive(new Uint8Array(event.data));
        socket.onerror = () => {};
        socket.onclose = (event) => this.closed(event.reason || 'connection closed');
      });
    }

    connectPacket() {
      const o = this.options;
      let flags = o.clean === false ? 0 : 0x02;
      const payload = [str(o.clientId)];
      if (o.username) {
        flags |= 0x80;
        payload.push(str(o.username));
        if (o.password) {
          flags |= 0x40;
          payload.push(str(o.password));
        }
      }
      const keepalive = o.keepalive || 60;
      return packet(1, 0, [str('MQTT'), Uint8Array.of(4, flags), u16(keepalive), ...payload]);
    }

    id() {
      const id = this.nextId;
      this.nextId = this.nextId === 0xffff ? 1 : this.nextId + 1;
      return id;
    }

    request(id, kind, bytes) {
      return new Promise((resolve, reject) => {
        if (!this.connected) {
          reject(new Error('not connected'));
          return;
        }
        this.pending.set(id, { resolve, reject, kind });
        this.socket.send(bytes);
      });
    }

    subscribe(topic, qos) {
      const id = this.id();
      return this.request(id, 'suback', packet(8, 2, [u16(id), str(topic), Uint8Array.of(qos)]));
    }

    unsubscribe(topic) {
      const id = this.id();
      return this.request(id, 'unsuback', packet(10, 2, [u16(id), str(topic)]));
    }

    publish(topic, payload, qos, retain) {
      const flags = (qos << 1) | (retain ? 1 : 0);
      const body = encoder.encode(payload);
      if (qos === 0) {
        if (!this.connected) return Promise.reject(new Error('not connected'));
        this.socket.send(packet(3, flags, [str(topic), body]));
        return Promise.resolve();
      }
      const id = this.id();
      return this.request(id, qos === 1 ? 'puback' : 'pubcomp', packet(3, flags, [str(topic), u16(id), body]));
    }

    end() {
      if (this.socket && this.connected) this.socket.send(Uint8Array.of(0xe0, 0));
      if (this.socket) this.socket.close();
    }

    receive(bytes) {
      this.buffer = concat([this.buffer, bytes]);
      for (;;) {
        let length = 0;
        let multiplier = 1;
        let at = 1;
        let complete = false;
        while (at < this.buffer.length && at <= 4) {
          const digit = this.buffer[at++];
          length += (digit & 0x7f) * multiplier;
          multiplier *= 128;
          if ((digit & 0x80) === 0) {
            complete = true;
            break;
          }
        }
        if (!complete || this.buffer.length < at + length) return;
        const header = this.buffer[0];
        const body = this.buffer.subarray(at, at + length);
        this.buffer = this.buffer.slice(at + length);
        this.handle(header >> 4, header & 0x0f, body);
      }
    }

    handle(type, flags, body) {
      const id = body.length >= 2 ? (body[0] << 8) | body[1] : 0;
      switch (type) {
        case 2: { // CONNACK
          const code = body[1];
          if (code === 0) {
            this.connected = true;
            const every = (this.options.keepalive || 60) * 500;
            this.ping = setInterval(() => this.socket.send(Uint8Array.of(0xc0, 0)), every);
            this.connack.resolve();
          } else {
            this.connack.reject(new Error(CONNACK_ERRORS[code] || `refused (${code})`));
            this.socket.close();
          }
          break;
        }
        case 3: { // PUBLISH
          const qos = (flags >> 1) & 3;
          const topicLength = (body[0] << 8) | body[1];
          const topic = decoder.decode(body.subarray(2, 2 + topicLength));
          let at = 2 + topicLength;
          let packetId = 0;
          if (qos > 0) {
            packetId = (body[at] << 8) | body[at + 1];
            at += 2;
          }
          const payload = decoder.decode(body.subarray(at));
          if (qos === 1) this.socket.send(packet(4, 0, [u16(packetId)]));
          if (qos === 2) this.socket.send(packet(5, 0, [u16(packetId)]));
          this.onmessage(topic, payload, { qos, retain: (flags & 1) === 1 });
          break;
        }
        case 5: // PUBREC: release our QoS 2 message
          this.socket.send(packet(6, 2, [u16(id)]));
          break;
        case 6: // PUBREL: complete theirs
          this.socket.send(packet(7, 0, [u16(id)]));
          break;
        case 4: // PUBACK
        case 7: // PUBCOMP
        case 11: // UNSUBACK
          this.settle(id, null);
          break;
        case 9: { // SUBACK
          const granted = body[2];
          if (granted === 0x80) this.settle(id, new Error('subscription refused'));
          else this.settle(id, null, granted);
          break;
        }
        default: // PINGRESP and anything else need nothing
          break;
      }
    }

    settle(id, error, value) {
      const waiting = this.pending.get(id);
      if (!waiting) return;
      this.pending.delete(id);
      if (error) waiting.reject(error);
      else waiting.resolve(value);
    }

    closed(reason) {
      const wasConnected = this.connected;
      this.connected = false;
      clearInterval(this.ping);
      for (const waiting of this.pending.values()) waiting.reject(new Error(reason));
      this.pending.clear();
      if (!wasConnected && this.connack) this.connack.reject(new Error(`could not connect: ${reason}`));
      this.onclose(reason);
    }
  }

  global.MqttClient = MqttClient;
})(window);
