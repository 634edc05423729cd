//! MQTT 5 properties (§2.2.2): the identifiers, which packet may carry which, and how each is read and
//! written. Reading is strict, as the standard asks: an identifier the packet may not carry is a
//! malformed packet, a second copy of one that may appear once is a protocol error, and so is a value
//! out of its range (a payload format of 2, a receive maximum of 0).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::decode::{binary, string, varint, DecodeError};
use super::encode::{put_string, put_varint, varint_len};

pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0b;
pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const AUTHENTICATION_METHOD: u8 = 0x15;
pub const AUTHENTICATION_DATA: u8 = 0x16;
pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub const WILL_DELAY_INTERVAL: u8 = 0x18;
pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub const RESPONSE_INFORMATION: u8 = 0x1a;
pub const SERVER_REFERENCE: u8 = 0x1c;
pub const REASON_STRING: u8 = 0x1f;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAXIMUM_QOS: u8 = 0x24;
pub const RETAIN_AVAILABLE: u8 = 0x25;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2a;

/// A set of property identifiers (all are below 64).
#[derive(Debug, Clone, Copy)]
pub struct Allowed(u64);

const fn set(ids: &[u8]) -> Allowed {
    let mut bits = 0u64;
    let mut i = 0;
    while i < ids.len() {
        bits |= 1 << ids[i];
        i += 1;
    }
    Allowed(bits)
}

impl Allowed {
    fn contains(self, id: u8) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }
}

/// Which packet may carry which property (§2.2.2.2's table).
pub const CONNECT: Allowed = set(&[
    SESSION_EXPIRY_INTERVAL,
    RECEIVE_MAXIMUM,
    MAXIMUM_PACKET_SIZE,
    TOPIC_ALIAS_MAXIMUM,
    REQUEST_RESPONSE_INFORMATION,
    REQUEST_PROBLEM_INFORMATION,
    USER_PROPERTY,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
]);
pub const WILL: Allowed = set(&[
    WILL_DELAY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    USER_PROPERTY,
]);
pub const CONNACK: Allowed = set(&[
    SESSION_EXPIRY_INTERVAL,
    RECEIVE_MAXIMUM,
    MAXIMUM_QOS,
    RETAIN_AVAILABLE,
    MAXIMUM_PACKET_SIZE,
    ASSIGNED_CLIENT_IDENTIFIER,
    TOPIC_ALIAS_MAXIMUM,
    REASON_STRING,
    USER_PROPERTY,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
    SERVER_KEEP_ALIVE,
    RESPONSE_INFORMATION,
    SERVER_REFERENCE,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
]);
pub const PUBLISH: Allowed = set(&[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    TOPIC_ALIAS,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    USER_PROPERTY,
    SUBSCRIPTION_IDENTIFIER,
    CONTENT_TYPE,
]);
/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
pub const ACK: Allowed = set(&[REASON_STRING, USER_PROPERTY]);
pub const SUBSCRIBE: Allowed = set(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
pub const UNSUBSCRIBE: Allowed = set(&[USER_PROPERTY]);
pub const DISCONNECT: Allowed = set(&[SESSION_EXPIRY_INTERVAL, REASON_STRING, USER_PROPERTY, SERVER_REFERENCE]);
pub const AUTH: Allowed = set(&[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY]);

/// One property as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    Byte(u8, u8),
    Two(u8, u16),
    Four(u8, u32),
    /// A Variable Byte Integer: only the subscription identifier.
    Varint(u8, u32),
    Text(u8, String),
    Binary(u8, Bytes),
    /// A user property: name and value, in the order they came.
    Pair(String, String),
}

impl Property {
    fn id(&self) -> u8 {
        match self {
            Property::Byte(id, _)
            | Property::Two(id, _)
            | Property::Four(id, _)
            | Property::Varint(id, _)
            | Property::Text(id, _)
            | Property::Binary(id, _) => *id,
            Property::Pair(..) => USER_PROPERTY,
        }
    }
}

/// Reads a property block (its length, then the properties) off the front of `body` and hands each
/// property to `each`, after checking it against `allowed`, for duplicates and for its range.
pub fn read(
    body: &mut Bytes,
    allowed: Allowed,
    mut each: impl FnMut(Property) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = varint(body)? as usize;
    if body.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    let mut block = body.split_to(len);
    let mut seen = 0u64;
    while block.has_remaining() {
        let id = varint(&mut block)?;
        let id = u8::try_from(id).map_err(|_| DecodeError::PropertyNotAllowed(u8::MAX))?;
        if !allowed.contains(id) {
            return Err(DecodeError::PropertyNotAllowed(id));
        }
        // Only user properties repeat, and subscription identifiers in a PUBLISH (one per matching
        // subscription).
        let repeats = id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && allowed.contains(TOPIC_ALIAS));
        if seen & (1 << id) != 0 && !repeats {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= 1 << id;
        let property = read_value(id, &mut block)?;
        check_range(&property)?;
        each(property)?;
    }
    Ok(())
}

fn read_value(id: u8, block: &mut Bytes) -> Result<Property, DecodeError> {
    let need = |block: &Bytes, n: usize| if block.remaining() < n { Err(DecodeError::Truncated) } else { Ok(()) };
    Ok(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => {
            need(block, 1)?;
            Property::Byte(id, block.get_u8())
        }
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            need(block, 2)?;
            Property::Two(id, block.get_u16())
        }
        MESSAGE_EXPIRY_INTERVAL | SESSION_EXPIRY_INTERVAL | WILL_DELAY_INTERVAL | MAXIMUM_PACKET_SIZE => {
            need(block, 4)?;
            Property::Four(id, block.get_u32())
        }
        SUBSCRIPTION_IDENTIFIER => Property::Varint(id, varint(block)?),
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Property::Text(id, string(block)?),
        CORRELATION_DATA | AUTHENTICATION_DATA => Property::Binary(id, binary(block)?),
        USER_PROPERTY => Property::Pair(string(block)?, string(block)?),
        other => return Err(DecodeError::PropertyNotAllowed(other)),
    })
}

/// Values the standard rules out: a protocol error (§3.1.2.11, §3.2.2.3, §3.3.2.3).
fn check_range(property: &Property) -> Result<(), DecodeError> {
    let bad = match property {
        // Every one-byte property is a flag or a QoS that can only be 0 or 1.
        Property::Byte(_, v) => *v > 1,
        Property::Two(RECEIVE_MAXIMUM, 0) => true,
        Property::Four(MAXIMUM_PACKET_SIZE, 0) => true,
        Property::Varint(SUBSCRIPTION_IDENTIFIER, 0) => true,
        _ => false,
    };
    if bad {
        return Err(DecodeError::PropertyValue(property.id()));
    }
    Ok(())
}

/// Writes a property block: its length, then what `write` puts in it. The block is built aside first,
/// since its length goes before it; a packet without properties costs one zero byte and no allocation.
pub fn write_block(buf: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) {
    let mut block = BytesMut::new();
    write(&mut block);
    put_varint(block.len(), buf);
    buf.put_slice(&block);
}

/// The bytes a property block of `len` bytes takes, its length included.
pub fn block_len(len: usize) -> usize {
    varint_len(len) + len
}

pub fn put_byte(id: u8, value: Option<u8>, buf: &mut BytesMut) {
    if let Some(v) = value {
        buf.put_slice(&[id, v]);
    }
}

pub fn put_bool(id: u8, value: Option<bool>, buf: &mut BytesMut) {
    put_byte(id, value.map(u8::from), buf);
}

pub fn put_two(id: u8, value: Option<u16>, buf: &mut BytesMut) {
    if let Some(v) = value {
        buf.put_u8(id);
        buf.put_u16(v);
    }
}

pub fn put_four(id: u8, value: Option<u32>, buf: &mut BytesMut) {
    if let Some(v) = value {
        buf.put_u8(id);
        buf.put_u32(v);
    }
}

pub fn put_varint_property(id: u8, value: u32, buf: &mut BytesMut) {
    buf.put_u8(id);
    put_varint(value as usize, buf);
}

pub fn put_text(id: u8, value: Option<&str>, buf: &mut BytesMut) {
    if let Some(v) = value {
        buf.put_u8(id);
        put_string(v.as_bytes(), buf);
    }
}

pub fn put_binary(id: u8, value: Option<&[u8]>, buf: &mut BytesMut) {
    if let Some(v) = value {
        buf.put_u8(id);
        put_string(v, buf);
    }
}

pub fn put_pairs(pairs: &[(String, String)], buf: &mut BytesMut) {
    for (name, value) in pairs {
        buf.put_u8(USER_PROPERTY);
        put_string(name.as_bytes(), buf);
        put_string(value.as_bytes(), buf);
    }
}
