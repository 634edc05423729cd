//! A message between nodes: the MQTT 5 PUBLISH that carries it (our own codec writes and reads it,
//! properties and all), its expiry interval set to the time it has left.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::protocol::{decode_stored_publish, encode, Packet, Protocol, Publish};
use crate::session::{Delivery, Message};

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
}
