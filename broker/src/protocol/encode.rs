//! Packets → bytes, appended to a connection's write buffer so many packets go out in one write.

use bytes::{BufMut, BytesMut};

use super::packet::*;

/// Appends `packet` as the protocol `level` writes it.
pub fn encode(packet: &Packet, level: Protocol, buf: &mut BytesMut) {
    match level {
        // The two differ only in CONNECT's protocol name, which the packet carries.
        Protocol::V31 | Protocol::V311 => encode_v3(packet, buf),
    }
}

/// 3.1 and 3.1.1: no properties, reason codes only where a byte exists for them (SUBACK).
fn encode_v3(packet: &Packet, buf: &mut BytesMut) {
    match packet {
        Packet::Connect(c) => connect(c, buf),
        Packet::Connack(c) => {
            buf.put_slice(&[0x20, 2, c.session_present as u8, c.code as u8]);
        }
        Packet::Publish(p) => publish(p, buf),
        Packet::Puback(a) => ack(0x40, a.pkid, buf),
        Packet::Pubrec(a) => ack(0x50, a.pkid, buf),
        Packet::Pubrel(a) => ack(0x62, a.pkid, buf),
        Packet::Pubcomp(a) => ack(0x70, a.pkid, buf),
        Packet::Subscribe(s) => {
            let len = 2 + s.filters.iter().map(|(f, _)| 2 + f.len() + 1).sum::<usize>();
            header(0x82, len, buf);
            buf.put_u16(s.pkid);
            for (filter, options) in &s.filters {
                string(filter.as_bytes(), buf);
                buf.put_u8(options.qos as u8);
            }
        }
        Packet::Suback(s) => {
            header(0x90, 2 + s.codes.len(), buf);
            buf.put_u16(s.pkid);
            for code in &s.codes {
                buf.put_u8(match code {
                    Ok(qos) => *qos as u8,
                    Err(_) => 0x80,
                });
            }
        }
        Packet::Unsubscribe(u) => {
            let len = 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            header(0xa2, len, buf);
            buf.put_u16(u.pkid);
            for filter in &u.filters {
                string(filter.as_bytes(), buf);
            }
        }
        Packet::Unsuback(u) => ack(0xb0, u.pkid, buf),
        Packet::Pingreq => buf.put_slice(&[0xc0, 0]),
        Packet::Pingresp => buf.put_slice(&[0xd0, 0]),
        Packet::Disconnect(_) => buf.put_slice(&[0xe0, 0]),
    }
}

/// The length a packet will take on the wire, fixed header included.
pub fn publish_len(p: &Publish) -> usize {
    let remaining = publish_remaining(p);
    1 + varint_len(remaining) + remaining
}

fn publish_remaining(p: &Publish) -> usize {
    2 + p.topic.len() + if p.qos == QoS::AtMostOnce { 0 } else { 2 } + p.payload.len()
}

fn publish(p: &Publish, buf: &mut BytesMut) {
    let first = 0x30 | (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8;
    let remaining = publish_remaining(p);
    buf.reserve(1 + varint_len(remaining) + remaining);
    header(first, remaining, buf);
    string(&p.topic, buf);
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.pkid);
    }
    buf.put_slice(&p.payload);
}

fn connect(c: &Connect, buf: &mut BytesMut) {
    let name = c.protocol.name();
    let mut len = 2 + name.len() + 1 + 1 + 2 + 2 + c.client_id.len();
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos as u8) << 3 | (will.retain as u8) << 5;
        len += 2 + will.topic.len() + 2 + will.payload.len();
    }
    if let Some(username) = &c.username {
        flags |= 0x80;
        len += 2 + username.len();
    }
    if let Some(password) = &c.password {
        flags |= 0x40;
        len += 2 + password.len();
    }
    header(0x10, len, buf);
    string(name.as_bytes(), buf);
    buf.put_u8(c.protocol.level());
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    string(c.client_id.as_bytes(), buf);
    if let Some(will) = &c.will {
        string(will.topic.as_bytes(), buf);
        string(&will.payload, buf);
    }
    if let Some(username) = &c.username {
        string(username.as_bytes(), buf);
    }
    if let Some(password) = &c.password {
        string(password, buf);
    }
}

fn ack(first: u8, id: u16, buf: &mut BytesMut) {
    buf.put_slice(&[first, 2]);
    buf.put_u16(id);
}

fn header(first: u8, remaining: usize, buf: &mut BytesMut) {
    buf.put_u8(first);
    let mut x = remaining;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if x == 0 {
            break;
        }
    }
}

fn varint_len(x: usize) -> usize {
    match x {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn string(bytes: &[u8], buf: &mut BytesMut) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}
