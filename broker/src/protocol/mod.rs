//! The MQTT 3.1 / 3.1.1 / 5.0 wire format: packets as types, their decoding and encoding, and the rules for
//! topic names and filters. The bottom of the broker: it depends on nothing else in it.

mod decode;
mod encode;
mod packet;
pub mod properties;
pub mod topic;

pub use decode::{decode, decode_stored_publish, DecodeError, MAX_REMAINING_LENGTH};
pub use encode::{encode, publish_len};
pub use packet::*;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;
    use std::num::NonZeroU32;
    use std::sync::Arc;

    fn round_trip(packet: &Packet, level: Protocol) -> Packet {
        let mut buf = BytesMut::new();
        encode(packet, level, &mut buf);
        let decoded = decode(&mut buf, level, MAX_REMAINING_LENGTH + 5).unwrap().unwrap();
        assert!(buf.is_empty(), "decode must consume exactly one packet");
        decoded
    }

    fn qos() -> impl Strategy<Value = QoS> {
        (0u8..3).prop_map(|q| QoS::from_u8(q).unwrap())
    }

    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,40}"
    }

    fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn pkid() -> impl Strategy<Value = u16> {
        1u16..=u16::MAX
    }

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((text(), text()), 0..3)
    }

    fn reason() -> impl Strategy<Value = ReasonCode> {
        any::<u8>().prop_filter_map("a reason code", ReasonCode::from_u8)
    }

    /// MQTT 5 properties of a PUBLISH (or of a will, which has no alias or subscription identifier):
    /// `None` when there are none, as decode gives them.
    fn publish_properties(publish: bool) -> impl Strategy<Value = Option<Arc<PublishProperties>>> {
        let ids = prop::collection::vec(1u32..=268_435_455, 0..if publish { 3 } else { 1 });
        (
            prop::option::of(0u8..2),
            prop::option::of(any::<u32>()),
            prop::option::of(1u16..).prop_map(move |alias| alias.filter(|_| publish)),
            prop::option::of(text()),
            prop::option::of(bytes(20)),
            pairs(),
            ids,
            prop::option::of(text()),
        )
            .prop_map(|(pfi, expiry, alias, response, correlation, user, ids, content)| {
                let p = PublishProperties {
                    payload_format_indicator: pfi,
                    message_expiry_interval: expiry,
                    topic_alias: alias,
                    response_topic: response,
                    correlation_data: correlation,
                    user_properties: user,
                    subscription_identifiers: ids,
                    content_type: content,
                };
                (p != PublishProperties::default()).then(|| Arc::new(p))
            })
    }

    fn publish(level: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = level == Protocol::V5;
        let properties = publish_properties(true).prop_map(move |p| if v5 { p } else { None });
        (any::<bool>(), qos(), any::<bool>(), text(), pkid(), bytes(300), properties).prop_map(
            |(dup, qos, retain, topic, pkid, payload, properties)| {
                Packet::Publish(Publish {
                    dup,
                    qos,
                    retain,
                    topic: Bytes::from(topic),
                    pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
                    payload,
                    properties,
                })
            },
        )
    }

    fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
        (
            prop::option::of(any::<u32>()),
            prop::option::of(1u16..),
            prop::option::of(1u32..),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            pairs(),
            prop::option::of((text(), prop::option::of(bytes(20)))),
        )
            .prop_map(|(expiry, receive, size, alias, response, problem, user, auth)| ConnectProperties {
                session_expiry_interval: expiry,
                receive_maximum: receive,
                maximum_packet_size: size,
                topic_alias_maximum: alias,
                request_response_information: response,
                request_problem_information: problem,
                user_properties: user,
                authentication_data: auth.as_ref().and_then(|(_, data)| data.clone()),
                authentication_method: auth.map(|(method, _)| method),
            })
    }

    fn connect(level: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = level == Protocol::V5;
        let will = prop::option::of((text(), bytes(50), qos(), any::<bool>(), any::<u32>(), publish_properties(false)));
        let creds = prop::option::of((prop::option::of(text()), prop::option::of(bytes(50))));
        (any::<bool>(), any::<bool>(), any::<u16>(), text(), will, creds, connect_properties()).prop_map(
            move |(v31, clean_session, keep_alive, client_id, will, creds, properties)| {
                let (username, password) = match creds {
                    // 3.1.1 has no password without a username.
                    Some((None, p)) if !v5 => (Some(String::new()), p),
                    Some((u, p)) => (u, p),
                    None => (None, None),
                };
                let protocol = match (v5, v31) {
                    (true, _) => Protocol::V5,
                    (false, true) => Protocol::V31,
                    (false, false) => Protocol::V311,
                };
                Packet::Connect(Connect {
                    protocol,
                    clean_session,
                    keep_alive,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, delay, properties)| LastWill {
                        delay_interval: if v5 { delay } else { 0 },
                        properties: if v5 { properties } else { None },
                        ..LastWill::new(topic, payload, qos, retain)
                    }),
                    username,
                    password,
                    properties: Box::new(if v5 { properties } else { ConnectProperties::default() }),
                })
            },
        )
    }

    fn connack_v5() -> impl Strategy<Value = Packet> {
        let flags = (
            prop::option::of(any::<u32>()),
            prop::option::of(1u16..),
            prop::option::of(0u8..2),
            prop::option::of(any::<bool>()),
            prop::option::of(1u32..),
            prop::option::of(text()),
            prop::option::of(any::<u16>()),
            prop::option::of(text()),
        );
        let rest = (
            pairs(),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<u16>()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of((text(), bytes(10))),
        );
        (any::<bool>(), reason(), flags, rest).prop_map(|(session_present, reason, a, b)| {
            let properties = ConnackProperties {
                session_expiry_interval: a.0,
                receive_maximum: a.1,
                maximum_qos: a.2,
                retain_available: a.3,
                maximum_packet_size: a.4,
                assigned_client_identifier: a.5,
                topic_alias_maximum: a.6,
                reason_string: a.7,
                user_properties: b.0,
                wildcard_subscription_available: b.1,
                subscription_identifiers_available: b.2,
                shared_subscription_available: b.3,
                server_keep_alive: b.4,
                response_information: b.5,
                server_reference: b.6,
                authentication_data: b.7.as_ref().map(|(_, d)| d.clone()),
                authentication_method: b.7.map(|(m, _)| m),
            };
            Packet::Connack(Connack { session_present, reason, properties: Box::new(properties) })
        })
    }

    fn options(v5: bool, id: Option<NonZeroU32>) -> impl Strategy<Value = SubscriptionOptions> {
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, no_local, rap, handling)| {
            if !v5 {
                return SubscriptionOptions::qos(qos);
            }
            SubscriptionOptions { qos, no_local, retain_as_published: rap, retain_handling: handling, id }
        })
    }

    fn subscribe(v5: bool) -> impl Strategy<Value = Packet> {
        let id = prop::option::of(1u32..=268_435_455).prop_map(move |id| id.filter(|_| v5).and_then(NonZeroU32::new));
        (pkid(), id).prop_flat_map(move |(pkid, id)| {
            prop::collection::vec((text(), options(v5, id)), 1..5)
                .prop_map(move |filters| Packet::Subscribe(Subscribe { pkid, filters }))
        })
    }

    /// Packets as the 3.1.1 wire carries them: no properties, no reasons but SUBACK's 0x80.
    fn packet_v311() -> impl Strategy<Value = Packet> {
        prop_oneof![
            connect(Protocol::V311),
            publish(Protocol::V311),
            (any::<bool>(), 0u8..6).prop_map(|(session_present, code)| Packet::Connack(Connack {
                session_present,
                ..Connack::refused(ConnectReturnCode::from_u8(code).unwrap())
            })),
            pkid().prop_map(|pkid| Packet::Puback(Ack::new(pkid))),
            pkid().prop_map(|pkid| Packet::Pubrec(Ack::new(pkid))),
            pkid().prop_map(|pkid| Packet::Pubrel(Ack::new(pkid))),
            pkid().prop_map(|pkid| Packet::Pubcomp(Ack::new(pkid))),
            subscribe(false),
            (pkid(), prop::collection::vec(prop::option::of(qos()), 1..5)).prop_map(|(pkid, codes)| {
                let codes = codes.into_iter().map(|c| c.ok_or(ReasonCode::UnspecifiedError)).collect();
                Packet::Suback(Suback { pkid, codes })
            }),
            (pkid(), prop::collection::vec(text(), 1..5))
                .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters })),
            pkid().prop_map(|pkid| Packet::Unsuback(Unsuback::new(pkid))),
            Just(Packet::Pingreq),
            Just(Packet::Pingresp),
            Just(Packet::Disconnect(Disconnect::new(ReasonCode::Success))),
        ]
    }

    fn packet_v5() -> impl Strategy<Value = Packet> {
        let failure = reason().prop_filter("a failure", |r| r.is_failure());
        prop_oneof![
            connect(Protocol::V5),
            publish(Protocol::V5),
            connack_v5(),
            (pkid(), reason()).prop_map(|(pkid, reason)| Packet::Puback(Ack { pkid, reason })),
            (pkid(), reason()).prop_map(|(pkid, reason)| Packet::Pubrec(Ack { pkid, reason })),
            (pkid(), reason()).prop_map(|(pkid, reason)| Packet::Pubrel(Ack { pkid, reason })),
            (pkid(), reason()).prop_map(|(pkid, reason)| Packet::Pubcomp(Ack { pkid, reason })),
            subscribe(true),
            (pkid(), prop::collection::vec(prop::result::maybe_ok(qos(), failure), 1..5))
                .prop_map(|(pkid, codes)| Packet::Suback(Suback { pkid, codes })),
            (pkid(), prop::collection::vec(text(), 1..5))
                .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters })),
            (pkid(), prop::collection::vec(reason(), 0..5))
                .prop_map(|(pkid, reasons)| Packet::Unsuback(Unsuback { pkid, reasons })),
            Just(Packet::Pingreq),
            Just(Packet::Pingresp),
            (reason(), prop::option::of(any::<u32>()), prop::option::of(text()), prop::option::of(text())).prop_map(
                |(reason, expiry, why, server)| Packet::Disconnect(Disconnect {
                    reason,
                    session_expiry_interval: expiry,
                    reason_string: why,
                    server_reference: server,
                })
            ),
            (reason(), prop::option::of(text()), prop::option::of(bytes(20)), prop::option::of(text())).prop_map(
                |(reason, method, data, why)| Packet::Auth(Auth {
                    reason,
                    authentication_method: method,
                    authentication_data: data,
                    reason_string: why,
                })
            ),
        ]
    }

    fn leveled() -> impl Strategy<Value = (Protocol, Packet)> {
        prop_oneof![packet_v311().prop_map(|p| (Protocol::V311, p)), packet_v5().prop_map(|p| (Protocol::V5, p)),]
    }

    fn bytes_of(packet: Packet, level: Protocol) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(&packet, level, &mut buf);
        buf.to_vec()
    }

    /// Reason codes stay on this side of a 3.1.1 wire except where 3.1.1 has a byte for them: a
    /// refusal in a SUBACK is 0x80 whatever its reason, and acknowledgements and DISCONNECT carry none.
    #[test]
    fn reason_codes_on_a_3_1_1_wire() {
        let bytes = |packet| bytes_of(packet, Protocol::V311);
        let codes = vec![Ok(QoS::AtLeastOnce), Err(ReasonCode::NotAuthorized), Err(ReasonCode::TopicFilterInvalid)];
        assert_eq!(bytes(Packet::Suback(Suback { pkid: 7, codes })), [0x90, 5, 0, 7, 1, 0x80, 0x80]);
        let refused = Ack { pkid: 9, reason: ReasonCode::NotAuthorized };
        assert_eq!(bytes(Packet::Puback(refused)), bytes(Packet::Puback(Ack::new(9))));
        assert_eq!(bytes(Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown))), [0xe0, 0]);
        let unsuback = Unsuback { pkid: 3, reasons: vec![ReasonCode::NoSubscriptionExisted] };
        assert_eq!(bytes(Packet::Unsuback(unsuback)), [0xb0, 2, 0, 3]);
        let options = SubscriptionOptions { no_local: true, ..SubscriptionOptions::qos(QoS::ExactlyOnce) };
        let subscribe = Subscribe { pkid: 1, filters: vec![("a".into(), options)] };
        assert_eq!(bytes(Packet::Subscribe(subscribe)), [0x82, 6, 0, 1, 0, 1, b'a', 2]);
        // A CONNACK reason without a 3.1.1 code of its own reads "server unavailable".
        assert_eq!(bytes(Packet::Connack(Connack::refused(ReasonCode::BadAuthenticationMethod))), [0x20, 2, 0, 3]);
        assert_eq!(bytes(Packet::Connack(Connack::refused(ReasonCode::BadUserNameOrPassword))), [0x20, 2, 0, 4]);
        for code in [ReasonCode::Success, ReasonCode::NotAuthorized, ReasonCode::PayloadFormatInvalid] {
            assert_eq!(ReasonCode::from_u8(code as u8), Some(code));
            assert_eq!(code.is_failure(), code as u8 >= 0x80);
        }
    }

    /// The shapes MQTT 5 lets a packet shrink to, and what the broker writes.
    #[test]
    fn mqtt5_bytes() {
        let bytes = |packet| bytes_of(packet, Protocol::V5);
        assert_eq!(bytes(Packet::Puback(Ack::new(9))), [0x40, 2, 0, 9]);
        let refused = Ack { pkid: 9, reason: ReasonCode::NotAuthorized };
        assert_eq!(bytes(Packet::Puback(refused)), [0x40, 3, 0, 9, 0x87]);
        assert_eq!(bytes(Packet::Disconnect(Disconnect::new(ReasonCode::Success))), [0xe0, 0]);
        assert_eq!(bytes(Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))), [0xe0, 2, 0x8e, 0]);
        let codes = vec![Ok(QoS::AtLeastOnce), Err(ReasonCode::NotAuthorized)];
        assert_eq!(bytes(Packet::Suback(Suback { pkid: 7, codes })), [0x90, 5, 0, 7, 0, 1, 0x87]);
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: Bytes::from_static(b"t"),
            pkid: 0,
            payload: Bytes::from_static(b"x"),
            properties: None,
        };
        assert_eq!(bytes(Packet::Publish(publish)), [0x30, 5, 0, 1, b't', 0, b'x']);
        // Each short form decodes to the full one.
        for (wire, expected) in [
            (&[0x40, 2, 0, 9][..], Packet::Puback(Ack::new(9))),
            (&[0x50, 3, 0, 9, 0x10][..], Packet::Pubrec(Ack { pkid: 9, reason: ReasonCode::NoMatchingSubscribers })),
            (
                &[0x62, 4, 0, 9, 0x92, 0][..],
                Packet::Pubrel(Ack { pkid: 9, reason: ReasonCode::PacketIdentifierNotFound }),
            ),
            (&[0xe0, 0][..], Packet::Disconnect(Disconnect::new(ReasonCode::Success))),
            (&[0xe0, 1, 0x04][..], Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill))),
        ] {
            let mut buf = BytesMut::from(wire);
            assert_eq!(decode(&mut buf, Protocol::V5, 1024), Ok(Some(expected)), "{wire:?}");
        }
    }

    proptest! {
        #[test]
        fn every_packet_round_trips((level, p) in leveled()) {
            prop_assert_eq!(round_trip(&p, level), p);
        }

        #[test]
        fn split_input_decodes_the_same((level, p) in leveled(), cut in 0usize..400) {
            let mut whole = BytesMut::new();
            encode(&p, level, &mut whole);
            let cut = cut.min(whole.len());
            let mut buf = BytesMut::from(&whole[..cut]);
            if cut < whole.len() {
                prop_assert_eq!(decode(&mut buf, level, usize::MAX).unwrap(), None);
                buf.extend_from_slice(&whole[cut..]);
            }
            prop_assert_eq!(decode(&mut buf, level, usize::MAX).unwrap(), Some(p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), v5 in any::<bool>()) {
            let level = if v5 { Protocol::V5 } else { Protocol::V311 };
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf, level, 1024) {}
        }

        #[test]
        fn publish_len_matches_encoding((level, p) in prop_oneof![
            publish(Protocol::V311).prop_map(|p| (Protocol::V311, p)),
            publish(Protocol::V5).prop_map(|p| (Protocol::V5, p)),
        ]) {
            let Packet::Publish(publish) = &p else { unreachable!() };
            let mut buf = BytesMut::new();
            encode(&p, level, &mut buf);
            prop_assert_eq!(publish_len(publish, level), buf.len());
        }
    }

    #[test]
    fn v31_and_v5_connects_are_accepted_and_v6_is_not() {
        let mut v31 = BytesMut::from(&b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x04abcd"[..]);
        match decode(&mut v31, Protocol::V311, 1024).unwrap().unwrap() {
            Packet::Connect(c) => {
                assert_eq!(c.protocol, Protocol::V31);
                assert_eq!(c.client_id, "abcd");
            }
            other => panic!("{other:?}"),
        }
        // A CONNECT names its own level: the reader's does not matter.
        let mut v5 = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00"[..]);
        match decode(&mut v5, Protocol::V311, 1024).unwrap().unwrap() {
            Packet::Connect(c) => assert_eq!((c.protocol, *c.properties), (Protocol::V5, ConnectProperties::default())),
            other => panic!("{other:?}"),
        }
        let mut v6 = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x00\x00"[..]);
        assert_eq!(
            decode(&mut v6, Protocol::V311, 1024),
            Err(DecodeError::UnsupportedProtocol { name: "MQTT".into(), level: 6 })
        );
    }

    #[test]
    fn binary_password_is_kept_as_bytes() {
        let p = Packet::Connect(Connect {
            username: Some("u".into()),
            password: Some(Bytes::from_static(&[0xff, 0x00, 0xfe])),
            ..connect_v311("c")
        });
        assert_eq!(round_trip(&p, Protocol::V311), p);
    }

    fn connect_v311(client_id: &str) -> Connect {
        Connect {
            protocol: Protocol::V311,
            clean_session: true,
            keep_alive: 10,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Box::default(),
        }
    }

    #[test]
    fn strict_checks() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", DecodeError::ReservedConnectFlag),
            (b"\x10\x0c\x00\x04MQTT\x04\x42\x00\x3c\x00\x00", DecodeError::PasswordWithoutUsername),
            (b"\x10\x0c\x00\x04MQTT\x04\x0a\x00\x3c\x00\x00", DecodeError::InvalidWillFlags),
            (b"\x10\x0c\x00\x04MQTT\x04\x1e\x00\x3c\x00\x00", DecodeError::InvalidWillFlags),
            (b"\x36\x05\x00\x01a\x00\x01", DecodeError::InvalidQoS),
            (b"\x83\x06\x00\x01\x00\x01a\x00", DecodeError::InvalidFlags(8)),
            (b"\x82\x02\x00\x01", DecodeError::Malformed("SUBSCRIBE without a topic filter")),
            (b"\x82\x06\x00\x01\x00\x01a\x04", DecodeError::Malformed("reserved bits in subscription options")),
            (b"\x30\x04\x00\x02a\x00", DecodeError::InvalidUtf8),
            (b"\x30\x04\x00\x02\xc3\x28", DecodeError::InvalidUtf8),
            (b"\x32\x05\x00\x01a\x00\x00", DecodeError::Malformed("packet identifier 0")),
            (b"\xc0\x01\x00", DecodeError::TrailingBytes),
            (b"\x00\x00", DecodeError::InvalidPacketType(0)),
            (b"\xf0\x00", DecodeError::InvalidPacketType(15)),
            (b"\x30\xff\xff\xff\xff\x01", DecodeError::MalformedRemainingLength),
        ];
        for (bytes, expected) in cases {
            let mut buf = BytesMut::from(*bytes);
            assert_eq!(decode(&mut buf, Protocol::V311, usize::MAX).as_ref(), Err(expected), "{bytes:?}");
        }
    }

    /// MQTT 5's rules for properties and options, each with the reason code a DISCONNECT gives it.
    #[test]
    fn strict_checks_v5() {
        let cases: &[(&[u8], DecodeError, ReasonCode)] = &[
            // PUBLISH "t" with a session expiry interval, which only CONNECT, CONNACK and DISCONNECT carry.
            (
                b"\x30\x0a\x00\x01t\x05\x11\x00\x00\x00\x01x",
                DecodeError::PropertyNotAllowed(0x11),
                ReasonCode::MalformedPacket,
            ),
            // Two payload format indicators.
            (
                b"\x30\x09\x00\x01t\x04\x01\x00\x01\x00x",
                DecodeError::DuplicateProperty(0x01),
                ReasonCode::ProtocolError,
            ),
            // A payload format indicator of 2.
            (b"\x30\x07\x00\x01t\x02\x01\x02x", DecodeError::PropertyValue(0x01), ReasonCode::ProtocolError),
            // A property block longer than the packet.
            (b"\x30\x05\x00\x01t\x09x", DecodeError::Truncated, ReasonCode::MalformedPacket),
            // An unknown property identifier.
            (b"\x30\x06\x00\x01t\x01\x7fx", DecodeError::PropertyNotAllowed(0x7f), ReasonCode::MalformedPacket),
            // Two subscription identifiers in a SUBSCRIBE.
            (
                b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00",
                DecodeError::DuplicateProperty(0x0b),
                ReasonCode::ProtocolError,
            ),
            // Subscription identifier 0.
            (b"\x82\x08\x00\x01\x02\x0b\x00\x00\x01a\x00", DecodeError::PropertyValue(0x0b), ReasonCode::ProtocolError),
            // Retain handling 3.
            (
                b"\x82\x07\x00\x01\x00\x00\x01a\x30",
                DecodeError::ProtocolError("retain handling 3"),
                ReasonCode::ProtocolError,
            ),
            // Reserved option bits.
            (
                b"\x82\x07\x00\x01\x00\x00\x01a\x40",
                DecodeError::Malformed("reserved bits in subscription options"),
                ReasonCode::MalformedPacket,
            ),
            // Receive maximum 0 in CONNECT.
            (
                b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x00\x00\x00",
                DecodeError::PropertyValue(0x21),
                ReasonCode::ProtocolError,
            ),
            // Authentication data without a method.
            (
                b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x03\x16\x00\x00\x00\x00",
                DecodeError::ProtocolError("authentication data without a method"),
                ReasonCode::ProtocolError,
            ),
            // AUTH with fixed-header flags.
            (b"\xf1\x00", DecodeError::InvalidFlags(15), ReasonCode::MalformedPacket),
        ];
        for (bytes, expected, reason) in cases {
            let mut buf = BytesMut::from(*bytes);
            let error = decode(&mut buf, Protocol::V5, usize::MAX).unwrap_err();
            assert_eq!(&error, expected, "{bytes:?}");
            assert_eq!(error.reason_code(), *reason, "{bytes:?}");
        }
        // User properties repeat, and a password may come without a username.
        let mut ok = BytesMut::from(&b"\x30\x10\x00\x01t\x0b\x26\x00\x01a\x00\x00\x26\x00\x00\x00\x00x"[..]);
        assert!(matches!(decode(&mut ok, Protocol::V5, 1024), Ok(Some(Packet::Publish(p)))
            if p.properties.as_ref().unwrap().user_properties.len() == 2));
        let mut password = BytesMut::from(&b"\x10\x11\x00\x04MQTT\x05\x42\x00\x3c\x00\x00\x00\x00\x02pw"[..]);
        assert!(matches!(decode(&mut password, Protocol::V5, 1024), Ok(Some(Packet::Connect(c)))
            if c.username.is_none() && c.password.as_deref() == Some(&b"pw"[..])));
    }

    #[test]
    fn size_limit_is_checked_before_the_body_arrives() {
        let mut buf = BytesMut::from(&b"\x30\x80\x80\x04"[..]);
        assert_eq!(decode(&mut buf, Protocol::V311, 1024), Err(DecodeError::PacketTooLarge { size: 65540, max: 1024 }));
    }
}
