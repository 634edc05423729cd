//! Records as bytes. A retained message is kept as the MQTT 5 PUBLISH that carries it (our own codec
//! writes and reads it, properties and all), behind a version byte and the wall-clock time its expiry
//! interval ends, so that time spent down counts against it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};

use std::num::NonZeroU32;

use crate::protocol::{decode_stored_publish, encode, Packet, Protocol, Publish, QoS, SubscriptionOptions};
use crate::session::{ClientId, Delivery, Message};

const VERSION: u8 = 1;

/// Milliseconds since the Unix epoch, by the wall clock (what outlives a restart).
pub fn now_wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn encode_retained(message: &Message) -> Vec<u8> {
    let mut buf = BytesMut::with_capacity(16 + message.topic.len() + message.payload.len());
    put_message(&mut buf, message, true);
    buf.to_vec()
}

/// A message as its MQTT 5 PUBLISH, behind the version and the wall-clock end of its expiry.
fn put_message(buf: &mut BytesMut, message: &Message, retain: bool) {
    let expires_ms = message
        .expires_at
        .map(|at| now_wall_ms().saturating_add(at.saturating_duration_since(Instant::now()).as_millis() as u64).max(1))
        .unwrap_or(0);
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain,
        topic: message.topic.clone(),
        pkid: if message.qos == crate::protocol::QoS::AtMostOnce { 0 } else { 1 },
        payload: message.payload.clone(),
        properties: message.properties.clone(),
    };
    buf.put_u8(VERSION);
    buf.put_u64(expires_ms);
    encode(&Packet::Publish(publish), Protocol::V5, buf);
}

/// A delivery kept for a session: whose it is, at what QoS and retain flag, and its message.
pub fn encode_queued(client_id: &str, delivery: &Delivery) -> Vec<u8> {
    let message = &delivery.message;
    let mut buf = BytesMut::with_capacity(32 + client_id.len() + message.topic.len() + message.payload.len());
    put_str(&mut buf, client_id);
    buf.put_u8(delivery.qos as u8);
    buf.put_u8(u8::from(delivery.retain));
    put_message(&mut buf, message, message.retain);
    buf.to_vec()
}

/// The client and delivery kept under `id`, or `None` for the delivery if its message expired meanwhile.
pub fn decode_queued(id: u64, bytes: &[u8]) -> Result<(ClientId, Option<Delivery>), String> {
    let mut bytes = bytes;
    let client_id: ClientId = get_str(&mut bytes)?.into();
    need(bytes, 2)?;
    let qos = QoS::from_u8(bytes.get_u8()).ok_or_else(|| "a QoS over 2".to_string())?;
    let retain = bytes.get_u8() != 0;
    let Some((message, _)) = get_message(bytes)? else { return Ok((client_id, None)) };
    let delivery = Delivery { store_id: id, ..Delivery::new(message, qos, retain) };
    Ok((client_id, Some(delivery)))
}

/// A message written by `put_message`, with its retain flag, or `None` if it expired meanwhile.
fn get_message(bytes: &[u8]) -> Result<Option<(Arc<Message>, bool)>, String> {
    let mut bytes = bytes;
    if bytes.len() < 9 {
        return Err(format!("{} bytes, too short", bytes.len()));
    }
    let version = bytes.get_u8();
    if version != VERSION {
        return Err(format!("record version {version}"));
    }
    let expires_ms = bytes.get_u64();
    let publish = decode_stored_publish(bytes)?;
    let expires_at = match expires_ms {
        0 => None,
        at => match at.checked_sub(now_wall_ms()) {
            Some(left) if left > 0 => Some(Instant::now() + Duration::from_millis(left)),
            _ => return Ok(None),
        },
    };
    let Publish { topic, payload, qos, retain, properties, .. } = publish;
    Ok(Some((
        Arc::new(Message { topic, payload, qos, retain, properties, expires_at, origin: 0, kept_flow: 0 }),
        retain,
    )))
}

/// A retained message written by `encode_retained`, whatever its topic, or `None` if it expired.
pub fn decode_retained_message(bytes: &[u8]) -> Result<Option<Arc<Message>>, String> {
    Ok(get_message(bytes)?.map(|(message, _)| message))
}

/// The message kept under `topic`, or `None` if it expired meanwhile.
pub fn decode_retained(topic: &str, bytes: &[u8]) -> Result<Option<Arc<Message>>, String> {
    let Some((message, _)) = get_message(bytes)? else { return Ok(None) };
    if message.topic != topic.as_bytes() {
        return Err("its PUBLISH names another topic".into());
    }
    Ok(Some(message))
}

/// A persistent session as kept: enough to list it, resume it and expire it on time after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: ClientId,
    /// How long it outlives its connection (`None`: until the broker forgets it).
    pub expiry: Option<Duration>,
    /// When its client went away (ms since the epoch); `None` while it was online.
    pub parked_at_ms: Option<u64>,
    pub created_at_ms: i64,
    pub username: Option<String>,
    pub proto_ver: u8,
    pub peer: String,
    pub filters: Vec<(String, SubscriptionOptions)>,
}

impl SessionRecord {
    /// Whether, parked, it has outlived its expiry by now.
    pub fn expired(&self) -> bool {
        let away = Duration::from_millis(self.parked_at_ms.map_or(0, |at| now_wall_ms().saturating_sub(at)));
        self.expiry.is_some_and(|expiry| away >= expiry)
    }
}

const NO_EXPIRY: u64 = u64::MAX;

fn put_str(buf: &mut BytesMut, s: &str) {
    put_bytes(buf, s.as_bytes());
}

fn get_str(bytes: &mut &[u8]) -> Result<String, String> {
    String::from_utf8(get_bytes(bytes)?.to_vec()).map_err(|_| "text that is not UTF-8".into())
}

/// Bytes behind their length (u32), as every variable-length field here is written.
pub fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u32(bytes.len() as u32);
    buf.put_slice(bytes);
}

/// Bytes written by `put_bytes`, taken off the front of `bytes`.
pub fn get_bytes<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], String> {
    if bytes.len() < 4 {
        return Err("truncated".into());
    }
    let len = bytes.get_u32() as usize;
    if bytes.len() < len {
        return Err("truncated".into());
    }
    let (taken, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(taken)
}

fn need(bytes: &[u8], n: usize) -> Result<(), String> {
    if bytes.len() < n {
        Err("truncated".into())
    } else {
        Ok(())
    }
}

pub fn encode_session(record: &SessionRecord) -> Vec<u8> {
    let mut buf = BytesMut::with_capacity(64 + record.filters.len() * 32);
    buf.put_u8(VERSION);
    buf.put_u64(record.expiry.map(|e| e.as_secs()).unwrap_or(NO_EXPIRY));
    buf.put_u64(record.parked_at_ms.unwrap_or(0));
    buf.put_i64(record.created_at_ms);
    buf.put_u8(record.proto_ver);
    match &record.username {
        Some(username) => {
            buf.put_u8(1);
            put_str(&mut buf, username);
        }
        None => buf.put_u8(0),
    }
    put_str(&mut buf, &record.peer);
    buf.put_u32(record.filters.len() as u32);
    for (filter, options) in &record.filters {
        put_str(&mut buf, filter);
        buf.put_u8(options.qos as u8);
        buf.put_u8(
            u8::from(options.no_local) | u8::from(options.retain_as_published) << 1 | options.retain_handling << 2,
        );
        buf.put_u32(options.id.map(|id| id.get()).unwrap_or(0));
    }
    buf.to_vec()
}

pub fn decode_session(client_id: &str, bytes: &[u8]) -> Result<SessionRecord, String> {
    let mut bytes = bytes;
    need(bytes, 1 + 8 + 8 + 8 + 1 + 1)?;
    let version = bytes.get_u8();
    if version != VERSION {
        return Err(format!("record version {version}"));
    }
    let expiry = match bytes.get_u64() {
        NO_EXPIRY => None,
        secs => Some(Duration::from_secs(secs)),
    };
    let parked_at_ms = Some(bytes.get_u64()).filter(|ms| *ms > 0);
    let created_at_ms = bytes.get_i64();
    let proto_ver = bytes.get_u8();
    let username = match bytes.get_u8() {
        0 => None,
        _ => Some(get_str(&mut bytes)?),
    };
    let peer = get_str(&mut bytes)?;
    need(bytes, 4)?;
    let count = bytes.get_u32() as usize;
    let mut filters = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let filter = get_str(&mut bytes)?;
        need(bytes, 6)?;
        let qos = QoS::from_u8(bytes.get_u8()).ok_or_else(|| "a QoS over 2".to_string())?;
        let flags = bytes.get_u8();
        let id = NonZeroU32::new(bytes.get_u32());
        let options = SubscriptionOptions {
            qos,
            no_local: flags & 1 != 0,
            retain_as_published: flags & 2 != 0,
            retain_handling: (flags >> 2) & 3,
            id,
        };
        filters.push((filter, options));
    }
    if !bytes.is_empty() {
        return Err(format!("{} bytes past its end", bytes.len()));
    }
    Ok(SessionRecord {
        client_id: client_id.into(),
        expiry,
        parked_at_ms,
        created_at_ms,
        username,
        proto_ver,
        peer,
        filters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PublishProperties;
    use bytes::Bytes;

    #[test]
    fn a_session_round_trips() {
        let record = SessionRecord {
            client_id: "c/1".into(),
            expiry: Some(Duration::from_secs(3600)),
            parked_at_ms: Some(1_700_000_000_000),
            created_at_ms: 1_699_999_000_000,
            username: Some("ü".into()),
            proto_ver: 5,
            peer: "127.0.0.1:5555".into(),
            filters: vec![
                ("a/+".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                (
                    "$share/g/b/#".into(),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: 2,
                        id: NonZeroU32::new(7),
                    },
                ),
            ],
        };
        let bytes = encode_session(&record);
        assert_eq!(decode_session("c/1", &bytes).unwrap(), record);
        let forever = SessionRecord { expiry: None, parked_at_ms: None, username: None, filters: vec![], ..record };
        assert_eq!(decode_session("c/1", &encode_session(&forever)).unwrap(), forever);
        for cut in [1, 10, bytes.len() - 1] {
            assert!(decode_session("c/1", &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_retained_message_round_trips_with_its_properties() {
        let properties = PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let message = Message::with_properties(
            Bytes::from_static(b"a/b"),
            Bytes::from_static(b"payload"),
            QoS::AtLeastOnce,
            true,
            Some(Arc::new(properties.clone())),
            7,
        );
        let back = decode_retained("a/b", &encode_retained(&message)).unwrap().expect("not expired");
        assert_eq!((&back.topic[..], &back.payload[..], back.qos), (&b"a/b"[..], &b"payload"[..], QoS::AtLeastOnce));
        assert_eq!(back.properties.as_deref(), Some(&properties));
        assert!(back.expires_at.is_none());
    }

    #[test]
    fn expiry_counts_while_stored_and_an_expired_message_is_gone() {
        let mut message = Message::new(Bytes::from_static(b"t"), Bytes::from_static(b"x"), QoS::AtMostOnce, true);
        message.expires_at = Some(Instant::now() + Duration::from_secs(100));
        let back = decode_retained("t", &encode_retained(&message)).unwrap().unwrap();
        let left = back.expires_at.unwrap().saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(98) && left <= Duration::from_secs(100), "{left:?}");

        let mut bytes = encode_retained(&message);
        bytes[1..9].copy_from_slice(&(now_wall_ms() - 1).to_be_bytes());
        assert!(decode_retained("t", &bytes).unwrap().is_none());
    }

    #[test]
    fn damage_is_an_error_not_an_empty_message() {
        let message = Message::new(Bytes::from_static(b"t"), Bytes::from_static(b"xyz"), QoS::AtMostOnce, true);
        let bytes = encode_retained(&message);
        assert!(decode_retained("t", &bytes[..bytes.len() - 2]).is_err(), "truncated");
        assert!(decode_retained("t", &bytes[..4]).is_err(), "too short");
        assert!(decode_retained("other", &bytes).is_err(), "another topic");
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(decode_retained("t", &bad).is_err(), "unknown version");
    }
}
