//! Our own MQTT packet types, for 3.1, 3.1.1 and 5.0 alike: acknowledgements, CONNACK, SUBACK and
//! DISCONNECT carry MQTT 5 reason codes (written as the 3.1.1 byte where 3.1.1 has room for one, and not
//! at all where it has none), and packets carry the MQTT 5 properties the broker acts on (the rest are
//! checked on the way in and then let go). The protocol level travels with the connection, not with
//! each packet: `encode` and `decode` take it.

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
    /// MQTT 5.0, protocol name `MQTT`, level 5.
    V5,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "MQIsdp",
            Protocol::V311 | Protocol::V5 => "MQTT",
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
    DisconnectWithWill = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8a,
    ServerShuttingDown = 0x8b,
    BadAuthenticationMethod = 0x8c,
    KeepAliveTimeout = 0x8d,
    SessionTakenOver = 0x8e,
    TopicFilterInvalid = 0x8f,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9a,
    QosNotSupported = 0x9b,
    UseAnotherServer = 0x9c,
    ServerMoved = 0x9d,
    SharedSubscriptionsNotSupported = 0x9e,
    ConnectionRateExceeded = 0x9f,
    MaximumConnectTime = 0xa0,
    SubscriptionIdentifiersNotSupported = 0xa1,
    WildcardSubscriptionsNotSupported = 0xa2,
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
            DisconnectWithWill,
            NoMatchingSubscribers,
            NoSubscriptionExisted,
            ContinueAuthentication,
            ReAuthenticate,
            UnspecifiedError,
            MalformedPacket,
            ProtocolError,
            ImplementationSpecificError,
            UnsupportedProtocolVersion,
            ClientIdentifierNotValid,
            BadUserNameOrPassword,
            NotAuthorized,
            ServerUnavailable,
            ServerBusy,
            Banned,
            ServerShuttingDown,
            BadAuthenticationMethod,
            KeepAliveTimeout,
            SessionTakenOver,
            TopicFilterInvalid,
            TopicNameInvalid,
            PacketIdentifierInUse,
            PacketIdentifierNotFound,
            ReceiveMaximumExceeded,
            TopicAliasInvalid,
            PacketTooLarge,
            MessageRateTooHigh,
            QuotaExceeded,
            AdministrativeAction,
            PayloadFormatInvalid,
            RetainNotSupported,
            QosNotSupported,
            UseAnotherServer,
            ServerMoved,
            SharedSubscriptionsNotSupported,
            ConnectionRateExceeded,
            MaximumConnectTime,
            SubscriptionIdentifiersNotSupported,
            WildcardSubscriptionsNotSupported,
        ]
        .into_iter()
        .find(|code| *code as u8 == v)
    }

    /// The CONNACK return code 3.1/3.1.1 has for a CONNACK reason (§3.2.2.3 of 5.0 maps them): every
    /// refusal without a 3.1.1 code of its own reads "server unavailable".
    pub fn connack_v3(self) -> ConnectReturnCode {
        match self {
            ReasonCode::Success => ConnectReturnCode::Accepted,
            ReasonCode::UnsupportedProtocolVersion => ConnectReturnCode::UnacceptableProtocol,
            ReasonCode::ClientIdentifierNotValid => ConnectReturnCode::IdentifierRejected,
            ReasonCode::BadUserNameOrPassword => ConnectReturnCode::BadUsernameOrPassword,
            ReasonCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
            _ => ConnectReturnCode::ServerUnavailable,
        }
    }
}

impl From<ConnectReturnCode> for ReasonCode {
    fn from(code: ConnectReturnCode) -> ReasonCode {
        match code {
            ConnectReturnCode::Accepted => ReasonCode::Success,
            ConnectReturnCode::UnacceptableProtocol => ReasonCode::UnsupportedProtocolVersion,
            ConnectReturnCode::IdentifierRejected => ReasonCode::ClientIdentifierNotValid,
            ConnectReturnCode::ServerUnavailable => ReasonCode::ServerUnavailable,
            ConnectReturnCode::BadUsernameOrPassword => ReasonCode::BadUserNameOrPassword,
            ConnectReturnCode::NotAuthorized => ReasonCode::NotAuthorized,
        }
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
    /// MQTT 5: seconds to wait after the connection ends before publishing (0: at once).
    pub delay_interval: u32,
    /// MQTT 5: the will message's own properties, published with it.
    pub properties: Option<Arc<PublishProperties>>,
}

impl LastWill {
    pub fn new(topic: impl Into<String>, payload: Bytes, qos: QoS, retain: bool) -> LastWill {
        LastWill { topic: topic.into(), payload, qos, retain, delay_interval: 0, properties: None }
    }
}

/// MQTT 5's CONNECT properties; all absent in 3.1/3.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Seconds the session outlives the connection; absent means 0 (ends with the connection).
    pub session_expiry_interval: Option<u32>,
    /// How many QoS 1/2 PUBLISHes the client takes in flight at once (absent: 65,535).
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    /// How many topic aliases the client accepts from us (absent: none).
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: Vec<(String, String)>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// "Clean start" in MQTT 5: begin with no session state.
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    /// Binary in 3.1.1; never assumed to be UTF-8.
    pub password: Option<Bytes>,
    /// Boxed, as rare and large: every packet is as large as the largest.
    pub properties: Box<ConnectProperties>,
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

/// MQTT 5's CONNACK properties: what the server tells the client of its limits and of the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnackProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connack {
    pub session_present: bool,
    /// 3.1/3.1.1 writes it as its return code ([`ReasonCode::connack_v3`]).
    pub reason: ReasonCode,
    /// Boxed, as rare and large: every packet is as large as the largest.
    pub properties: Box<ConnackProperties>,
}

impl Connack {
    pub fn accepted(session_present: bool) -> Connack {
        Connack { session_present, reason: ReasonCode::Success, properties: Box::default() }
    }

    pub fn refused(reason: impl Into<ReasonCode>) -> Connack {
        Connack { session_present: false, reason: reason.into(), properties: Box::default() }
    }

    /// The reason as 3.1/3.1.1 reads it.
    pub fn code(&self) -> ConnectReturnCode {
        self.reason.connack_v3()
    }
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

/// DISCONNECT, either way. 3.1/3.1.1 writes none of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    /// From the client: a new session expiry interval.
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<String>,
    pub server_reference: Option<String>,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect { reason, session_expiry_interval: None, reason_string: None, server_reference: None }
    }
}

/// MQTT 5's AUTH: a step of enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<String>,
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
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
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
            Packet::Auth(_) => "AUTH",
        }
    }
}
