//! A persistent session on its way from the node that held it to the node its client connects to
//! now: the store's record of it (subscriptions, expiry, who) and its deliveries, each written as the
//! store writes a kept delivery.
//!
//! Layout: the record, then the deliveries in flight (packet id, past PUBREC or not, delivery), the
//! queued ones, and the packet ids awaiting PUBREL; each length-prefixed.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::session::{Delivery, Handover};
use crate::store::{decode_queued, decode_session, encode_queued, encode_session, get_bytes, put_bytes, SessionRecord};

pub fn encode(record: &SessionRecord, handover: &Handover) -> Bytes {
    let mut buf = BytesMut::new();
    put_bytes(&mut buf, &encode_session(record));
    buf.put_u32(handover.inflight.len() as u32);
    for (pkid, released, delivery) in &handover.inflight {
        buf.put_u16(*pkid);
        buf.put_u8(u8::from(*released));
        put_bytes(&mut buf, &encode_queued(&record.client_id, delivery));
    }
    buf.put_u32(handover.queued.len() as u32);
    for delivery in &handover.queued {
        put_bytes(&mut buf, &encode_queued(&record.client_id, delivery));
    }
    buf.put_u32(handover.awaiting_rel.len() as u32);
    for pkid in &handover.awaiting_rel {
        buf.put_u16(*pkid);
    }
    buf.freeze()
}

/// The session of `client_id` in `bytes`; deliveries whose message expired on the way are left out.
pub fn decode(client_id: &str, mut bytes: &[u8]) -> Result<(SessionRecord, Handover), String> {
    let mut record = decode_session(client_id, get_bytes(&mut bytes)?)?;
    record.client_id = client_id.into();
    let mut handover = Handover::default();
    for _ in 0..get_u32(&mut bytes)? {
        need(bytes, 3)?;
        let (pkid, released) = (bytes.get_u16(), bytes.get_u8() != 0);
        if let Some(delivery) = delivery(get_bytes(&mut bytes)?)? {
            handover.inflight.push((pkid, released, delivery));
        }
    }
    for _ in 0..get_u32(&mut bytes)? {
        if let Some(delivery) = delivery(get_bytes(&mut bytes)?)? {
            handover.queued.push(delivery);
        }
    }
    for _ in 0..get_u32(&mut bytes)? {
        need(bytes, 2)?;
        handover.awaiting_rel.push(bytes.get_u16());
    }
    Ok((record, handover))
}

fn delivery(bytes: &[u8]) -> Result<Option<Delivery>, String> {
    decode_queued(0, bytes).map(|(_, delivery)| delivery)
}

fn get_u32(bytes: &mut &[u8]) -> Result<u32, String> {
    need(bytes, 4)?;
    Ok(bytes.get_u32())
}

fn need(bytes: &[u8], len: usize) -> Result<(), String> {
    if bytes.len() < len {
        Err("a handed-over session, truncated".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::protocol::{QoS, SubscriptionOptions};
    use crate::session::Message;

    #[test]
    fn a_session_reads_back_as_it_was_written() {
        let record = SessionRecord {
            client_id: "mover".into(),
            expiry: Some(Duration::from_secs(600)),
            parked_at_ms: Some(1),
            created_at_ms: 1_700_000_000_000,
            username: Some("u".into()),
            proto_ver: 4,
            peer: "127.0.0.1:5000".into(),
            filters: vec![("a/#".into(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
        };
        let message =
            |n: &str| Arc::new(Message::new(format!("a/{n}").into(), n.to_string().into(), QoS::ExactlyOnce, false));
        let handover = Handover {
            inflight: vec![
                (7, false, Delivery::new(message("1"), QoS::AtLeastOnce, false)),
                (9, true, Delivery::new(message("2"), QoS::ExactlyOnce, false)),
            ],
            queued: vec![Delivery::new(message("3"), QoS::ExactlyOnce, false)],
            awaiting_rel: vec![3, 4],
        };
        let (back, handed) = decode("mover", &encode(&record, &handover)).unwrap();
        assert_eq!(back, record);
        let inflight: Vec<_> =
            handed.inflight.iter().map(|(p, r, d)| (*p, *r, d.qos, d.message.payload.clone())).collect();
        assert_eq!(inflight, [(7, false, QoS::AtLeastOnce, "1".into()), (9, true, QoS::ExactlyOnce, "2".into())]);
        assert_eq!(handed.queued[0].message.topic, "a/3");
        assert_eq!(handed.awaiting_rel, [3, 4]);
        let bytes = encode(&record, &handover);
        assert!(decode("mover", &bytes[..bytes.len() - 1]).is_err());
    }
}
