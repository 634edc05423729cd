//! The MQTT 3.1 / 3.1.1 wire format: packets as types, their decoding and encoding, and the rules for
//! topic names and filters. The bottom of the broker: it depends on nothing else in it.

mod decode;
mod encode;
mod packet;
pub mod topic;

pub use decode::{decode, DecodeError, MAX_REMAINING_LENGTH};
pub use encode::{encode, publish_len};
pub use packet::*;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;

    fn round_trip(packet: &Packet) -> Packet {
        let mut buf = BytesMut::new();
        encode(packet, Protocol::V311, &mut buf);
        let decoded = decode(&mut buf, Protocol::V311, MAX_REMAINING_LENGTH + 5).unwrap().unwrap();
        assert!(buf.is_empty(), "decode must consume exactly one packet");
        decoded
    }

    fn qos() -> impl Strategy<Value = QoS> {
        (0u8..3).prop_map(|q| QoS::from_u8(q).unwrap())
    }

    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,40}"
    }

    fn pkid() -> impl Strategy<Value = u16> {
        1u16..=u16::MAX
    }

    fn publish() -> impl Strategy<Value = Packet> {
        (any::<bool>(), qos(), any::<bool>(), text(), pkid(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(dup, qos, retain, topic, pkid, payload)| {
                Packet::Publish(Publish {
                    dup,
                    qos,
                    retain,
                    topic: Bytes::from(topic),
                    pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
                    payload: Bytes::from(payload),
                    properties: None,
                })
            },
        )
    }

    fn connect() -> impl Strategy<Value = Packet> {
        let will = prop::option::of((text(), prop::collection::vec(any::<u8>(), 0..50), qos(), any::<bool>()));
        let creds = prop::option::of((text(), prop::option::of(prop::collection::vec(any::<u8>(), 0..50))));
        (any::<bool>(), any::<bool>(), any::<u16>(), text(), will, creds).prop_map(
            |(v31, clean_session, keep_alive, client_id, will, creds)| {
                let (username, password) = match creds {
                    Some((u, p)) => (Some(u), p.map(Bytes::from)),
                    None => (None, None),
                };
                Packet::Connect(Connect {
                    protocol: if v31 { Protocol::V31 } else { Protocol::V311 },
                    clean_session,
                    keep_alive,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain)| LastWill {
                        topic,
                        payload: Bytes::from(payload),
                        qos,
                        retain,
                    }),
                    username,
                    password,
                })
            },
        )
    }

    fn packet() -> impl Strategy<Value = Packet> {
        prop_oneof![
            connect(),
            publish(),
            (any::<bool>(), 0u8..6).prop_map(|(session_present, code)| Packet::Connack(Connack {
                session_present,
                code: ConnectReturnCode::from_u8(code).unwrap()
            })),
            // 3.1.1 carries no reason in acknowledgements, nor anything but 0x80 for a refusal.
            pkid().prop_map(|pkid| Packet::Puback(Ack::new(pkid))),
            pkid().prop_map(|pkid| Packet::Pubrec(Ack::new(pkid))),
            pkid().prop_map(|pkid| Packet::Pubrel(Ack::new(pkid))),
            pkid().prop_map(|pkid| Packet::Pubcomp(Ack::new(pkid))),
            (pkid(), prop::collection::vec((text(), qos().prop_map(SubscriptionOptions::qos)), 1..5))
                .prop_map(|(pkid, filters)| Packet::Subscribe(Subscribe { pkid, filters })),
            (pkid(), prop::collection::vec(prop::option::of(qos()), 1..5)).prop_map(|(pkid, codes)| {
                let codes = codes.into_iter().map(|c| c.ok_or(ReasonCode::UnspecifiedError)).collect();
                Packet::Suback(Suback { pkid, codes })
            }),
            (pkid(), prop::collection::vec(text(), 1..5))
                .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters })),
            pkid().prop_map(|pkid| Packet::Unsuback(Unsuback::new(pkid))),
            Just(Packet::Pingreq),
            Just(Packet::Pingresp),
            Just(Packet::Disconnect(ReasonCode::Success)),
        ]
    }

    /// Reason codes stay on this side of a 3.1.1 wire except where 3.1.1 has a byte for them: a
    /// refusal in a SUBACK is 0x80 whatever its reason, and acknowledgements and DISCONNECT carry none.
    #[test]
    fn reason_codes_on_a_3_1_1_wire() {
        let bytes = |packet: Packet| {
            let mut buf = BytesMut::new();
            encode(&packet, Protocol::V311, &mut buf);
            buf.to_vec()
        };
        let codes = vec![Ok(QoS::AtLeastOnce), Err(ReasonCode::NotAuthorized), Err(ReasonCode::TopicFilterInvalid)];
        assert_eq!(bytes(Packet::Suback(Suback { pkid: 7, codes })), [0x90, 5, 0, 7, 1, 0x80, 0x80]);
        let refused = Ack { pkid: 9, reason: ReasonCode::NotAuthorized };
        assert_eq!(bytes(Packet::Puback(refused)), bytes(Packet::Puback(Ack::new(9))));
        assert_eq!(bytes(Packet::Disconnect(ReasonCode::ServerShuttingDown)), [0xe0, 0]);
        let unsuback = Unsuback { pkid: 3, reasons: vec![ReasonCode::NoSubscriptionExisted] };
        assert_eq!(bytes(Packet::Unsuback(unsuback)), [0xb0, 2, 0, 3]);
        let options = SubscriptionOptions { no_local: true, ..SubscriptionOptions::qos(QoS::ExactlyOnce) };
        let subscribe = Subscribe { pkid: 1, filters: vec![("a".into(), options)] };
        assert_eq!(bytes(Packet::Subscribe(subscribe)), [0x82, 6, 0, 1, 0, 1, b'a', 2]);
        for code in [ReasonCode::Success, ReasonCode::NotAuthorized, ReasonCode::PayloadFormatInvalid] {
            assert_eq!(ReasonCode::from_u8(code as u8), Some(code));
            assert_eq!(code.is_failure(), code as u8 >= 0x80);
        }
    }

    proptest! {
        #[test]
        fn every_packet_round_trips(p in packet()) {
            prop_assert_eq!(round_trip(&p), p);
        }

        #[test]
        fn split_input_decodes_the_same(p in packet(), cut in 0usize..400) {
            let mut whole = BytesMut::new();
            encode(&p, Protocol::V311, &mut whole);
            let cut = cut.min(whole.len());
            let mut buf = BytesMut::from(&whole[..cut]);
            if cut < whole.len() {
                prop_assert_eq!(decode(&mut buf, Protocol::V311, usize::MAX).unwrap(), None);
                buf.extend_from_slice(&whole[cut..]);
            }
            prop_assert_eq!(decode(&mut buf, Protocol::V311, usize::MAX).unwrap(), Some(p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf, Protocol::V311, 1024) {}
        }

        #[test]
        fn publish_len_matches_encoding(p in publish()) {
            let Packet::Publish(publish) = &p else { unreachable!() };
            let mut buf = BytesMut::new();
            encode(&p, Protocol::V311, &mut buf);
            prop_assert_eq!(publish_len(publish), buf.len());
        }
    }

    #[test]
    fn v31_connect_is_accepted_and_v5_is_not() {
        let mut v31 = BytesMut::from(&b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x04abcd"[..]);
        match decode(&mut v31, Protocol::V311, 1024).unwrap().unwrap() {
            Packet::Connect(c) => {
                assert_eq!(c.protocol, Protocol::V31);
                assert_eq!(c.client_id, "abcd");
            }
            other => panic!("{other:?}"),
        }
        let mut v5 = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00"[..]);
        assert_eq!(
            decode(&mut v5, Protocol::V311, 1024),
            Err(DecodeError::UnsupportedProtocol { name: "MQTT".into(), level: 5 })
        );
    }

    #[test]
    fn binary_password_is_kept_as_bytes() {
        let p = Packet::Connect(Connect {
            protocol: Protocol::V311,
            clean_session: true,
            keep_alive: 10,
            client_id: "c".into(),
            will: None,
            username: Some("u".into()),
            password: Some(Bytes::from_static(&[0xff, 0x00, 0xfe])),
        });
        assert_eq!(round_trip(&p), p);
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
            (b"\x82\x06\x00\x01\x00\x01a\x04", DecodeError::Malformed("reserved bits in requested QoS")),
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

    #[test]
    fn size_limit_is_checked_before_the_body_arrives() {
        let mut buf = BytesMut::from(&b"\x30\x80\x80\x04"[..]);
        assert_eq!(decode(&mut buf, Protocol::V311, 1024), Err(DecodeError::PacketTooLarge { size: 65540, max: 1024 }));
    }
}
