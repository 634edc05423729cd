//! Messages between nodes: each the MQTT 5 PUBLISH that carries it (our own codec writes and reads
//! it, properties and all), its expiry interval set to the time it has left. One NATS message carries
//! a batch of them, all of one subject, each behind its length (u32): under load the per-message cost
//! of NATS (client, server, subscription) is paid once per batch.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::protocol::{decode_stored_publish, encode, Packet, Protocol, Publish};
use crate::session::{Delivery, Message};
use crate::store::{get_bytes, put_bytes};

pub fn encode_message(message: &Arc<Message>) -> Bytes {
    let publish = Delivery::new(message.clone(), message.qos, message.retain).publish(1, false);
    let mut buf = BytesMut::with_capacity(16 + message.topic.len() + message.payload.len());
    encode(&Packet::Publish(publish), Protocol::V5, &mut buf);
    buf.freeze()
}

/// The message in `body`, as published on another node; its expiry counts from now.
pub fn decode_message(body: &[u8]) -> Result<Message, String> {
    let Publish { topic, payload, qos, retain, properties, .. } = decode_stored_publish(body)?;
    Ok(Message::with_properties(topic, payload, qos, retain, properties, 0))
}

/// Appends `message` to a batch's body.
pub fn push_to_batch(body: &mut BytesMut, message: &Arc<Message>) {
    put_bytes(body, &encode_message(message));
}

/// The messages of a batch, in order.
pub fn decode_batch(mut body: &[u8]) -> Result<Vec<Message>, String> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let encoded = get_bytes(&mut body).map_err(|e| format!("a batch: {e}"))?;
        messages.push(decode_message(encoded)?);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::{PublishProperties, QoS};

    #[test]
    fn a_message_crosses_whole() {
        let properties = PublishProperties {
            message_expiry_interval: Some(60),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let sent = Arc::new(Message::with_properties(
            Bytes::from_static(b"a/b"),
            Bytes::from_static(b"hello"),
            QoS::ExactlyOnce,
            true,
            Some(Arc::new(properties)),
            7,
        ));
        let got = decode_message(&encode_message(&sent)).unwrap();
        assert_eq!(
            (&got.topic[..], &got.payload[..], got.qos, got.retain),
            (&b"a/b"[..], &b"hello"[..], QoS::ExactlyOnce, true)
        );
        assert_eq!(got.properties.as_ref().unwrap().user_properties, [("k".to_string(), "v".to_string())]);
        let left = got.expires_at.unwrap().saturating_duration_since(std::time::Instant::now());
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60), "{left:?}");
        assert_eq!(got.origin, 0, "no connection of this node published it");
        assert!(decode_message(b"\x30\x05ab").is_err());
    }

    #[test]
    fn a_batch_reads_back_in_order() {
        let message =
            |n: u8| Arc::new(Message::new(Bytes::from_static(b"t"), Bytes::from(vec![n]), QoS::AtMostOnce, false));
        let mut body = BytesMut::new();
        for n in 1..=3 {
            push_to_batch(&mut body, &message(n));
        }
        let got: Vec<u8> = decode_batch(&body).unwrap().iter().map(|m| m.payload[0]).collect();
        assert_eq!(got, [1, 2, 3]);
        assert!(decode_batch(&body[..body.len() - 1]).is_err());
        assert!(decode_batch(b"").unwrap().is_empty());
    }
}
