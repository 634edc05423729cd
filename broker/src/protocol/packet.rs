//! Our own MQTT packet types. They cover 3.1 and 3.1.1 today and are shaped for 5.0: acknowledgements,
//! SUBACK and DISCONNECT carry reason codes (written as the 3.1.1 byte where 3.1.1 has room for one, and
//! not at all where it has none), PUBLISH has room for properties and SUBSCRIBE for options. The
//! protocol level travels with the connection, not with each packet: `encode` and `decode` take it.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;

/// Protocol levels we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    V311,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "MQIsdp",
            Protocol::V311 => "MQTT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Reason codes, as MQTT 5 numbers them (§2.4). A 3.1/3.1.1 packet carries one only where 3.1.1 has a
/// byte for it (a SUBACK's granted QoS or 0x80); elsewhere it stays on this side of the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    /// Also "granted QoS 0" and "normal disconnection".
    Success = 0x00,
    GrantedQos1 = 0x01,
    GrantedQos2 = 0x02,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    NotAuthorized = 0x87,
    ServerBusy = 0x89,
    ServerShuttingDown = 0x8b,
    KeepAliveTimeout = 0x8d,
    SessionTakenOver = 0x8e,
    TopicFilterInvalid = 0x8f,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    PacketTooLarge = 0x95,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
}

impl ReasonCode {
    /// A failure (0x80 and up), as opposed to success or a granted QoS.
    pub fn is_failure(self) -> bool {
        self as u8 >= 0x80
    }

    pub fn from_u8(v: u8) -> Option<ReasonCode> {
        use ReasonCode::*;
        [
            Success,
            GrantedQos1,
            GrantedQos2,
            NoMatchingSubscribers,
            NoSubscriptionExisted,
            UnspecifiedError,
            MalformedPacket,
            ProtocolError,
            ImplementationSpecificError,
            NotAuthorized,
            ServerBusy,
            ServerShuttingDown,
            KeepAliveTimeout,
            SessionTakenOver,
            TopicFilterInvalid,
            TopicNameInvalid,
            PacketIdentifierInUse,
            PacketIdentifierNotFound,
            ReceiveMaximumExceeded,
            PacketTooLarge,
            QuotaExceeded,
            AdministrativeAction,
            PayloadFormatInvalid,
        ]
        .into_iter()
        .find(|code| *code as u8 == v)
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet id and how it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    pub reason: ReasonCode,
}

impl Ack {
    /// A successful acknowledgement: all 3.1/3.1.1 has.
    pub fn new(pkid: u16) -> Ack {
        Ack { pkid, reason: ReasonCode::Success }
    }
}

/// MQTT 5's properties of a PUBLISH (or a will), passed on to subscribers as they came. A 3.1/3.1.1
/// message has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<String>,
}

/// What a subscription asks for beyond its filter. 3.1/3.1.1 has the QoS only; the rest are MQTT 5's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    /// Do not send the subscriber its own messages.
    pub no_local: bool,
    /// Keep the retain flag of forwarded messages as published.
    pub retain_as_published: bool,
    /// 0: send retained messages on subscribe; 1: only if the subscription is new; 2: never.
    pub retain_handling: u8,
    /// Given back in every message this subscription delivers.
    pub id: Option<NonZeroU32>,
}

impl SubscriptionOptions {
    /// The only options 3.1/3.1.1 has: a QoS.
    pub fn qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions { qos, no_local: false, retain_as_published: false, retain_handling: 0, id: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    /// Binary in 3.1.1; never assumed to be UTF-8.
    pub password: Option<Bytes>,
}

/// CONNACK return codes of 3.1/3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocol = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUsernameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    pub fn from_u8(v: u8) -> Option<Self> {
        use ConnectReturnCode::*;
        Some(match v {
            0 => Accepted,
            1 => UnacceptableProtocol,
            2 => IdentifierRejected,
            3 => ServerUnavailable,
            4 => BadUsernameOrPassword,
            5 => NotAuthorized,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connack {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Kept as bytes so a message fans out without copying; validated as UTF-8 on decode.
    pub topic: Bytes,
    /// Present exactly when `qos > 0`.
    pub pkid: u16,
    pub payload: Bytes,
    /// MQTT 5 only; shared, as a message fans out.
    pub properties: Option<Arc<PublishProperties>>,
}

impl Publish {
    pub fn topic_str(&self) -> &str {
        // Decode checked UTF-8 and everything we build comes from `&str`.
        std::str::from_utf8(&self.topic).unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<(String, SubscriptionOptions)>,
}

/// A SUBACK entry: the granted QoS, or why not (3.1/3.1.1 writes every refusal as 0x80).
pub type SubackCode = Result<QoS, ReasonCode>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suback {
    pub pkid: u16,
    pub codes: Vec<SubackCode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
}

/// UNSUBACK: a packet id, and in MQTT 5 a reason per filter (3.1/3.1.1 has none: empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsuback {
    pub pkid: u16,
    pub reasons: Vec<ReasonCode>,
}

impl Unsuback {
    pub fn new(pkid: u16) -> Unsuback {
        Unsuback { pkid, reasons: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    Connack(Connack),
    Publish(Publish),
    Puback(Ack),
    Pubrec(Ack),
    Pubrel(Ack),
    Pubcomp(Ack),
    Subscribe(Subscribe),
    Suback(Suback),
    Unsubscribe(Unsubscribe),
    Unsuback(Unsuback),
    Pingreq,
    Pingresp,
    /// Why the connection ends (3.1/3.1.1 writes none).
    Disconnect(ReasonCode),
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::Connack(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::Puback(_) => "PUBACK",
            Packet::Pubrec(_) => "PUBREC",
            Packet::Pubrel(_) => "PUBREL",
            Packet::Pubcomp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::Suback(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::Unsuback(_) => "UNSUBACK",
            Packet::Pingreq => "PINGREQ",
            Packet::Pingresp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
        }
    }
}
