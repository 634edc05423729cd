//! Bytes → packets. Strict: reserved bits, flag nibbles, UTF-8 and lengths are all checked, so a bad peer
//! is found at the first bad byte and only its own connection pays for it.

use bytes::{Buf, Bytes, BytesMut};

use super::packet::*;

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
}

/// Takes one whole packet off the front of `buf`, as the protocol `level` writes it, or returns
/// `Ok(None)` when more bytes are needed. The size limit is checked from the fixed header, before the
/// body has arrived. (A connection's first packet, CONNECT, names the level itself.)
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

fn decode_body(first: u8, level: Protocol, body: Bytes) -> Result<Packet, DecodeError> {
    match level {
        Protocol::V31 | Protocol::V311 => decode_v3(first, body),
    }
}

/// 3.1 and 3.1.1: no properties; acknowledgements, UNSUBACK and DISCONNECT mean success.
fn decode_v3(first: u8, mut body: Bytes) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    // Every packet type but PUBLISH has fixed flags (3.1.1 §2.2.2).
    let expected_flags = match kind {
        3 => None,
        6 | 8 | 10 => Some(0b0010),
        1 | 2 | 4 | 5 | 7 | 9 | 11 | 12 | 13 | 14 => Some(0),
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    if let Some(expected) = expected_flags {
        if flags != expected {
            return Err(DecodeError::InvalidFlags(kind));
        }
    }
    let packet = match kind {
        1 => Packet::Connect(connect(&mut body)?),
        2 => Packet::Connack(connack(&mut body)?),
        3 => Packet::Publish(publish(flags, &mut body)?),
        4 => Packet::Puback(Ack::new(packet_id(&mut body)?)),
        5 => Packet::Pubrec(Ack::new(packet_id(&mut body)?)),
        6 => Packet::Pubrel(Ack::new(packet_id(&mut body)?)),
        7 => Packet::Pubcomp(Ack::new(packet_id(&mut body)?)),
        8 => Packet::Subscribe(subscribe(&mut body)?),
        9 => Packet::Suback(suback(&mut body)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut body)?),
        11 => Packet::Unsuback(Unsuback::new(packet_id(&mut body)?)),
        12 => Packet::Pingreq,
        13 => Packet::Pingresp,
        14 => Packet::Disconnect(ReasonCode::Success),
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
        _ => return Err(DecodeError::UnsupportedProtocol { name, level }),
    };
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
    if has_password && !has_username {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = u16(body)?;
    let client_id = string(body)?;
    let will = if will_flag {
        let topic = string(body)?;
        let payload = binary(body)?;
        Some(LastWill { topic, payload, qos: will_qos, retain: will_retain })
    } else {
        None
    };
    let username = if has_username { Some(string(body)?) } else { None };
    let password = if has_password { Some(binary(body)?) } else { None };
    Ok(Connect { protocol, clean_session, keep_alive, client_id, will, username, password })
}

fn connack(body: &mut Bytes) -> Result<Connack, DecodeError> {
    let ack_flags = u8(body)?;
    if ack_flags & 0xfe != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flags"));
    }
    let code = ConnectReturnCode::from_u8(u8(body)?).ok_or(DecodeError::Malformed("unknown CONNACK return code"))?;
    Ok(Connack { session_present: ack_flags & 1 == 1, code })
}

fn publish(flags: u8, body: &mut Bytes) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain = flags & 0b0001 != 0;
    let topic = utf8_bytes(body)?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { packet_id(body)? };
    let payload = body.split_to(body.len());
    Ok(Publish { dup, qos, retain, topic, pkid, payload, properties: None })
}

fn subscribe(body: &mut Bytes) -> Result<Subscribe, DecodeError> {
    let pkid = packet_id(body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        let filter = string(body)?;
        let options = u8(body)?;
        if options & 0xfc != 0 {
            return Err(DecodeError::Malformed("reserved bits in requested QoS"));
        }
        let qos = QoS::from_u8(options).ok_or(DecodeError::InvalidQoS)?;
        filters.push((filter, SubscriptionOptions::qos(qos)));
    }
    if filters.is_empty() {
        return Err(DecodeError::Malformed("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe { pkid, filters })
}

fn suback(body: &mut Bytes) -> Result<Suback, DecodeError> {
    let pkid = packet_id(body)?;
    let mut codes = Vec::new();
    while body.has_remaining() {
        codes.push(match body.get_u8() {
            0x80 => Err(ReasonCode::UnspecifiedError),
            v => Ok(QoS::from_u8(v).ok_or(DecodeError::InvalidQoS)?),
        });
    }
    Ok(Suback { pkid, codes })
}

fn unsubscribe(body: &mut Bytes) -> Result<Unsubscribe, DecodeError> {
    let pkid = packet_id(body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        filters.push(string(body)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Malformed("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe { pkid, filters })
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

fn binary(body: &mut Bytes) -> Result<Bytes, DecodeError> {
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

fn string(body: &mut Bytes) -> Result<String, DecodeError> {
    let bytes = utf8_bytes(body)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
}
