//! Bytes → packets. Strict: reserved bits, flag nibbles, UTF-8 and lengths are all checked, so a bad peer
//! is found at the first bad byte and only its own connection pays for it.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::packet::*;
use super::properties::{self, Property, *};

/// Largest value the remaining-length field can carry (3.1.1 §2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    #[error("invalid fixed-header flags for packet type {0}")]
    InvalidFlags(u8),
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("reserved CONNECT flag set")]
    ReservedConnectFlag,
    #[error("password flag set without username flag")]
    PasswordWithoutUsername,
    #[error("will QoS/retain set without will flag, or will QoS 3")]
    InvalidWillFlags,
    #[error("invalid QoS")]
    InvalidQoS,
    #[error("string is not valid MQTT UTF-8")]
    InvalidUtf8,
    #[error("packet ends before its fields do")]
    Truncated,
    #[error("bytes left over after the packet's fields")]
    TrailingBytes,
    #[error("a connection's first byte is {0:#04x}, which does not begin a CONNECT")]
    NotConnect(u8),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("property {0:#04x} is not allowed in this packet")]
    PropertyNotAllowed(u8),
    #[error("property {0:#04x} appears twice")]
    DuplicateProperty(u8),
    #[error("property {0:#04x} has a value out of its range")]
    PropertyValue(u8),
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
}

impl DecodeError {
    /// The reason code an MQTT 5 DISCONNECT gives for it (§4.13).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::DuplicateProperty(_) | DecodeError::PropertyValue(_) | DecodeError::ProtocolError(_) => {
                ReasonCode::ProtocolError
            }
            DecodeError::InvalidPacketType(_) | DecodeError::NotConnect(_) => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

/// Takes one whole packet off the front of `buf`, as the protocol `level` writes it, or returns
/// `Ok(None)` when more bytes are needed. The size limit is checked from the fixed header, before the
/// body has arrived. (A connection's first packet, CONNECT, names the level itself.)
/// The one PUBLISH that `bytes` holds, nothing before or after it: a message as our own codec wrote it
/// for keeping (the store) or carrying (the cluster), read back at MQTT 5.
pub fn decode_stored_publish(bytes: &[u8]) -> Result<Publish, String> {
    let mut frame = BytesMut::from(bytes);
    let publish = match decode(&mut frame, Protocol::V5, usize::MAX) {
        Ok(Some(Packet::Publish(publish))) => publish,
        Ok(Some(other)) => return Err(format!("a {other:?} instead of a PUBLISH")),
        Ok(None) => return Err("a truncated PUBLISH".into()),
        Err(e) => return Err(e.to_string()),
    };
    if !frame.is_empty() {
        return Err(format!("{} bytes past its end", frame.len()));
    }
    Ok(publish)
}

pub fn decode(buf: &mut BytesMut, level: Protocol, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some((header_len, remaining)) = read_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header_len + remaining;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size: total, max: max_packet_size });
    }
    if buf.len() < total {
        // Reserve now so the next read lands in one allocation.
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header_len);
    decode_body(first, level, frame).map(Some)
}

/// `(fixed header length, remaining length)` once the whole variable-length integer is in `buf`.
fn read_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

fn decode_body(first: u8, level: Protocol, mut body: Bytes) -> Result<Packet, DecodeError> {
    let v5 = level == Protocol::V5;
    let kind = first >> 4;
    let flags = first & 0x0f;
    // Every packet type but PUBLISH has fixed flags (3.1.1 §2.2.2); AUTH exists in 5.0 only.
    let expected_flags = match kind {
        3 => None,
        6 | 8 | 10 => Some(0b0010),
        1 | 2 | 4 | 5 | 7 | 9 | 11 | 12 | 13 | 14 => Some(0),
        15 if v5 => Some(0),
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    if let Some(expected) = expected_flags {
        if flags != expected {
            return Err(DecodeError::InvalidFlags(kind));
        }
    }
    let packet = match kind {
        1 => Packet::Connect(connect(&mut body)?),
        2 => Packet::Connack(connack(&mut body, v5)?),
        3 => Packet::Publish(publish(flags, &mut body, v5)?),
        4 => Packet::Puback(ack(&mut body, v5)?),
        5 => Packet::Pubrec(ack(&mut body, v5)?),
        6 => Packet::Pubrel(ack(&mut body, v5)?),
        7 => Packet::Pubcomp(ack(&mut body, v5)?),
        8 => Packet::Subscribe(subscribe(&mut body, v5)?),
        9 => Packet::Suback(suback(&mut body, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut body, v5)?),
        11 => Packet::Unsuback(unsuback(&mut body, v5)?),
        12 => Packet::Pingreq,
        13 => Packet::Pingresp,
        14 => Packet::Disconnect(disconnect(&mut body, v5)?),
        15 => Packet::Auth(auth(&mut body)?),
        _ => unreachable!("packet type checked above"),
    };
    if body.has_remaining() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(packet)
}

fn connect(body: &mut Bytes) -> Result<Connect, DecodeError> {
    // The protocol name and level come first and decide how the rest is read.
    let name = string(body)?;
    let level = u8(body)?;
    let protocol = match (name.as_str(), level) {
        ("MQIsdp", 3) => Protocol::V31,
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        _ => return Err(DecodeError::UnsupportedProtocol { name, level }),
    };
    let v5 = protocol == Protocol::V5;
    let flags = u8(body)?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::InvalidWillFlags);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillFlags)?;
    // 5.0 allows a password alone (§3.1.2.9).
    if has_password && !has_username && !v5 {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = u16(body)?;
    let mut properties = ConnectProperties::default();
    if v5 {
        properties::read(body, properties::CONNECT, |p| {
            match p {
                Property::Four(SESSION_EXPIRY_INTERVAL, v) => properties.session_expiry_interval = Some(v),
                Property::Two(RECEIVE_MAXIMUM, v) => properties.receive_maximum = Some(v),
                Property::Four(MAXIMUM_PACKET_SIZE, v) => properties.maximum_packet_size = Some(v),
                Property::Two(TOPIC_ALIAS_MAXIMUM, v) => properties.topic_alias_maximum = Some(v),
                Property::Byte(REQUEST_RESPONSE_INFORMATION, v) => {
                    properties.request_response_information = Some(v == 1)
                }
                Property::Byte(REQUEST_PROBLEM_INFORMATION, v) => properties.request_problem_information = Some(v == 1),
                Property::Pair(name, value) => properties.user_properties.push((name, value)),
                Property::Text(AUTHENTICATION_METHOD, v) => properties.authentication_method = Some(v),
                Property::Binary(AUTHENTICATION_DATA, v) => properties.authentication_data = Some(v),
                _ => {}
            }
            Ok(())
        })?;
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(DecodeError::ProtocolError("authentication data without a method"));
        }
    }
    let client_id = string(body)?;
    let will = if will_flag {
        let mut will_properties = PublishProperties::default();
        let mut delay_interval = 0;
        if v5 {
            properties::read(body, properties::WILL, |p| {
                match p {
                    Property::Four(WILL_DELAY_INTERVAL, v) => delay_interval = v,
                    other => publish_property(&mut will_properties, other),
                }
                Ok(())
            })?;
        }
        let topic = string(body)?;
        let payload = binary(body)?;
        let properties = (will_properties != PublishProperties::default()).then(|| Arc::new(will_properties));
        Some(LastWill { topic, payload, qos: will_qos, retain: will_retain, delay_interval, properties })
    } else {
        None
    };
    let username = if has_username { Some(string(body)?) } else { None };
    let password = if has_password { Some(binary(body)?) } else { None };
    Ok(Connect {
        protocol,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties: Box::new(properties),
    })
}

fn connack(body: &mut Bytes, v5: bool) -> Result<Connack, DecodeError> {
    let ack_flags = u8(body)?;
    if ack_flags & 0xfe != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flags"));
    }
    let code = u8(body)?;
    let session_present = ack_flags & 1 == 1;
    if !v5 {
        let code = ConnectReturnCode::from_u8(code).ok_or(DecodeError::Malformed("unknown CONNACK return code"))?;
        return Ok(Connack { session_present, reason: code.into(), properties: Box::default() });
    }
    let reason = reason_code(code)?;
    let mut p = ConnackProperties::default();
    properties::read(body, properties::CONNACK, |property| {
        match property {
            Property::Four(SESSION_EXPIRY_INTERVAL, v) => p.session_expiry_interval = Some(v),
            Property::Two(RECEIVE_MAXIMUM, v) => p.receive_maximum = Some(v),
            Property::Byte(MAXIMUM_QOS, v) => p.maximum_qos = Some(v),
            Property::Byte(RETAIN_AVAILABLE, v) => p.retain_available = Some(v == 1),
            Property::Four(MAXIMUM_PACKET_SIZE, v) => p.maximum_packet_size = Some(v),
            Property::Text(ASSIGNED_CLIENT_IDENTIFIER, v) => p.assigned_client_identifier = Some(v),
            Property::Two(TOPIC_ALIAS_MAXIMUM, v) => p.topic_alias_maximum = Some(v),
            Property::Text(REASON_STRING, v) => p.reason_string = Some(v),
            Property::Pair(name, value) => p.user_properties.push((name, value)),
            Property::Byte(WILDCARD_SUBSCRIPTION_AVAILABLE, v) => p.wildcard_subscription_available = Some(v == 1),
            Property::Byte(SUBSCRIPTION_IDENTIFIER_AVAILABLE, v) => p.subscription_identifiers_available = Some(v == 1),
            Property::Byte(SHARED_SUBSCRIPTION_AVAILABLE, v) => p.shared_subscription_available = Some(v == 1),
            Property::Two(SERVER_KEEP_ALIVE, v) => p.server_keep_alive = Some(v),
            Property::Text(RESPONSE_INFORMATION, v) => p.response_information = Some(v),
            Property::Text(SERVER_REFERENCE, v) => p.server_reference = Some(v),
            Property::Text(AUTHENTICATION_METHOD, v) => p.authentication_method = Some(v),
            Property::Binary(AUTHENTICATION_DATA, v) => p.authentication_data = Some(v),
            _ => {}
        }
        Ok(())
    })?;
    Ok(Connack { session_present, reason, properties: Box::new(p) })
}

/// A property of a PUBLISH or a will into its place.
fn publish_property(p: &mut PublishProperties, property: Property) {
    match property {
        Property::Byte(PAYLOAD_FORMAT_INDICATOR, v) => p.payload_format_indicator = Some(v),
        Property::Four(MESSAGE_EXPIRY_INTERVAL, v) => p.message_expiry_interval = Some(v),
        Property::Two(TOPIC_ALIAS, v) => p.topic_alias = Some(v),
        Property::Text(RESPONSE_TOPIC, v) => p.response_topic = Some(v),
        Property::Binary(CORRELATION_DATA, v) => p.correlation_data = Some(v),
        Property::Pair(name, value) => p.user_properties.push((name, value)),
        Property::Varint(SUBSCRIPTION_IDENTIFIER, v) => p.subscription_identifiers.push(v),
        Property::Text(CONTENT_TYPE, v) => p.content_type = Some(v),
        _ => {}
    }
}

fn publish(flags: u8, body: &mut Bytes, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain = flags & 0b0001 != 0;
    let topic = utf8_bytes(body)?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { packet_id(body)? };
    let mut properties = None;
    // Most publishes carry no properties: an empty block is one zero byte, taken without more ado.
    if v5 && body.first() == Some(&0) {
        body.advance(1);
    } else if v5 {
        let mut p = PublishProperties::default();
        properties::read(body, properties::PUBLISH, |property| {
            publish_property(&mut p, property);
            Ok(())
        })?;
        if p != PublishProperties::default() {
            properties = Some(Arc::new(p));
        }
    }
    let payload = body.split_to(body.len());
    Ok(Publish { dup, qos, retain, topic, pkid, payload, properties })
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP. In 5.0 the reason code and the properties may be left off when
/// there is nothing to say (§3.4.2.1).
fn ack(body: &mut Bytes, v5: bool) -> Result<Ack, DecodeError> {
    let pkid = packet_id(body)?;
    if !v5 || !body.has_remaining() {
        return Ok(Ack::new(pkid));
    }
    let reason = reason_code(body.get_u8())?;
    if body.has_remaining() {
        // Reason strings and user properties are checked, and not kept: nothing acts on them.
        properties::read(body, properties::ACK, |_| Ok(()))?;
    }
    Ok(Ack { pkid, reason })
}

fn subscribe(body: &mut Bytes, v5: bool) -> Result<Subscribe, DecodeError> {
    let pkid = packet_id(body)?;
    let mut id = None;
    if v5 {
        properties::read(body, properties::SUBSCRIBE, |p| {
            if let Property::Varint(SUBSCRIPTION_IDENTIFIER, v) = p {
                id = NonZeroU32::new(v);
            }
            Ok(())
        })?;
    }
    let mut filters = Vec::new();
    while body.has_remaining() {
        let filter = string(body)?;
        let options = u8(body)?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if options & reserved != 0 {
            return Err(DecodeError::Malformed("reserved bits in subscription options"));
        }
        let qos = QoS::from_u8(options & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let retain_handling = (options >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(DecodeError::ProtocolError("retain handling 3"));
        }
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local: options & 0x04 != 0,
                retain_as_published: options & 0x08 != 0,
                retain_handling,
                id,
            },
        ));
    }
    if filters.is_empty() {
        return Err(DecodeError::Malformed("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe { pkid, filters })
}

fn suback(body: &mut Bytes, v5: bool) -> Result<Suback, DecodeError> {
    let pkid = packet_id(body)?;
    if v5 {
        properties::read(body, properties::ACK, |_| Ok(()))?;
    }
    let mut codes = Vec::new();
    while body.has_remaining() {
        codes.push(match body.get_u8() {
            v if v < 0x80 => Ok(QoS::from_u8(v).ok_or(DecodeError::InvalidQoS)?),
            v if v5 => Err(reason_code(v)?),
            0x80 => Err(ReasonCode::UnspecifiedError),
            _ => return Err(DecodeError::InvalidQoS),
        });
    }
    Ok(Suback { pkid, codes })
}

fn unsubscribe(body: &mut Bytes, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let pkid = packet_id(body)?;
    if v5 {
        properties::read(body, properties::UNSUBSCRIBE, |_| Ok(()))?;
    }
    let mut filters = Vec::new();
    while body.has_remaining() {
        filters.push(string(body)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Malformed("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe { pkid, filters })
}

fn unsuback(body: &mut Bytes, v5: bool) -> Result<Unsuback, DecodeError> {
    let pkid = packet_id(body)?;
    let mut reasons = Vec::new();
    if v5 {
        properties::read(body, properties::ACK, |_| Ok(()))?;
        while body.has_remaining() {
            reasons.push(reason_code(body.get_u8())?);
        }
    }
    Ok(Unsuback { pkid, reasons })
}

fn disconnect(body: &mut Bytes, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    if !v5 || !body.has_remaining() {
        return Ok(disconnect);
    }
    disconnect.reason = reason_code(body.get_u8())?;
    if body.has_remaining() {
        properties::read(body, properties::DISCONNECT, |p| {
            match p {
                Property::Four(SESSION_EXPIRY_INTERVAL, v) => disconnect.session_expiry_interval = Some(v),
                Property::Text(REASON_STRING, v) => disconnect.reason_string = Some(v),
                Property::Text(SERVER_REFERENCE, v) => disconnect.server_reference = Some(v),
                _ => {}
            }
            Ok(())
        })?;
    }
    Ok(disconnect)
}

fn auth(body: &mut Bytes) -> Result<Auth, DecodeError> {
    let mut auth = Auth {
        reason: ReasonCode::Success,
        authentication_method: None,
        authentication_data: None,
        reason_string: None,
    };
    if !body.has_remaining() {
        return Ok(auth);
    }
    auth.reason = reason_code(body.get_u8())?;
    if body.has_remaining() {
        properties::read(body, properties::AUTH, |p| {
            match p {
                Property::Text(AUTHENTICATION_METHOD, v) => auth.authentication_method = Some(v),
                Property::Binary(AUTHENTICATION_DATA, v) => auth.authentication_data = Some(v),
                Property::Text(REASON_STRING, v) => auth.reason_string = Some(v),
                _ => {}
            }
            Ok(())
        })?;
    }
    Ok(auth)
}

fn reason_code(v: u8) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(v).ok_or(DecodeError::Malformed("unknown reason code"))
}

/// A Variable Byte Integer (§1.5.5): at most four bytes.
pub(super) fn varint(body: &mut Bytes) -> Result<u32, DecodeError> {
    let mut value = 0u32;
    for i in 0..4 {
        let byte = u8(body)?;
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::Malformed("variable byte integer longer than four bytes"))
}

fn packet_id(body: &mut Bytes) -> Result<u16, DecodeError> {
    match u16(body)? {
        0 => Err(DecodeError::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

fn u8(body: &mut Bytes) -> Result<u8, DecodeError> {
    if body.remaining() < 1 {
        return Err(DecodeError::Truncated);
    }
    Ok(body.get_u8())
}

fn u16(body: &mut Bytes) -> Result<u16, DecodeError> {
    if body.remaining() < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(body.get_u16())
}

pub(super) fn binary(body: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = u16(body)? as usize;
    if body.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(body.split_to(len))
}

/// An MQTT UTF-8 string, kept as bytes: valid UTF-8 and free of U+0000 (3.1.1 §1.5.3).
fn utf8_bytes(body: &mut Bytes) -> Result<Bytes, DecodeError> {
    let bytes = binary(body)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    if text.contains('\0') {
        return Err(DecodeError::InvalidUtf8);
    }
    Ok(bytes)
}

pub(super) fn string(body: &mut Bytes) -> Result<String, DecodeError> {
    let bytes = utf8_bytes(body)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
}
