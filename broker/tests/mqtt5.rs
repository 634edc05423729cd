//! MQTT 5 over the socket, byte for byte: CONNACK and its properties, properties passed through,
//! topic aliases, subscription options and identifiers, message and session expiry, flow control, reason
//! codes both ways, and how MQTT 5 and 3.1.1 clients meet.

mod helpers;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use helpers::*;
use midge_broker::protocol::*;
use midge_shared::control::Request;

const NODE: &str = "midge@127.0.0.1";

fn v5(client_id: &str) -> Connect {
    Connect { protocol: Protocol::V5, ..connect_packet(client_id, true) }
}

/// Connects at 5.0 and returns the connection and its CONNACK, asserting acceptance.
async fn connect5(broker: &TestBroker, connect: Connect) -> (Raw, Connack) {
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(connect)).await;
    match raw.recv().await {
        Some(Packet::Connack(c)) if c.reason == ReasonCode::Success => (raw, c),
        other => panic!("expected an accepting CONNACK, got {other:?}"),
    }
}

async fn connected5(broker: &TestBroker, client_id: &str) -> Raw {
    connect5(broker, v5(client_id)).await.0
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::qos(qos)
}

async fn subscribe5(raw: &mut Raw, pkid: u16, filters: &[(&str, SubscriptionOptions)]) -> Vec<SubackCode> {
    let filters = filters.iter().map(|(f, o)| (f.to_string(), *o)).collect();
    raw.send(&Packet::Subscribe(Subscribe { pkid, filters })).await;
    match raw.recv().await {
        Some(Packet::Suback(s)) if s.pkid == pkid => s.codes,
        other => panic!("expected SUBACK {pkid}, got {other:?}"),
    }
}

fn publish5(topic: &str, payload: &[u8], qos: QoS, pkid: u16, properties: PublishProperties) -> Packet {
    match publish(topic, payload, qos, pkid) {
        Packet::Publish(p) => Packet::Publish(Publish { properties: Some(Arc::new(properties)), ..p }),
        _ => unreachable!("publish builds a PUBLISH"),
    }
}

/// Expects the broker's DISCONNECT with `reason`, then the close.
async fn expect_disconnect(raw: &mut Raw, reason: ReasonCode) {
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason, "{d:?}"),
        other => panic!("expected DISCONNECT {reason:?}, got {other:?}"),
    }
    raw.expect_closed().await;
}

fn properties(publish: &Publish) -> PublishProperties {
    publish.properties.as_deref().cloned().unwrap_or_default()
}

#[tokio::test]
async fn connack_tells_the_limits_and_assigns_an_identifier() {
    let broker = start(Config { max_topic_alias: 7, max_awaiting_rel: 3, ..config() }).await;
    // 5.0 assigns an id even to a session that is to be kept.
    let connect = Connect {
        client_id: String::new(),
        clean_session: false,
        properties: Box::new(ConnectProperties { session_expiry_interval: Some(60), ..Default::default() }),
        ..v5("")
    };
    let (_raw, connack) = connect5(&broker, connect).await;
    assert!(!connack.session_present);
    let p = connack.properties;
    let assigned = p.assigned_client_identifier.expect("an assigned client identifier");
    assert!(assigned.starts_with("midge-"), "{assigned}");
    assert_eq!(p.topic_alias_maximum, Some(7));
    assert_eq!(p.receive_maximum, Some(3));
    assert_eq!(p.maximum_packet_size, Some(1024 * 1024));
    // Shared subscriptions, wildcards and subscription identifiers: available, as the defaults say.
    assert_eq!(p.shared_subscription_available, None);

    // A 3.1.1 client still gets its 3.1.1 CONNACK.
    let (_old, present) = Raw::connect(broker.addr, connect_packet("old", true)).await;
    assert!(!present);
    broker.stop().await;
}

#[tokio::test]
async fn properties_pass_through_and_levels_meet() {
    let broker = start_default().await;
    let mut sub5 = connected5(&broker, "sub5").await;
    let mut sub3 = Raw::connected(broker.addr, "sub3").await;
    assert_eq!(subscribe5(&mut sub5, 1, &[("t/#", options(QoS::AtLeastOnce))]).await, vec![Ok(QoS::AtLeastOnce)]);
    assert_eq!(sub3.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await, vec![Some(QoS::AtLeastOnce)]);

    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![("b".into(), "2".into()), ("a".into(), "1".into()), ("b".into(), "3".into())],
        ..Default::default()
    };
    let mut pub5 = connected5(&broker, "pub5").await;
    pub5.send(&publish5("t/1", b"hello", QoS::AtLeastOnce, 1, sent.clone())).await;
    assert_eq!(pub5.recv().await, Some(Packet::Puback(Ack::new(1))));

    // The 5.0 subscriber gets every property, user properties in their order.
    let got = sub5.recv_publish().await;
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(properties(&got), sent);
    // The 3.1.1 subscriber gets the message, and no properties (its wire has none).
    let got = sub3.recv_publish().await;
    assert_eq!(&got.payload[..], b"hello");

    // A 3.1.1 publisher's message reaches the 5.0 subscriber with no properties.
    let mut pub3 = Raw::connected(broker.addr, "pub3").await;
    pub3.send(&publish("t/2", b"plain", QoS::AtMostOnce, 0)).await;
    let got = sub5.recv_publish().await;
    assert_eq!((&got.payload[..], got.properties), (&b"plain"[..], None));
    broker.stop().await;
}

#[tokio::test]
async fn topic_aliases_from_the_client() {
    let broker = start(Config { max_topic_alias: 5, ..config() }).await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("alias/#", QoS::AtMostOnce)]).await;
    let mut client = connected5(&broker, "aliaser").await;
    let alias = |n| PublishProperties { topic_alias: Some(n), ..Default::default() };
    client.send(&publish5("alias/long/topic", b"1", QoS::AtMostOnce, 0, alias(5))).await;
    client.send(&publish5("", b"2", QoS::AtMostOnce, 0, alias(5))).await;
    for n in [b"1", b"2"] {
        let got = sub.recv_publish().await;
        assert_eq!((got.topic_str(), &got.payload[..]), ("alias/long/topic", &n[..]));
    }
    // An alias can be pointed elsewhere.
    client.send(&publish5("alias/other", b"3", QoS::AtMostOnce, 0, alias(5))).await;
    client.send(&publish5("", b"4", QoS::AtMostOnce, 0, alias(5))).await;
    for n in [b"3", b"4"] {
        let got = sub.recv_publish().await;
        assert_eq!((got.topic_str(), &got.payload[..]), ("alias/other", &n[..]));
    }

    // Alias 0, an alias over the maximum, and an alias never set up each end the connection.
    for (topic, n, reason) in [
        ("alias/x", 0, ReasonCode::TopicAliasInvalid),
        ("alias/x", 6, ReasonCode::TopicAliasInvalid),
        ("", 2, ReasonCode::ProtocolError),
    ] {
        let mut bad = connected5(&broker, "bad").await;
        bad.send(&publish5(topic, b"x", QoS::AtMostOnce, 0, alias(n))).await;
        expect_disconnect(&mut bad, reason).await;
    }
    // An empty topic without an alias is no topic at all.
    let mut bad = connected5(&broker, "bad").await;
    bad.send(&publish5("", b"x", QoS::AtMostOnce, 0, PublishProperties::default())).await;
    expect_disconnect(&mut bad, ReasonCode::TopicNameInvalid).await;
    sub.expect_silence(Duration::from_millis(200)).await;
    broker.stop().await;
}

#[tokio::test]
async fn no_local_and_retain_as_published() {
    let broker = start_default().await;
    let mut me = connected5(&broker, "me").await;
    let no_local = SubscriptionOptions { no_local: true, ..options(QoS::AtMostOnce) };
    let as_published = SubscriptionOptions { retain_as_published: true, ..options(QoS::AtMostOnce) };
    subscribe5(&mut me, 1, &[("nl/#", no_local), ("rap/#", as_published), ("plain/#", options(QoS::AtMostOnce))]).await;
    let mut other = connected5(&broker, "other").await;
    subscribe5(&mut other, 1, &[("nl/#", no_local)]).await;

    // Not back to its own publisher, but to everyone else.
    me.send(&publish("nl/1", b"mine", QoS::AtMostOnce, 0)).await;
    assert_eq!(&other.recv_publish().await.payload[..], b"mine");
    me.ping().await;
    // A live retained message keeps its flag only where asked for.
    other.send(&retained("rap/1", b"r", QoS::AtMostOnce, 0)).await;
    other.send(&retained("plain/1", b"p", QoS::AtMostOnce, 0)).await;
    let mut flags = vec![];
    for _ in 0..2 {
        let got = me.recv_publish().await;
        flags.push((got.topic_str().to_string(), got.retain));
    }
    flags.sort();
    assert_eq!(flags, vec![("plain/1".to_string(), false), ("rap/1".to_string(), true)]);
    broker.stop().await;
}

#[tokio::test]
async fn retain_handling() {
    let broker = start_default().await;
    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    publisher.send(&retained("rh/a", b"kept", QoS::AtMostOnce, 0)).await;
    publisher.ping().await;
    let mut client = connected5(&broker, "rh").await;
    let handling = |n| SubscriptionOptions { retain_handling: n, ..options(QoS::AtMostOnce) };
    // 2: never.
    subscribe5(&mut client, 1, &[("rh/#", handling(2))]).await;
    client.expect_silence(Duration::from_millis(200)).await;
    // 1: only for a new subscription, so not for this one, which exists.
    subscribe5(&mut client, 2, &[("rh/#", handling(1))]).await;
    client.expect_silence(Duration::from_millis(200)).await;
    // 1 on a new filter, and 0 on an existing one: sent each time.
    subscribe5(&mut client, 3, &[("rh/+", handling(1))]).await;
    assert!(client.recv_publish().await.retain);
    subscribe5(&mut client, 4, &[("rh/+", handling(0))]).await;
    assert!(client.recv_publish().await.retain);
    broker.stop().await;
}

#[tokio::test]
async fn subscription_identifiers_name_every_matching_subscription() {
    let broker = start_default().await;
    let mut client = connected5(&broker, "ids").await;
    let with_id = |id| SubscriptionOptions { id: NonZeroU32::new(id), ..options(QoS::AtLeastOnce) };
    subscribe5(&mut client, 1, &[("ids/#", with_id(7))]).await;
    subscribe5(&mut client, 2, &[("ids/+/x", with_id(300_000))]).await;
    subscribe5(&mut client, 3, &[("ids/a/+", options(QoS::AtMostOnce))]).await;
    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    publisher.send(&publish("ids/a/x", b"both", QoS::AtLeastOnce, 1)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(1))));
    let got = client.recv_publish().await;
    // Once, at the highest QoS, naming both identifiers.
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(properties(&got).subscription_identifiers, vec![7, 300_000]);
    client.send(&Packet::Puback(Ack::new(got.pkid))).await;
    publisher.send(&publish("ids/b", b"one", QoS::AtMostOnce, 0)).await;
    assert_eq!(properties(&client.recv_publish().await).subscription_identifiers, vec![7]);
    client.expect_silence(Duration::from_millis(200)).await;

    // A retained message sent on subscribe names that subscription.
    publisher.send(&retained("ids/r", b"r", QoS::AtMostOnce, 0)).await;
    let live = client.recv_publish().await;
    assert_eq!((live.retain, properties(&live).subscription_identifiers), (false, vec![7]));
    let mut late = connected5(&broker, "late").await;
    subscribe5(&mut late, 1, &[("ids/r", with_id(42))]).await;
    let got = late.recv_publish().await;
    assert!(got.retain);
    assert_eq!(properties(&got).subscription_identifiers, vec![42]);

    // A client may not send one.
    let ids = PublishProperties { subscription_identifiers: vec![1], ..Default::default() };
    client.send(&publish5("ids/x", b"x", QoS::AtMostOnce, 0, ids)).await;
    expect_disconnect(&mut client, ReasonCode::ProtocolError).await;
    broker.stop().await;
}

#[tokio::test]
async fn expired_messages_are_not_delivered_and_the_rest_carry_their_time_left() {
    let broker = start_default().await;
    let persistent = |id: &str| Connect {
        clean_session: false,
        properties: Box::new(ConnectProperties { session_expiry_interval: Some(300), ..Default::default() }),
        ..v5(id)
    };
    let (mut client, _) = connect5(&broker, persistent("away")).await;
    subscribe5(&mut client, 1, &[("exp/#", options(QoS::AtLeastOnce))]).await;
    client.disconnect().await;

    let mut publisher = connected5(&broker, "publisher").await;
    let expiring = |secs| PublishProperties { message_expiry_interval: Some(secs), ..Default::default() };
    publisher.send(&publish5("exp/short", b"short", QoS::AtLeastOnce, 1, expiring(1))).await;
    publisher.send(&publish5("exp/long", b"long", QoS::AtLeastOnce, 2, expiring(100))).await;
    for pkid in [1, 2] {
        assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(pkid))));
    }
    publisher
        .send(&Packet::Publish(Publish {
            retain: true,
            ..match publish5("exp/retained", b"ret", QoS::AtMostOnce, 0, expiring(1)) {
                Packet::Publish(p) => p,
                _ => unreachable!(),
            }
        }))
        .await;
    publisher.ping().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (mut client, connack) = connect5(&broker, persistent("away")).await;
    assert!(connack.session_present);
    let got = client.recv_publish().await;
    assert_eq!(&got.payload[..], b"long");
    let left = properties(&got).message_expiry_interval.expect("the time left");
    assert!((95..=98).contains(&left), "{left}");
    client.send(&Packet::Puback(Ack::new(got.pkid))).await;
    client.expect_silence(Duration::from_millis(200)).await;
    // An expired retained message is not sent to a new subscriber either.
    let mut late = connected5(&broker, "late").await;
    subscribe5(&mut late, 1, &[("exp/#", options(QoS::AtMostOnce))]).await;
    late.expect_silence(Duration::from_millis(200)).await;
    broker.stop().await;
}

#[tokio::test]
async fn session_expiry_is_the_clients_choice() {
    let broker = start_default().await;
    let with_expiry = |id: &str, secs: Option<u32>, clean| Connect {
        clean_session: clean,
        properties: Box::new(ConnectProperties { session_expiry_interval: secs, ..Default::default() }),
        ..v5(id)
    };
    // No expiry interval: the session ends with the connection, clean start or not.
    let (raw, _) = connect5(&broker, with_expiry("zero", None, false)).await;
    raw.disconnect().await;
    let (_raw, connack) = connect5(&broker, with_expiry("zero", None, false)).await;
    assert!(!connack.session_present);

    // Two seconds: kept for two seconds, then gone.
    let (raw, _) = connect5(&broker, with_expiry("two", Some(2), false)).await;
    raw.disconnect().await;
    let (raw, connack) = connect5(&broker, with_expiry("two", Some(2), false)).await;
    assert!(connack.session_present);
    raw.disconnect().await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (raw, connack) = connect5(&broker, with_expiry("two", Some(2), false)).await;
    assert!(!connack.session_present);

    // DISCONNECT may shorten it to nothing...
    let bye = Disconnect { session_expiry_interval: Some(0), ..Disconnect::new(ReasonCode::Success) };
    let mut raw = raw;
    raw.send(&Packet::Disconnect(bye)).await;
    raw.expect_closed().await;
    let (mut raw, connack) = connect5(&broker, with_expiry("two", Some(2), false)).await;
    assert!(!connack.session_present);
    // ... but not give one to a session that began without.
    raw.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
    let (mut raw, _) = connect5(&broker, with_expiry("none", None, true)).await;
    let bye = Disconnect { session_expiry_interval: Some(10), ..Disconnect::new(ReasonCode::Success) };
    raw.send(&Packet::Disconnect(bye)).await;
    expect_disconnect(&mut raw, ReasonCode::ProtocolError).await;
    broker.stop().await;
}

/// The router sweeps expired sessions about once a second; a client that comes back just after its
/// expiry must not find its session, whether or not the sweep has come by.
#[tokio::test]
async fn a_session_just_past_its_expiry_is_not_resumed_before_the_sweep() {
    let broker = start_default().await;
    let one_second = Connect {
        clean_session: false,
        properties: Box::new(ConnectProperties { session_expiry_interval: Some(1), ..Default::default() }),
        ..v5("just-past")
    };
    for _ in 0..3 {
        let (raw, _) = connect5(&broker, one_second.clone()).await;
        raw.disconnect().await;
        // A quarter of a second past it: the sweep (once a second) has come by only now and then.
        tokio::time::sleep(Duration::from_millis(1250)).await;
        let (raw, connack) = connect5(&broker, one_second.clone()).await;
        assert!(!connack.session_present, "resumed a session 250 ms past its expiry");
        raw.disconnect().await;
        // Let the session this connection made expire too, before the next round.
        tokio::time::sleep(Duration::from_millis(1250)).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn receive_maximum_and_maximum_packet_size_of_the_client() {
    let broker = start_default().await;
    let limits =
        Box::new(ConnectProperties { receive_maximum: Some(2), maximum_packet_size: Some(64), ..Default::default() });
    let (mut client, _) = connect5(&broker, Connect { properties: limits, ..v5("small") }).await;
    subscribe5(&mut client, 1, &[("flow/#", options(QoS::AtLeastOnce))]).await;
    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    for n in 1..=4u8 {
        publisher.send(&publish("flow/a", &[n], QoS::AtLeastOnce, n.into())).await;
    }
    // Too large for the client: dropped for it alone, and the rest flow on.
    publisher.send(&publish("flow/big", &[9; 100], QoS::AtLeastOnce, 9)).await;
    publisher.send(&publish("flow/a", &[5], QoS::AtLeastOnce, 5)).await;
    let first = client.recv_publish().await;
    let second = client.recv_publish().await;
    // Two in flight, as it allows, and no more until it acknowledges.
    client.expect_silence(Duration::from_millis(300)).await;
    let mut got = vec![first.payload[0], second.payload[0]];
    client.send(&Packet::Puback(Ack::new(first.pkid))).await;
    client.send(&Packet::Puback(Ack::new(second.pkid))).await;
    while got.len() < 5 {
        let p = client.recv_publish().await;
        got.push(p.payload[0]);
        client.send(&Packet::Puback(Ack::new(p.pkid))).await;
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    client.expect_silence(Duration::from_millis(200)).await;
    broker.stop().await;
}

#[tokio::test]
async fn the_brokers_receive_maximum_is_enforced() {
    let broker = start(Config { max_awaiting_rel: 2, ..config() }).await;
    let mut client = connected5(&broker, "eager").await;
    for n in 1..=2u16 {
        client.send(&publish("qos2", b"x", QoS::ExactlyOnce, n)).await;
        assert_eq!(client.recv().await, Some(Packet::Pubrec(Ack::new(n))));
    }
    client.send(&publish("qos2", b"x", QoS::ExactlyOnce, 3)).await;
    expect_disconnect(&mut client, ReasonCode::ReceiveMaximumExceeded).await;
    broker.stop().await;
}

#[tokio::test]
async fn acknowledgements_say_why() {
    let broker = start_default().await;
    let mut client = connected5(&broker, "acks").await;
    // A payload that says it is UTF-8 and is not.
    let utf8 = PublishProperties { payload_format_indicator: Some(1), ..Default::default() };
    client.send(&publish5("fmt", b"\xff\xfe", QoS::AtLeastOnce, 1, utf8.clone())).await;
    assert_eq!(client.recv().await, Some(Packet::Puback(Ack { pkid: 1, reason: ReasonCode::PayloadFormatInvalid })));
    client.send(&publish5("fmt", b"\xff\xfe", QoS::ExactlyOnce, 2, utf8)).await;
    assert_eq!(client.recv().await, Some(Packet::Pubrec(Ack { pkid: 2, reason: ReasonCode::PayloadFormatInvalid })));
    // SUBACK and UNSUBACK carry a reason per filter.
    let codes =
        subscribe5(&mut client, 3, &[("ok/#", options(QoS::ExactlyOnce)), ("bad/#/x", options(QoS::AtMostOnce))]).await;
    assert_eq!(codes, vec![Ok(QoS::ExactlyOnce), Err(ReasonCode::TopicFilterInvalid)]);
    client.send(&Packet::Unsubscribe(Unsubscribe { pkid: 4, filters: vec!["ok/#".into(), "never".into()] })).await;
    assert_eq!(
        client.recv().await,
        Some(Packet::Unsuback(Unsuback {
            pkid: 4,
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        }))
    );
    broker.stop().await;
}

#[tokio::test]
async fn the_broker_says_why_it_disconnects() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;

    let mut taken = connected5(&broker, "same").await;
    let _new = connected5(&broker, "same").await;
    expect_disconnect(&mut taken, ReasonCode::SessionTakenOver).await;

    let mut kicked = connected5(&broker, "kicked").await;
    let _: midge_shared::calls::Done = mgmt.ok(Request::Kick { client_id: "kicked".into() }).await;
    expect_disconnect(&mut kicked, ReasonCode::AdministrativeAction).await;

    let (mut sleepy, _) = connect5(&broker, Connect { keep_alive: 1, ..v5("sleepy") }).await;
    match sleepy.recv_within(Duration::from_secs(4)).await {
        Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason, ReasonCode::KeepAliveTimeout),
        other => panic!("expected DISCONNECT 0x8d, got {other:?}"),
    }

    // Malformed: two payload format indicators.
    let mut rude = connected5(&broker, "rude").await;
    rude.send_bytes(b"\x30\x09\x00\x01t\x04\x01\x00\x01\x00x").await;
    expect_disconnect(&mut rude, ReasonCode::ProtocolError).await;
    // A property that PUBLISH may not carry; the reason string says which.
    let mut rude = connected5(&broker, "rude").await;
    rude.send_bytes(b"\x30\x0a\x00\x01t\x05\x11\x00\x00\x00\x01x").await;
    match rude.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::MalformedPacket);
            assert_eq!(d.reason_string.as_deref(), Some("property 0x11 is not allowed in this packet"));
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }

    // A property block longer than its packet: malformed.
    let mut rude = connected5(&broker, "rude").await;
    rude.send_bytes(b"\x30\x05\x00\x01t\x09x").await;
    expect_disconnect(&mut rude, ReasonCode::MalformedPacket).await;

    // AUTH without a method in CONNECT.
    let mut auth = connected5(&broker, "auth").await;
    auth.send_bytes(b"\xf0\x00").await;
    expect_disconnect(&mut auth, ReasonCode::ProtocolError).await;

    let mut last = connected5(&broker, "last").await;
    drop(mgmt);
    broker.shutdown.cancel();
    expect_disconnect(&mut last, ReasonCode::ServerShuttingDown).await;
    broker.stop().await;
}

#[tokio::test]
async fn enhanced_authentication_is_refused_cleanly() {
    let broker = start_default().await;
    let mut raw = Raw::open(broker.addr).await;
    let method =
        Box::new(ConnectProperties { authentication_method: Some("SCRAM-SHA-1".into()), ..Default::default() });
    raw.send(&Packet::Connect(Connect { properties: method, ..v5("scram") })).await;
    match raw.recv().await {
        Some(Packet::Connack(c)) => assert_eq!(c.reason, ReasonCode::BadAuthenticationMethod),
        other => panic!("expected CONNACK 0x8c, got {other:?}"),
    }
    raw.expect_closed().await;
    broker.stop().await;
}

#[tokio::test]
async fn wills_keep_their_properties_and_disconnect_with_will_sends_them() {
    let broker = start_default().await;
    let mut watcher = connected5(&broker, "watcher").await;
    subscribe5(&mut watcher, 1, &[("wills/#", options(QoS::AtMostOnce))]).await;
    let will = LastWill {
        properties: Some(Arc::new(PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("why".into(), "asked".into())],
            ..Default::default()
        })),
        ..LastWill::new("wills/a", Bytes::from_static(b"gone"), QoS::AtMostOnce, false)
    };
    let (mut client, _) = connect5(&broker, Connect { will: Some(will), ..v5("willing") }).await;
    client.send(&Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill))).await;
    let got = watcher.recv_publish().await;
    assert_eq!((got.topic_str(), &got.payload[..]), ("wills/a", &b"gone"[..]));
    let p = properties(&got);
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.user_properties, vec![("why".to_string(), "asked".to_string())]);
    broker.stop().await;
}

/// A will with a delay waits for it, or for the end of its session if that comes first, and is dropped
/// if the client resumes its session meanwhile.
#[tokio::test]
async fn will_delay() {
    let broker = start_default().await;
    let mut watcher = connected5(&broker, "watcher").await;
    subscribe5(&mut watcher, 1, &[("delayed/#", options(QoS::AtMostOnce))]).await;
    let willing = |id: &str, delay: u32, expiry: u32| Connect {
        clean_session: false,
        will: Some(LastWill {
            delay_interval: delay,
            ..LastWill::new(format!("delayed/{id}"), Bytes::from_static(b"gone"), QoS::AtMostOnce, false)
        }),
        properties: Box::new(ConnectProperties { session_expiry_interval: Some(expiry), ..Default::default() }),
        ..v5(id)
    };
    let dropped = |raw: Raw| drop(raw.into_parts());

    // Delay 1 s, session 60 s: after the delay.
    let (raw, _) = connect5(&broker, willing("late", 1, 60)).await;
    let started = tokio::time::Instant::now();
    dropped(raw);
    let got = watcher.recv_publish().await;
    assert_eq!(got.topic_str(), "delayed/late");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());

    // Delay 60 s, session 1 s: when the session ends.
    let (raw, _) = connect5(&broker, willing("short", 60, 1)).await;
    dropped(raw);
    match watcher.recv_within(Duration::from_secs(4)).await {
        Ok(Some(Packet::Publish(p))) => assert_eq!(p.topic_str(), "delayed/short"),
        other => panic!("expected the will, got {other:?}"),
    }

    // Delay 2 s, and back within it: never.
    let (raw, _) = connect5(&broker, willing("back", 2, 60)).await;
    dropped(raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_back, connack) = connect5(&broker, Connect { will: None, ..willing("back", 2, 60) }).await;
    assert!(connack.session_present);
    watcher.expect_silence(Duration::from_millis(2500)).await;
    broker.stop().await;
}

#[tokio::test]
async fn server_keep_alive_and_response_information() {
    let config = Config { server_keepalive: 1, response_information: "replies/".into(), ..config() };
    let broker = start(config).await;
    let asking = Box::new(ConnectProperties { request_response_information: Some(true), ..Default::default() });
    let (mut raw, connack) = connect5(&broker, Connect { keep_alive: 600, properties: asking, ..v5("asks") }).await;
    assert_eq!(connack.properties.server_keep_alive, Some(1));
    assert_eq!(connack.properties.response_information.as_deref(), Some("replies/"));
    // Held to the server's keep-alive, not its own 600 s.
    match raw.recv_within(Duration::from_secs(4)).await {
        Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason, ReasonCode::KeepAliveTimeout),
        other => panic!("expected DISCONNECT 0x8d, got {other:?}"),
    }
    // Not asked, not given.
    let (_raw, connack) = connect5(&broker, v5("quiet")).await;
    assert_eq!(connack.properties.response_information, None);
    broker.stop().await;
}

#[tokio::test]
async fn topic_aliases_to_the_client() {
    let broker = start(Config { max_topic_alias_out: 2, ..config() }).await;
    let accepts = Box::new(ConnectProperties { topic_alias_maximum: Some(5), ..Default::default() });
    let (mut client, _) = connect5(&broker, Connect { properties: accepts, ..v5("aliased") }).await;
    subscribe5(&mut client, 1, &[("to/#", options(QoS::AtMostOnce))]).await;
    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    for topic in ["to/a", "to/b", "to/a", "to/c", "to/b", "to/c"] {
        publisher.send(&publish(topic, b"x", QoS::AtMostOnce, 0)).await;
    }
    let mut seen = Vec::new();
    for _ in 0..6 {
        let p = client.recv_publish().await;
        seen.push((p.topic_str().to_string(), properties(&p).topic_alias));
    }
    // Two aliases (the broker's limit, under the client's 5): set up with the topic, then used alone;
    // a third topic goes without.
    let expected = [("to/a", Some(1)), ("to/b", Some(2)), ("", Some(1)), ("to/c", None), ("", Some(2)), ("to/c", None)];
    assert_eq!(seen, expected.map(|(t, a)| (t.to_string(), a)));
    // A client that accepts none gets none.
    let (mut plain, _) = connect5(&broker, v5("plain")).await;
    subscribe5(&mut plain, 1, &[("to/#", options(QoS::AtMostOnce))]).await;
    publisher.send(&publish("to/a", b"x", QoS::AtMostOnce, 0)).await;
    let p = plain.recv_publish().await;
    assert_eq!((p.topic_str(), properties(&p).topic_alias), ("to/a", None));
    broker.stop().await;
}

/// A toy method for the exchange: the client says "hello", is challenged with a word, and must send it
/// back reversed.
struct Reverse;

struct ReverseExchange {
    challenged: bool,
}

impl midge_broker::auth::enhanced::Method for Reverse {
    fn name(&self) -> &str {
        "REVERSE"
    }

    fn start(&self) -> Box<dyn midge_broker::auth::enhanced::Exchange> {
        Box::new(ReverseExchange { challenged: false })
    }
}

impl midge_broker::auth::enhanced::Exchange for ReverseExchange {
    fn step(&mut self, data: Option<&[u8]>) -> midge_broker::auth::enhanced::Step {
        use midge_broker::auth::enhanced::Step;
        match (self.challenged, data) {
            (false, Some(b"hello")) => {
                self.challenged = true;
                Step::Continue(Bytes::from_static(b"midge"))
            }
            (true, Some(b"egdim")) => {
                Step::Done { username: Some("reverser".into()), data: Some(Bytes::from_static(b"welcome")) }
            }
            _ => Step::Refused,
        }
    }
}

fn auth(reason: ReasonCode, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        reason,
        authentication_method: Some("REVERSE".into()),
        authentication_data: Some(Bytes::from_static(data)),
        reason_string: None,
    })
}

#[tokio::test]
async fn an_enhanced_authentication_exchange() {
    let broker = start_prepared(config(), |b| b.auth_methods().register(Arc::new(Reverse))).await;
    let hello = || {
        let properties = ConnectProperties {
            authentication_method: Some("REVERSE".into()),
            authentication_data: Some(Bytes::from_static(b"hello")),
            ..Default::default()
        };
        Connect { properties: Box::new(properties), ..v5("reverser") }
    };

    // Challenge, answer, CONNACK with the method's last word.
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(hello())).await;
    assert_eq!(raw.recv().await, Some(auth(ReasonCode::ContinueAuthentication, b"midge")));
    raw.send(&auth(ReasonCode::ContinueAuthentication, b"egdim")).await;
    match raw.recv().await {
        Some(Packet::Connack(c)) => {
            assert_eq!(c.reason, ReasonCode::Success);
            assert_eq!(c.properties.authentication_method.as_deref(), Some("REVERSE"));
            assert_eq!(c.properties.authentication_data.as_deref(), Some(&b"welcome"[..]));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw.ping().await;

    // A wrong answer is refused; so is anything but AUTH in its place.
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(hello())).await;
    raw.recv().await;
    raw.send(&auth(ReasonCode::ContinueAuthentication, b"midge")).await;
    assert!(matches!(raw.recv().await, Some(Packet::Connack(c)) if c.reason == ReasonCode::NotAuthorized));
    raw.expect_closed().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(hello())).await;
    raw.recv().await;
    raw.send(&Packet::Pingreq).await;
    assert!(matches!(raw.recv().await, Some(Packet::Connack(c)) if c.reason == ReasonCode::ProtocolError));
    broker.stop().await;
}
