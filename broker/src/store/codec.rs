//! Records as bytes. A retained message is kept as the MQTT 5 PUBLISH that carries it (our own codec
//! writes and reads it, properties and all), behind a version byte and the wall-clock time its expiry
//! interval ends, so that time spent down counts against it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};

use crate::protocol::{decode, encode, Packet, Protocol, Publish};
use crate::session::Message;

const VERSION: u8 = 1;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn encode_retained(message: &Message) -> Vec<u8> {
    let expires_ms = message
        .expires_at
        .map(|at| now_ms().saturating_add(at.saturating_duration_since(Instant::now()).as_millis() as u64).max(1))
        .unwrap_or(0);
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: true,
        topic: message.topic.clone(),
        pkid: if message.qos == crate::protocol::QoS::AtMostOnce { 0 } else { 1 },
        payload: message.payload.clone(),
        properties: message.properties.clone(),
    };
    let mut buf = BytesMut::with_capacity(16 + message.topic.len() + message.payload.len());
    buf.put_u8(VERSION);
    buf.put_u64(expires_ms);
    encode(&Packet::Publish(publish), Protocol::V5, &mut buf);
    buf.to_vec()
}

/// The message kept under `topic`, or `None` if it expired meanwhile.
pub fn decode_retained(topic: &str, bytes: &[u8]) -> Result<Option<Arc<Message>>, String> {
    let mut bytes = bytes;
    if bytes.len() < 9 {
        return Err(format!("{} bytes, too short", bytes.len()));
    }
    let version = bytes.get_u8();
    if version != VERSION {
        return Err(format!("record version {version}"));
    }
    let expires_ms = bytes.get_u64();
    let mut frame = BytesMut::from(bytes);
    let publish = match decode(&mut frame, Protocol::V5, usize::MAX) {
        Ok(Some(Packet::Publish(publish))) => publish,
        Ok(Some(other)) => return Err(format!("a {other:?} instead of a PUBLISH")),
        Ok(None) => return Err("a truncated PUBLISH".into()),
        Err(e) => return Err(e.to_string()),
    };
    if publish.topic != topic.as_bytes() {
        return Err("its PUBLISH names another topic".into());
    }
    let expires_at = match expires_ms {
        0 => None,
        at => match at.checked_sub(now_ms()) {
            Some(left) if left > 0 => Some(Instant::now() + Duration::from_millis(left)),
            _ => return Ok(None),
        },
    };
    let Publish { topic, payload, qos, properties, .. } = publish;
    Ok(Some(Arc::new(Message { topic, payload, qos, retain: true, properties, expires_at, origin: 0 })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PublishProperties, QoS};
    use bytes::Bytes;

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
        bytes[1..9].copy_from_slice(&(now_ms() - 1).to_be_bytes());
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
