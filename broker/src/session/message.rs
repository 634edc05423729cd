//! What travels through the broker: a message, and one delivery of it to one client.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// MQTT 5's properties, passed on as they came (none from 3.1/3.1.1 publishers), but for the topic
    /// alias, which was the publisher's connection's alone.
    pub properties: Option<Arc<PublishProperties>>,
    /// When its message expiry interval runs out (MQTT 5): not delivered after that.
    pub expires_at: Option<Instant>,
    /// The connection that published it (its id, unique for the broker's life); 0 for the broker's
    /// own messages (`$SYS`, control replies, publishes through the API).
    pub origin: u64,
    /// The packet id of the QoS 2 flow it came in on, when the store keeps the publisher's session (0
    /// otherwise): the store keeps that id with the message's deliveries, in one commit.
    pub kept_flow: u16,
}

impl Message {
    /// One of the broker's own messages.
    pub fn new(topic: Bytes, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message { topic, payload, qos, retain, properties: None, expires_at: None, origin: 0, kept_flow: 0 }
    }

    /// What a client published, as the connection `origin` read it.
    pub fn published(publish: Publish, origin: u64) -> Message {
        let Publish { topic, payload, qos, retain, properties, .. } = publish;
        Message::with_properties(topic, payload, qos, retain, properties, origin)
    }

    /// A message with MQTT 5 properties; its expiry counts from now.
    pub fn with_properties(
        topic: Bytes,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: Option<Arc<PublishProperties>>,
        origin: u64,
    ) -> Message {
        if let Some(p) = properties.as_mut() {
            if p.topic_alias.is_some() {
                Arc::make_mut(p).topic_alias = None;
            }
            if **p == PublishProperties::default() {
                properties = None;
            }
        }
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| Instant::now() + Duration::from_secs(secs.into()));
        Message { topic, payload, qos, retain, properties, expires_at, origin, kept_flow: 0 }
    }

    /// The same message, as delivered through subscriptions with these identifiers (MQTT 5: each
    /// delivery names the subscriptions that matched).
    pub fn for_subscriptions(self: &Arc<Message>, ids: &[u32]) -> Arc<Message> {
        if ids.is_empty() {
            return self.clone();
        }
        let mut properties = self.properties.as_deref().cloned().unwrap_or_default();
        properties.subscription_identifiers = ids.to_vec();
        Arc::new(Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            properties: Some(Arc::new(properties)),
            expires_at: self.expires_at,
            origin: self.origin,
            kept_flow: 0,
        })
    }

    /// Whether its expiry interval has run out; the clock is read only for a message that has one.
    pub fn expired(&self) -> bool {
        self.expires_at.is_some_and(|at| at <= Instant::now())
    }

    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or("")
    }

    /// The broker's own traffic, `$SYS` and the control channel's replies, counts in no metric.
    pub fn is_internal(&self) -> bool {
        self.topic.starts_with(b"$SYS/") || self.topic.starts_with(midge_shared::control::PREFIX.as_bytes())
    }
}

/// A shared subscription's name: its group and its filter. Its deliveries carry it, so a message whose
/// member left can find the group again.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedKey {
    pub group: Box<str>,
    pub filter: Box<str>,
}

/// One message on its way to one subscriber, at the QoS that subscriber gets.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    /// The retain flag of the PUBLISH: set for a retained message sent on subscribe, and kept as
    /// published for a subscription that asks for that (MQTT 5).
    pub retain: bool,
    /// The shared subscription it was routed through, if any: should this member leave before taking
    /// it, it goes to another.
    pub shared: Option<Arc<SharedKey>>,
    /// Its number in the store, which keeps it until it is acknowledged or dropped (0: not kept).
    pub store_id: u64,
    /// Perhaps sent before (restored from the store after a restart): its PUBLISH carries DUP.
    pub dup: bool,
}

impl Delivery {
    /// A delivery through an ordinary subscription.
    pub fn new(message: Arc<Message>, qos: QoS, retain: bool) -> Delivery {
        Delivery { message, qos, retain, shared: None, store_id: 0, dup: false }
    }

    /// The PUBLISH that carries this delivery (`pkid` 0 for QoS 0). A message that expires carries the
    /// time it has left (MQTT 5 §3.3.2.3.3).
    pub fn publish(&self, pkid: u16, dup: bool) -> Publish {
        let mut properties = self.message.properties.clone();
        if let (Some(at), Some(p)) = (self.message.expires_at, properties.as_mut()) {
            let left = at.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as u32;
            Arc::make_mut(p).message_expiry_interval = Some(left.max(1));
        }
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.message.topic.clone(),
            pkid,
            payload: self.message.payload.clone(),
            properties,
        }
    }

    pub fn expired(&self) -> bool {
        self.message.expired()
    }
}
