//! Packets → bytes (3.1, 3.1.1 and 5.0), appended to a connection's write buffer so many packets go out in one write.

use bytes::{BufMut, BytesMut};

use super::packet::*;
use super::properties::{self, *};

/// Appends `packet` as the protocol `level` writes it.
pub fn encode(packet: &Packet, level: Protocol, buf: &mut BytesMut) {
    let v5 = level == Protocol::V5;
    match packet {
        Packet::Connect(c) => connect(c, buf),
        Packet::Connack(c) if v5 => with_length(0x20, buf, |buf| {
            buf.put_slice(&[c.session_present as u8, c.reason as u8]);
            properties::write_block(buf, |b| connack_properties(&c.properties, b));
        }),
        Packet::Connack(c) => buf.put_slice(&[0x20, 2, c.session_present as u8, c.code() as u8]),
        Packet::Publish(p) => publish(p, v5, buf),
        Packet::Puback(a) => ack(0x40, a, v5, buf),
        Packet::Pubrec(a) => ack(0x50, a, v5, buf),
        Packet::Pubrel(a) => ack(0x62, a, v5, buf),
        Packet::Pubcomp(a) => ack(0x70, a, v5, buf),
        Packet::Subscribe(s) => with_length(0x82, buf, |buf| {
            buf.put_u16(s.pkid);
            if v5 {
                // One identifier per SUBSCRIBE: the first filter's stands for all.
                let id = s.filters.first().and_then(|(_, o)| o.id);
                properties::write_block(buf, |b| {
                    if let Some(id) = id {
                        properties::put_varint_property(SUBSCRIPTION_IDENTIFIER, id.get(), b);
                    }
                });
            }
            for (filter, options) in &s.filters {
                put_string(filter.as_bytes(), buf);
                let mut byte = options.qos as u8;
                if v5 {
                    byte |= (options.no_local as u8) << 2
                        | (options.retain_as_published as u8) << 3
                        | (options.retain_handling & 0x03) << 4;
                }
                buf.put_u8(byte);
            }
        }),
        Packet::Suback(s) => with_length(0x90, buf, |buf| {
            buf.put_u16(s.pkid);
            if v5 {
                buf.put_u8(0);
            }
            for code in &s.codes {
                buf.put_u8(match code {
                    Ok(qos) => *qos as u8,
                    Err(reason) if v5 => *reason as u8,
                    Err(_) => 0x80,
                });
            }
        }),
        Packet::Unsubscribe(u) => with_length(0xa2, buf, |buf| {
            buf.put_u16(u.pkid);
            if v5 {
                buf.put_u8(0);
            }
            for filter in &u.filters {
                put_string(filter.as_bytes(), buf);
            }
        }),
        Packet::Unsuback(u) => with_length(0xb0, buf, |buf| {
            buf.put_u16(u.pkid);
            if v5 {
                buf.put_u8(0);
                buf.extend(u.reasons.iter().map(|r| *r as u8));
            }
        }),
        Packet::Pingreq => buf.put_slice(&[0xc0, 0]),
        Packet::Pingresp => buf.put_slice(&[0xd0, 0]),
        Packet::Disconnect(d) if v5 && *d != Disconnect::new(ReasonCode::Success) => with_length(0xe0, buf, |buf| {
            buf.put_u8(d.reason as u8);
            properties::write_block(buf, |b| {
                properties::put_four(SESSION_EXPIRY_INTERVAL, d.session_expiry_interval, b);
                properties::put_text(REASON_STRING, d.reason_string.as_deref(), b);
                properties::put_text(SERVER_REFERENCE, d.server_reference.as_deref(), b);
            });
        }),
        Packet::Disconnect(_) => buf.put_slice(&[0xe0, 0]),
        // AUTH exists in 5.0 only; nothing else ever asks for it.
        Packet::Auth(a) => with_length(0xf0, buf, |buf| {
            buf.put_u8(a.reason as u8);
            properties::write_block(buf, |b| {
                properties::put_text(AUTHENTICATION_METHOD, a.authentication_method.as_deref(), b);
                properties::put_binary(AUTHENTICATION_DATA, a.authentication_data.as_deref(), b);
                properties::put_text(REASON_STRING, a.reason_string.as_deref(), b);
            });
        }),
    }
}

/// Writes a packet whose length is only known once its body is written: the body goes aside first.
fn with_length(first: u8, buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let mut rest = BytesMut::new();
    body(&mut rest);
    header(first, rest.len(), buf);
    buf.put_slice(&rest);
}

fn connack_properties(p: &ConnackProperties, b: &mut BytesMut) {
    use properties::*;
    put_four(SESSION_EXPIRY_INTERVAL, p.session_expiry_interval, b);
    put_two(RECEIVE_MAXIMUM, p.receive_maximum, b);
    put_byte(MAXIMUM_QOS, p.maximum_qos, b);
    put_bool(RETAIN_AVAILABLE, p.retain_available, b);
    put_four(MAXIMUM_PACKET_SIZE, p.maximum_packet_size, b);
    put_text(ASSIGNED_CLIENT_IDENTIFIER, p.assigned_client_identifier.as_deref(), b);
    put_two(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum, b);
    put_text(REASON_STRING, p.reason_string.as_deref(), b);
    put_pairs(&p.user_properties, b);
    put_bool(WILDCARD_SUBSCRIPTION_AVAILABLE, p.wildcard_subscription_available, b);
    put_bool(SUBSCRIPTION_IDENTIFIER_AVAILABLE, p.subscription_identifiers_available, b);
    put_bool(SHARED_SUBSCRIPTION_AVAILABLE, p.shared_subscription_available, b);
    put_two(SERVER_KEEP_ALIVE, p.server_keep_alive, b);
    put_text(RESPONSE_INFORMATION, p.response_information.as_deref(), b);
    put_text(SERVER_REFERENCE, p.server_reference.as_deref(), b);
    put_text(AUTHENTICATION_METHOD, p.authentication_method.as_deref(), b);
    put_binary(AUTHENTICATION_DATA, p.authentication_data.as_deref(), b);
}

/// The properties of a PUBLISH (or, with the will delay in front, of a will).
fn publish_properties(p: &PublishProperties, b: &mut BytesMut) {
    use properties::*;
    put_byte(PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator, b);
    put_four(MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval, b);
    put_two(TOPIC_ALIAS, p.topic_alias, b);
    put_text(RESPONSE_TOPIC, p.response_topic.as_deref(), b);
    put_binary(CORRELATION_DATA, p.correlation_data.as_deref(), b);
    put_pairs(&p.user_properties, b);
    for id in &p.subscription_identifiers {
        put_varint_property(SUBSCRIPTION_IDENTIFIER, *id, b);
    }
    put_text(CONTENT_TYPE, p.content_type.as_deref(), b);
}

/// The length a PUBLISH will take on the wire at `level`, fixed header included.
pub fn publish_len(p: &Publish, level: Protocol) -> usize {
    let block = publish_block(p, level == Protocol::V5);
    let remaining = publish_remaining(p, block.as_deref(), level == Protocol::V5);
    1 + varint_len(remaining) + remaining
}

/// A PUBLISH's properties as written, if it has any and the level has properties at all. Most
/// publishes have none: they take the path with nothing built.
fn publish_block(p: &Publish, v5: bool) -> Option<BytesMut> {
    match (&p.properties, v5) {
        (Some(props), true) => {
            let mut block = BytesMut::new();
            publish_properties(props, &mut block);
            Some(block)
        }
        _ => None,
    }
}

/// Its remaining length; in 5.0 a missing property block is one zero byte.
fn publish_remaining(p: &Publish, block: Option<&[u8]>, v5: bool) -> usize {
    let properties = match (block, v5) {
        (_, false) => 0,
        (None, true) => 1,
        (Some(block), true) => properties::block_len(block.len()),
    };
    2 + p.topic.len() + if p.qos == QoS::AtMostOnce { 0 } else { 2 } + properties + p.payload.len()
}

fn publish(p: &Publish, v5: bool, buf: &mut BytesMut) {
    let first = 0x30 | (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8;
    // Properties are written aside first, so their length is known before the header.
    let block = publish_block(p, v5);
    let remaining = publish_remaining(p, block.as_deref(), v5);
    buf.reserve(1 + varint_len(remaining) + remaining);
    header(first, remaining, buf);
    put_string(&p.topic, buf);
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.pkid);
    }
    match (block, v5) {
        (_, false) => {}
        (None, true) => buf.put_u8(0),
        (Some(block), true) => {
            put_varint(block.len(), buf);
            buf.put_slice(&block);
        }
    }
    buf.put_slice(&p.payload);
}

fn connect(c: &Connect, buf: &mut BytesMut) {
    let v5 = c.protocol == Protocol::V5;
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos as u8) << 3 | (will.retain as u8) << 5;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    with_length(0x10, buf, |buf| {
        put_string(c.protocol.name().as_bytes(), buf);
        buf.put_u8(c.protocol.level());
        buf.put_u8(flags);
        buf.put_u16(c.keep_alive);
        if v5 {
            let p = &c.properties;
            properties::write_block(buf, |b| {
                use properties::*;
                put_four(SESSION_EXPIRY_INTERVAL, p.session_expiry_interval, b);
                put_two(RECEIVE_MAXIMUM, p.receive_maximum, b);
                put_four(MAXIMUM_PACKET_SIZE, p.maximum_packet_size, b);
                put_two(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum, b);
                put_bool(REQUEST_RESPONSE_INFORMATION, p.request_response_information, b);
                put_bool(REQUEST_PROBLEM_INFORMATION, p.request_problem_information, b);
                put_pairs(&p.user_properties, b);
                put_text(AUTHENTICATION_METHOD, p.authentication_method.as_deref(), b);
                put_binary(AUTHENTICATION_DATA, p.authentication_data.as_deref(), b);
            });
        }
        put_string(c.client_id.as_bytes(), buf);
        if let Some(will) = &c.will {
            if v5 {
                properties::write_block(buf, |b| {
                    if will.delay_interval > 0 {
                        properties::put_four(WILL_DELAY_INTERVAL, Some(will.delay_interval), b);
                    }
                    if let Some(p) = &will.properties {
                        publish_properties(p, b);
                    }
                });
            }
            put_string(will.topic.as_bytes(), buf);
            put_string(&will.payload, buf);
        }
        if let Some(username) = &c.username {
            put_string(username.as_bytes(), buf);
        }
        if let Some(password) = &c.password {
            put_string(password, buf);
        }
    });
}

/// An acknowledgement: in 5.0 a success says nothing more than 3.1.1's (§3.4.2.1).
fn ack(first: u8, a: &Ack, v5: bool, buf: &mut BytesMut) {
    if v5 && a.reason != ReasonCode::Success {
        buf.put_slice(&[first, 3]);
        buf.put_u16(a.pkid);
        buf.put_u8(a.reason as u8);
        return;
    }
    buf.put_slice(&[first, 2]);
    buf.put_u16(a.pkid);
}

fn header(first: u8, remaining: usize, buf: &mut BytesMut) {
    buf.put_u8(first);
    put_varint(remaining, buf);
}

/// A Variable Byte Integer (§1.5.5).
pub(super) fn put_varint(mut x: usize, buf: &mut BytesMut) {
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

pub(super) fn varint_len(x: usize) -> usize {
    match x {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(super) fn put_string(bytes: &[u8], buf: &mut BytesMut) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}
