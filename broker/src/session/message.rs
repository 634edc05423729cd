//! What travels through the broker: a message, and one delivery of it to one client.

use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::{Publish, PublishProperties, QoS};

/// A client id, shared by every table that names the client.
pub type ClientId = Arc<str>;

/// A message as the router fans it out: one allocation shared by every subscriber.
#[derive(Debug)]
pub struct Message {
    /// UTF-8, validated as a topic name.
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5's properties, passed on as they came (none from 3.1/3.1.1 publishers).
    pub properties: Option<Arc<PublishProperties>>,
    /// The connection that published it (its id, unique for the broker's life); 0 for the broker's
    /// own messages (`$SYS`, control replies, publishes through the API).
    pub origin: u64,
}

impl Message {
    /// One of the broker's own messages.
    pub fn new(topic: Bytes, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message { topic, payload, qos, retain, properties: None, origin: 0 }
    }

    /// What a client published, as the connection `origin` read it.
    pub fn published(publish: Publish, origin: u64) -> Message {
        let Publish { topic, payload, qos, retain, properties, .. } = publish;
        Message { topic, payload, qos, retain, properties, origin }
    }

    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or("")
    }

    /// The broker's own traffic, `$SYS` and the control channel's replies, counts in no metric.
    pub fn is_internal(&self) -> bool {
        self.topic.starts_with(b"$SYS/") || self.topic.starts_with(midge_shared::control::PREFIX.as_bytes())
    }
}

/// One message on its way to one subscriber, at the QoS that subscriber gets.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    /// Set only when the message is sent because of a new subscription to a retained topic.
    pub retain: bool,
}

impl Delivery {
    /// The PUBLISH that carries this delivery (`pkid` 0 for QoS 0).
    pub fn publish(&self, pkid: u16, dup: bool) -> Publish {
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.message.topic.clone(),
            pkid,
            payload: self.message.payload.clone(),
            properties: self.message.properties.clone(),
        }
    }
}
