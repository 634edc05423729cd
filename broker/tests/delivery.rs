//! Message delivery over the real socket: QoS flows, inflight window, persistent sessions, retained
//! messages, topic rules, ACL and malformed input.

mod helpers;

use std::time::Duration;

use helpers::*;
use midge_broker::protocol::{self, *};

#[tokio::test]
async fn qos_0_1_2_in_both_directions() {
    let broker = start_default().await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    let codes =
        sub.subscribe(1, &[("t/0", QoS::AtMostOnce), ("t/1", QoS::AtLeastOnce), ("t/2", QoS::ExactlyOnce)]).await;
    assert_eq!(codes, vec![Some(QoS::AtMostOnce), Some(QoS::AtLeastOnce), Some(QoS::ExactlyOnce)]);
    let mut publisher = Raw::connected(broker.addr, "pub").await;

    publisher.send(&publish("t/0", b"zero", QoS::AtMostOnce, 0)).await;
    let p = sub.recv_publish().await;
    assert_eq!((p.qos, &p.payload[..], p.retain), (QoS::AtMostOnce, &b"zero"[..], false));

    publisher.send(&publish("t/1", b"one", QoS::AtLeastOnce, 10)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(10))));
    let p = sub.recv_publish().await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"one"[..]));
    sub.send(&Packet::Puback(Ack::new(p.pkid))).await;

    publisher.send(&publish("t/2", b"two", QoS::ExactlyOnce, 11)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(11))));
    publisher.send(&Packet::Pubrel(Ack::new(11))).await;
    assert_eq!(publisher.recv().await, Some(Packet::Pubcomp(Ack::new(11))));
    let p = sub.recv_publish().await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::ExactlyOnce, &b"two"[..]));
    sub.send(&Packet::Pubrec(Ack::new(p.pkid))).await;
    assert_eq!(sub.recv().await, Some(Packet::Pubrel(Ack::new(p.pkid))));
    sub.send(&Packet::Pubcomp(Ack::new(p.pkid))).await;
    sub.ping().await;

    // Delivered QoS is the lower of published and granted.
    publisher.send(&publish("t/0", b"down", QoS::ExactlyOnce, 12)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(12))));
    assert_eq!(sub.recv_publish().await.qos, QoS::AtMostOnce);
    broker.stop().await;
}

#[tokio::test]
async fn qos2_is_routed_exactly_once_despite_retransmission() {
    let broker = start_default().await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("x", QoS::AtMostOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&publish("x", b"once", QoS::ExactlyOnce, 7)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(7))));
    // The same packet again, with DUP, before PUBREL: acknowledged, not routed again.
    if let Packet::Publish(mut p) = publish("x", b"once", QoS::ExactlyOnce, 7) {
        p.dup = true;
        publisher.send(&Packet::Publish(p)).await;
    }
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(7))));
    publisher.send(&Packet::Pubrel(Ack::new(7))).await;
    assert_eq!(publisher.recv().await, Some(Packet::Pubcomp(Ack::new(7))));
    assert_eq!(&sub.recv_publish().await.payload[..], b"once");
    sub.expect_silence(Duration::from_millis(300)).await;
    // After PUBREL the id is free again: a new message with it is new.
    publisher.send(&publish("x", b"again", QoS::ExactlyOnce, 7)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(7))));
    assert_eq!(&sub.recv_publish().await.payload[..], b"again");
    broker.stop().await;
}

#[tokio::test]
async fn awaiting_rel_limit_drops_further_qos2() {
    let broker = start(Config { max_awaiting_rel: 2, ..config() }).await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("x", QoS::AtMostOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    for id in 1..=3u16 {
        publisher.send(&publish("x", &[id as u8], QoS::ExactlyOnce, id)).await;
    }
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(1))));
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(2))));
    publisher.ping().await; // no PUBREC for 3
    assert_eq!(&sub.recv_publish().await.payload[..], &[1]);
    assert_eq!(&sub.recv_publish().await.payload[..], &[2]);
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test]
async fn unacknowledged_pubrel_and_missed_acks_are_harmless() {
    let broker = start_default().await;
    let mut c = Raw::connected(broker.addr, "c").await;
    c.send(&Packet::Pubrel(Ack::new(99))).await;
    assert_eq!(c.recv().await, Some(Packet::Pubcomp(Ack::new(99))));
    c.send(&Packet::Puback(Ack::new(5))).await;
    c.send(&Packet::Pubrec(Ack::new(6))).await;
    c.send(&Packet::Pubcomp(Ack::new(7))).await;
    c.ping().await;
    broker.stop().await;
}

#[tokio::test]
async fn inflight_window_holds_the_rest_until_acked() {
    let broker = start(Config { max_inflight: 2, ..config() }).await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("w", QoS::AtLeastOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    for n in 1..=4u8 {
        publisher.send(&publish("w", &[n], QoS::AtLeastOnce, n as u16)).await;
    }
    let a = sub.recv_publish().await;
    let b = sub.recv_publish().await;
    assert_eq!((&a.payload[..], &b.payload[..]), (&[1u8][..], &[2u8][..]));
    assert_ne!(a.pkid, b.pkid);
    sub.expect_silence(Duration::from_millis(300)).await;
    sub.send(&Packet::Puback(Ack::new(a.pkid))).await;
    assert_eq!(&sub.recv_publish().await.payload[..], &[3]);
    sub.expect_silence(Duration::from_millis(200)).await;
    sub.send(&Packet::Puback(Ack::new(b.pkid))).await;
    assert_eq!(&sub.recv_publish().await.payload[..], &[4]);
    broker.stop().await;
}

/// A subscriber that stops acknowledging: QoS 1 messages past its window wait (and only the newest
/// `max_mqueue_len` of them are kept, as for an offline session), while QoS 0 messages and replies to
/// its own requests still reach it at once.
#[tokio::test]
async fn a_stalled_subscriber_keeps_the_newest_queued_and_still_gets_everything_else_at_once() {
    let broker = start(Config { max_inflight: 1, max_mqueue_len: 3, ..config() }).await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("w", QoS::AtLeastOnce), ("z", QoS::AtMostOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.publish_acked("w", 1..=10).await;
    let first = sub.recv_publish().await;
    assert_eq!(&first.payload[..], &[1]);
    sub.expect_silence(Duration::from_millis(200)).await;
    sub.send(&Packet::Puback(Ack::new(first.pkid))).await;
    let eighth = sub.recv_publish().await;
    assert_eq!(&eighth.payload[..], &[8], "the oldest queued were dropped");

    // Stalled again, with 9 and 10 queued.
    publisher.send(&publish("z", b"now", QoS::AtMostOnce, 0)).await;
    let within = Duration::from_millis(500);
    match sub.recv_within(within).await {
        Ok(Some(Packet::Publish(p))) => assert_eq!((&p.topic[..], &p.payload[..]), (&b"z"[..], &b"now"[..])),
        other => panic!("QoS 0 message held behind the full window: {other:?}"),
    }
    sub.send(&subscribe(2, &[("y", QoS::AtLeastOnce)])).await;
    assert!(matches!(sub.recv_within(within).await, Ok(Some(Packet::Suback(_)))), "SUBACK held back");

    sub.send(&Packet::Puback(Ack::new(eighth.pkid))).await;
    sub.expect_acking(9..=10).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_queues_and_redelivers_with_dup() {
    let broker = start_default().await;
    let (mut sub, present) = Raw::connect(broker.addr, connect_packet("durable", false)).await;
    assert!(!present);
    sub.subscribe(1, &[("d/#", QoS::AtLeastOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&publish("d/1", b"inflight", QoS::AtLeastOnce, 1)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(1))));
    let first = sub.recv_publish().await;
    assert!(!first.dup);
    // Gone without acknowledging.
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher.send(&publish("d/2", b"queued", QoS::AtLeastOnce, 2)).await;
    publisher.send(&publish("d/3", b"qos0", QoS::AtMostOnce, 0)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(2))));

    let (mut sub, present) = Raw::connect(broker.addr, connect_packet("durable", false)).await;
    assert!(present);
    let again = sub.recv_publish().await;
    assert!(again.dup, "redelivery carries DUP");
    assert_eq!((again.pkid, &again.payload[..]), (first.pkid, &b"inflight"[..]));
    let queued = sub.recv_publish().await;
    assert_eq!((&queued.payload[..], queued.dup), (&b"queued"[..], false));
    let qos0 = sub.recv_publish().await;
    assert_eq!((&qos0.payload[..], qos0.qos), (&b"qos0"[..], QoS::AtMostOnce));
    sub.send(&Packet::Puback(Ack::new(again.pkid))).await;
    sub.send(&Packet::Puback(Ack::new(queued.pkid))).await;
    sub.disconnect().await;

    // A clean session discards it all.
    let (mut clean, present) = Raw::connect(broker.addr, connect_packet("durable", true)).await;
    assert!(!present);
    publisher.send(&publish("d/4", b"nobody", QoS::AtLeastOnce, 4)).await;
    clean.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test]
async fn offline_queue_is_bounded_and_qos0_can_be_left_out() {
    let broker = start(Config { max_mqueue_len: 3, mqueue_store_qos0: false, ..config() }).await;
    let (mut sub, _) = Raw::connect(broker.addr, connect_packet("q", false)).await;
    sub.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&publish("q", b"zero", QoS::AtMostOnce, 0)).await;
    publisher.publish_acked("q", 1..=5).await;
    let (mut sub, present) = Raw::connect(broker.addr, connect_packet("q", false)).await;
    assert!(present);
    // The oldest were dropped; the QoS 0 message was never queued.
    sub.expect_acking(3..=5).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test]
async fn session_moves_to_the_new_connection_on_takeover() {
    let broker = start_default().await;
    let (mut first, _) = Raw::connect(broker.addr, connect_packet("mover", false)).await;
    first.subscribe(1, &[("m", QoS::AtLeastOnce)]).await;
    let (mut second, present) = Raw::connect(broker.addr, connect_packet("mover", false)).await;
    assert!(present);
    first.expect_closed().await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&publish("m", b"to-second", QoS::AtLeastOnce, 1)).await;
    assert_eq!(&second.recv_publish().await.payload[..], b"to-second");
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages() {
    let broker = start_default().await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&retained("r/a", b"first", QoS::AtMostOnce, 0)).await;
    publisher.send(&retained("r/a", b"second", QoS::AtMostOnce, 0)).await;
    publisher.send(&retained("r/b", b"bee", QoS::AtLeastOnce, 1)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(1))));

    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("r/+", QoS::AtLeastOnce)]).await;
    let mut got = [sub.recv_publish().await, sub.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert!(got.iter().all(|p| p.retain));
    assert_eq!(&got[0].payload[..], b"second", "a retained message is replaced");
    assert_eq!((got[0].qos, got[1].qos), (QoS::AtMostOnce, QoS::AtLeastOnce));
    sub.send(&Packet::Puback(Ack::new(got[1].pkid))).await;

    // Normal forwarding clears the retain flag.
    publisher.send(&retained("r/a", b"live", QoS::AtMostOnce, 0)).await;
    let live = sub.recv_publish().await;
    assert_eq!((&live.payload[..], live.retain), (&b"live"[..], false));

    // An empty retained payload deletes it (and is forwarded as usual).
    publisher.send(&retained("r/a", b"", QoS::AtMostOnce, 0)).await;
    assert!(sub.recv_publish().await.payload.is_empty());
    let mut late = Raw::connected(broker.addr, "late").await;
    late.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    let only = late.recv_publish().await;
    assert_eq!(&only.topic[..], b"r/b");
    late.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let broker = start_default().await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("a/#", QoS::AtMostOnce), ("a/+", QoS::ExactlyOnce), ("a/b", QoS::AtLeastOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&publish("a/b", b"x", QoS::ExactlyOnce, 1)).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test]
async fn topic_rules() {
    let broker = start_default().await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    let codes = sub
        .subscribe(
            1,
            &[("#", QoS::AtMostOnce), ("a/#/b", QoS::AtMostOnce), ("+/x", QoS::AtMostOnce), ("a+", QoS::AtMostOnce)],
        )
        .await;
    assert_eq!(codes, vec![Some(QoS::AtMostOnce), None, Some(QoS::AtMostOnce), None]);
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    // `#` and `+` at the root do not match `$` topics.
    publisher.send(&publish("$x/x", b"dollar", QoS::AtMostOnce, 0)).await;
    publisher.send(&publish("/x", b"empty-first-level", QoS::AtMostOnce, 0)).await;
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"empty-first-level");
    sub.expect_silence(Duration::from_millis(200)).await;

    // Unsubscribe stops delivery.
    sub.send(&Packet::Unsubscribe(Unsubscribe { pkid: 2, filters: vec!["#".into(), "+/x".into()] })).await;
    assert_eq!(sub.recv().await, Some(Packet::Unsuback(Unsuback::new(2))));
    publisher.send(&publish("/x", b"after", QoS::AtMostOnce, 0)).await;
    sub.expect_silence(Duration::from_millis(200)).await;

    // A wildcard in a PUBLISH topic closes that connection.
    publisher.send(&publish("a/+", b"bad", QoS::AtMostOnce, 0)).await;
    publisher.expect_closed().await;
    broker.stop().await;
}

#[tokio::test]
async fn acl_refuses_subscriptions_with_0x80_and_drops_denied_publishes() {
    let dir = tempdir();
    let acl = dir.join("acl.conf");
    std::fs::write(
        &acl,
        r#"{deny, all, subscribe, ["secret/#"]}.
           {deny, {client, "spy"}, publish, ["open/%c/#"]}.
           {allow, all}."#,
    )
    .unwrap();
    let broker = start(Config { acl_file: Some(acl), ..config() }).await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    let codes = sub.subscribe(1, &[("secret/x", QoS::AtMostOnce), ("open/#", QoS::AtLeastOnce)]).await;
    assert_eq!(codes, vec![None, Some(QoS::AtLeastOnce)]);
    let mut spy = Raw::connected(broker.addr, "spy").await;
    spy.send(&publish("open/spy/1", b"denied", QoS::AtLeastOnce, 1)).await;
    assert_eq!(spy.recv().await, Some(Packet::Puback(Ack::new(1))), "denied publishes are still acknowledged");
    spy.send(&publish("open/other", b"allowed", QoS::AtMostOnce, 0)).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"allowed");
    sub.expect_silence(Duration::from_millis(200)).await;
    broker.stop().await;
}

#[tokio::test]
async fn default_acl_lets_localhost_read_sys() {
    let broker = start_default().await;
    let mut sub = Raw::connected(broker.addr, "local").await;
    let codes = sub.subscribe(1, &[("$SYS/#", QoS::AtMostOnce), ("#", QoS::AtMostOnce)]).await;
    assert_eq!(codes, vec![Some(QoS::AtMostOnce), Some(QoS::AtMostOnce)]);
    broker.stop().await;
}

#[tokio::test]
async fn oversized_and_malformed_packets_close_only_their_connection() {
    let broker = start(Config { max_packet_size: 1024, ..config() }).await;
    let mut bystander = Raw::connected(broker.addr, "bystander").await;
    bystander.subscribe(1, &[("big", QoS::AtMostOnce)]).await;

    let mut big = Raw::connected(broker.addr, "big").await;
    big.send(&publish("big", &[0u8; 2000], QoS::AtMostOnce, 0)).await;
    big.expect_closed().await;

    let garbage: [&[u8]; 4] = [
        b"\x30\xff\xff\xff\xff\x01",  // remaining length too long
        b"\x30\x04\x00\x05ab",        // topic runs past the packet
        b"\x60\x02\x00\x01",          // PUBREL with wrong flags
        b"\x82\x05\x00\x01\x00\x01a", // SUBSCRIBE missing its QoS byte
    ];
    for bytes in garbage {
        let mut raw = Raw::connected(broker.addr, "garbage").await;
        raw.send_bytes(bytes).await;
        raw.expect_closed().await;
    }
    // The broker is fine and still delivering.
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&publish("big", &[1u8; 900], QoS::AtMostOnce, 0)).await;
    assert_eq!(bystander.recv_publish().await.payload.len(), 900);
    broker.stop().await;
}

#[tokio::test]
async fn rumqttc_client_round_trip() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS as RQoS};
    let broker = start_default().await;
    let mut options = MqttOptions::new("rumqttc-test", "127.0.0.1", broker.addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe("hello/+", RQoS::ExactlyOnce).await.unwrap();
    let mut published = false;
    let received = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await.expect("event loop runs") {
                Event::Incoming(RPacket::SubAck(_)) if !published => {
                    published = true;
                    client.publish("hello/world", RQoS::ExactlyOnce, false, "hi").await.unwrap();
                }
                Event::Incoming(RPacket::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message arrives");
    assert_eq!((received.topic.as_str(), &received.payload[..]), ("hello/world", &b"hi"[..]));
    assert_eq!(received.qos, RQoS::ExactlyOnce);
    broker.stop().await;
}

#[tokio::test]
async fn publishes_and_disconnect_in_one_write_are_all_delivered_in_order() {
    let broker = start_default().await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("batch/#", QoS::AtMostOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    let mut bytes = bytes::BytesMut::new();
    for n in 0..50u8 {
        midge_broker::protocol::encode(
            &publish(&format!("batch/{}", n % 3), &[n], QoS::AtMostOnce, 0),
            Protocol::V311,
            &mut bytes,
        );
    }
    midge_broker::protocol::encode(
        &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        Protocol::V311,
        &mut bytes,
    );
    publisher.send_bytes(&bytes).await;
    for n in 0..50u8 {
        assert_eq!(&sub.recv_publish().await.payload[..], &[n]);
    }
    broker.stop().await;
}

#[tokio::test]
async fn offline_sessions_expire_after_the_expiry_interval() {
    let broker = start(Config { session_expiry_interval: 1, ..config() }).await;
    let (mut sub, _) = Raw::connect(broker.addr, connect_packet("short-lived", false)).await;
    sub.subscribe(1, &[("expiry/#", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    // Within the interval the session is still there...
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sub, present) = Raw::connect(broker.addr, connect_packet("short-lived", false)).await;
    assert!(present);
    sub.disconnect().await;
    // ...after it, it is gone, subscriptions and all.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (mut sub, present) = Raw::connect(broker.addr, connect_packet("short-lived", false)).await;
    assert!(!present);
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&publish("expiry/x", b"nobody", QoS::AtMostOnce, 0)).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

/// Sessions parked together are filed together (router/expiries.rs): resuming some of them moves the
/// others within their second's list, and each still expires on time, none early, none kept.
#[tokio::test]
async fn sessions_parked_together_expire_on_time_when_some_resume_between() {
    let broker = start(Config { session_expiry_interval: 1, ..config() }).await;
    let ids: Vec<String> = (0..6).map(|i| format!("together-{i}")).collect();
    for id in &ids {
        let (mut sub, _) = Raw::connect(broker.addr, connect_packet(id, false)).await;
        sub.subscribe(1, &[(&format!("together/{id}"), QoS::AtLeastOnce)]).await;
        sub.disconnect().await;
    }
    // Some resume (from the middle and the end of the list) and go again: parked anew.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in [&ids[1], &ids[5], &ids[2]] {
        let (sub, present) = Raw::connect(broker.addr, connect_packet(id, false)).await;
        assert!(present, "{id} expired early");
        sub.disconnect().await;
    }
    // One resumes and stays: never expired while connected.
    let (_stays, present) = Raw::connect(broker.addr, connect_packet(&ids[3], false)).await;
    assert!(present, "{} expired early", ids[3]);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for id in [&ids[0], &ids[1], &ids[2], &ids[4], &ids[5]] {
        let (sub, present) = Raw::connect(broker.addr, connect_packet(id, false)).await;
        assert!(!present, "{id} outlived its expiry");
        sub.disconnect().await;
    }
    let (_again, present) = Raw::connect(broker.addr, connect_packet(&ids[3], false)).await;
    assert!(present, "the connected session was expired");
    broker.stop().await;
}

/// Publishers that are each other's subscribers, all at full speed. A publisher that woke an idle
/// subscriber waits for that subscriber's turn before it writes its acknowledgements or reads on (the
/// hand-off in router/outbox.rs); in a ring of such clients, and with a client subscribed to its own
/// topic, no one may end up waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publishers_subscribed_to_each_other_all_finish() {
    // Queues long enough that nothing is dropped, so every message can be counted.
    ring(QoS::AtLeastOnce, 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_publishers_subscribed_to_each_other_all_finish() {
    ring(QoS::AtMostOnce, 100_000).await;
}

/// The same with short queues, so that each member's backlog holds up its publishers (router/outbox.rs):
/// members waiting for each other's room, and for their own, would each wait out `STUCK_AFTER` again
/// and again. A member that waits is not waited for, and no one waits for itself; some messages are
/// dropped at the full queues of a ring, and every publish is acknowledged, quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publishers_subscribed_to_each_other_with_short_queues_do_not_wait_for_each_other() {
    let started = std::time::Instant::now();
    ring(QoS::AtLeastOnce, 100).await;
    // Well under a second here; waiting for each other, they took 5-6 s of one-second waits.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

/// `max_mqueue_len` under 100,000 lets the broker drop: then each member counts what it receives
/// rather than expecting all of it.
async fn ring(qos: QoS, max_mqueue_len: usize) {
    const CLIENTS: usize = 4;
    const EACH: u32 = 2000;
    let lossless = max_mqueue_len >= 100_000;
    let broker = start(Config { max_mqueue_len, max_inflight: 10, ..config() }).await;
    let mut members = Vec::new();
    for i in 0..CLIENTS {
        let mut raw = Raw::connected(broker.addr, &format!("ring-{i}")).await;
        let next = format!("ring/{}", (i + 1) % CLIENTS);
        let own = format!("ring/{i}");
        let codes = raw.subscribe(1, &[(next.as_str(), qos), (own.as_str(), qos)]).await;
        assert_eq!(codes, vec![Some(qos); 2]);
        members.push(raw);
    }
    let runs: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, raw)| tokio::spawn(ring_member(raw, format!("ring/{i}"), qos, EACH, lossless)))
        .collect();
    let acks = if qos == QoS::AtMostOnce { 0 } else { EACH };
    for run in runs {
        let (acked, received) =
            tokio::time::timeout(Duration::from_secs(30), run).await.expect("no client waits for ever").unwrap();
        assert_eq!(acked, acks);
        match lossless {
            true => assert_eq!(received, 2 * EACH),
            false => assert!(received > 0 && received <= 2 * EACH, "{received}"),
        }
    }
    broker.stop().await;
}

/// Publishes `count` messages to `topic` in bursts while acknowledging everything it receives (at QoS
/// 1); returns (PUBACKs received, publishes received) once it has all it expects of both (or, unless
/// `lossless`, all its PUBACKs and nothing more comes for a while).
async fn ring_member(raw: Raw, topic: String, qos: QoS, count: u32, lossless: bool) -> (u32, u32) {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (stream, mut rbuf) = raw.into_parts();
    let (mut reader, mut writer) = stream.into_split();
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel::<u16>();
    let write = tokio::spawn(async move {
        let (mut sent, mut wbuf) = (0u32, BytesMut::new());
        loop {
            while let Ok(pkid) = acks_rx.try_recv() {
                protocol::encode(&Packet::Puback(Ack::new(pkid)), Protocol::V311, &mut wbuf);
            }
            for _ in 0..50 {
                if sent == count {
                    break;
                }
                sent += 1;
                protocol::encode(&publish(&topic, &sent.to_be_bytes(), qos, sent as u16), Protocol::V311, &mut wbuf);
            }
            if wbuf.is_empty() {
                match acks_rx.recv().await {
                    Some(pkid) => protocol::encode(&Packet::Puback(Ack::new(pkid)), Protocol::V311, &mut wbuf),
                    None => return,
                }
            }
            writer.write_all(&wbuf).await.expect("write");
            wbuf.clear();
        }
    });
    let acks = if qos == QoS::AtMostOnce { 0 } else { count };
    let (mut acked, mut received) = (0, 0);
    while acked < acks || received < 2 * count {
        match protocol::decode(&mut rbuf, Protocol::V311, usize::MAX).expect("valid packets") {
            Some(Packet::Puback(_)) => acked += 1,
            Some(Packet::Publish(p)) => {
                received += 1;
                if p.qos == QoS::AtLeastOnce {
                    acks_tx.send(p.pkid).expect("writer alive");
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None if !lossless && acked == acks => {
                match tokio::time::timeout(Duration::from_millis(300), reader.read_buf(&mut rbuf)).await {
                    Ok(read) => assert!(read.expect("read") > 0, "broker closed the connection"),
                    Err(_) => break,
                }
            }
            None => assert!(reader.read_buf(&mut rbuf).await.expect("read") > 0, "broker closed the connection"),
        }
    }
    drop(acks_tx);
    write.await.expect("writer");
    (acked, received)
}

/// Lone QoS 0 messages are written straight to a waiting subscriber's socket by the publisher's task,
/// everything else through the subscriber's own connection (router/outbox.rs). Here the subscriber
/// stops reading, so its socket fills up mid-packet and the two paths take turns; whatever path each
/// message took, every one must arrive whole and in its publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_and_batched_messages_keep_order_and_framing_when_a_subscriber_falls_behind() {
    // 12 MB in all, more than the kernel buffers between broker and subscriber hold.
    const EACH: u32 = 300;
    const FILLER: usize = 20_001;
    let broker = start_default().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut sub = Raw::from_stream(socket.connect(broker.addr).await.unwrap());
    sub.send(&Packet::Connect(connect_packet("slow-sub", true))).await;
    assert!(matches!(sub.recv().await, Some(Packet::Connack(_))));
    sub.subscribe(1, &[("lone/#", QoS::AtMostOnce)]).await;

    let publishers: Vec<_> = (0..2u8)
        .map(|id| {
            let addr = broker.addr;
            tokio::spawn(async move {
                let mut publisher = Raw::connected(addr, &format!("pub-{id}")).await;
                let message = |seq: u32| {
                    let mut payload = vec![id; FILLER];
                    payload[..4].copy_from_slice(&seq.to_be_bytes());
                    publish(&format!("lone/{id}"), &payload, QoS::AtMostOnce, 0)
                };
                let mut seq = 0;
                while seq < EACH {
                    if seq % 50 == 25 {
                        // A burst in one write: routed as a batch, queued.
                        let mut bytes = bytes::BytesMut::new();
                        for _ in 0..5 {
                            protocol::encode(&message(seq), Protocol::V311, &mut bytes);
                            seq += 1;
                        }
                        publisher.send_bytes(&bytes).await;
                    } else {
                        // Alone in its read: the broker has handled it before the PINGRESP.
                        publisher.send(&message(seq)).await;
                        seq += 1;
                    }
                    publisher.ping().await;
                }
                publisher.disconnect().await;
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }

    let mut next = [0u32; 2];
    while next != [EACH; 2] {
        let p = sub.recv_publish().await;
        let id = p.payload[FILLER - 1];
        let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
        assert_eq!(p.topic_str(), format!("lone/{id}"));
        assert_eq!(seq, next[id as usize], "publisher {id}'s messages in order");
        assert!(p.payload[4..].iter().all(|&b| b == id), "payload intact");
        next[id as usize] += 1;
    }
    broker.stop().await;
}

/// Writes `count` QoS 1 publishes to `topic` (payload: their number) as fast as the broker takes
/// them, never waiting for an acknowledgement, then reads PUBACKs until it has `count`. Returns how
/// long all that took.
async fn flood(addr: std::net::SocketAddr, client_id: &str, topic: &str, count: u32) -> Duration {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let (stream, mut rbuf) = Raw::connected(addr, client_id).await.into_parts();
    let (mut reader, mut writer) = stream.into_split();
    let mut wbuf = BytesMut::new();
    for n in 1..=count {
        let pkid = (n % u16::MAX as u32) as u16 + 1;
        protocol::encode(&publish(topic, &n.to_be_bytes(), QoS::AtLeastOnce, pkid), Protocol::V311, &mut wbuf);
    }
    // Written while the acknowledgements are read: a broker that stops reading this socket must not
    // stop this client reading its PUBACKs.
    let write = tokio::spawn(async move {
        writer.write_all(&wbuf).await.expect("write");
        writer
    });
    let mut acked = 0;
    while acked < count {
        match protocol::decode(&mut rbuf, Protocol::V311, usize::MAX).expect("valid packets") {
            Some(Packet::Puback(_)) => acked += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => assert!(reader.read_buf(&mut rbuf).await.expect("read") > 0, "broker closed the connection"),
        }
    }
    drop(write.await.expect("writer"));
    started.elapsed()
}

/// Reads publishes and acknowledges each, pausing `pause` after every 20, until it has `count`;
/// returns their payloads by topic, in the order they came.
async fn acknowledging(raw: Raw, count: usize, pause: Duration) -> std::collections::BTreeMap<String, Vec<u32>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (stream, mut rbuf) = raw.into_parts();
    let (mut reader, mut writer) = stream.into_split();
    let mut got = std::collections::BTreeMap::<String, Vec<u32>>::new();
    let mut received = 0;
    while received < count {
        match protocol::decode(&mut rbuf, Protocol::V311, usize::MAX).expect("valid packets") {
            Some(Packet::Publish(p)) => {
                received += 1;
                let n = u32::from_be_bytes(p.payload[..].try_into().expect("a number"));
                got.entry(String::from_utf8_lossy(&p.topic).into_owned()).or_default().push(n);
                let mut ack = bytes::BytesMut::new();
                protocol::encode(&Packet::Puback(Ack::new(p.pkid)), Protocol::V311, &mut ack);
                writer.write_all(&ack).await.expect("write");
                if received % 20 == 0 {
                    tokio::time::sleep(pause).await;
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => assert!(reader.read_buf(&mut rbuf).await.expect("read") > 0, "broker closed the connection"),
        }
    }
    got
}

/// Publishers that flood a QoS 1 subscriber slower than they are: rather than acknowledge what the
/// subscriber's queue (100 here) cannot hold and drop it, the broker stops reading them while the
/// subscriber's backlog is high (router/outbox.rs), so every message acknowledged arrives, in each
/// publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_publishers_wait_for_a_slow_subscriber_and_lose_nothing() {
    const EACH: u32 = 2_000;
    let broker = start(Config { max_inflight: 10, max_mqueue_len: 100, ..config() }).await;
    let mut sub = Raw::connected(broker.addr, "slow").await;
    sub.subscribe(1, &[("flood/+", QoS::AtLeastOnce)]).await;
    let subscriber = tokio::spawn(acknowledging(sub, 2 * EACH as usize, Duration::from_millis(2)));
    let addr = broker.addr;
    let publishers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(async move { flood(addr, &format!("flood-{i}"), &format!("flood/{i}"), EACH).await }))
        .collect();
    for publisher in publishers {
        tokio::time::timeout(Duration::from_secs(30), publisher).await.expect("every publish acknowledged").unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(30), subscriber)
        .await
        .expect("every acknowledged message delivered")
        .unwrap();
    let all: Vec<u32> = (1..=EACH).collect();
    assert_eq!(got.get("flood/0"), Some(&all));
    assert_eq!(got.get("flood/1"), Some(&all));
    broker.stop().await;
}

/// A subscriber that stops acknowledging is not waited for long: its publisher is held up for about
/// a second (router/outbox.rs, `STUCK_AFTER`), then its queue's drop-oldest rule applies to it alone,
/// and another subscriber of the same topic gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_acknowledging_holds_its_publishers_up_only_briefly() {
    const COUNT: u32 = 2_000;
    let broker = start(Config { max_inflight: 10, max_mqueue_len: 100, ..config() }).await;
    let mut stuck = Raw::connected(broker.addr, "stuck").await;
    stuck.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let mut healthy = Raw::connected(broker.addr, "healthy").await;
    healthy.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let subscriber = tokio::spawn(acknowledging(healthy, COUNT as usize, Duration::ZERO));
    let took = tokio::time::timeout(Duration::from_secs(10), flood(broker.addr, "publisher", "t", COUNT))
        .await
        .expect("the publisher is not held up for ever");
    let got = tokio::time::timeout(Duration::from_secs(10), subscriber).await.expect("all delivered").unwrap();
    assert_eq!(got.get("t"), Some(&(1..=COUNT).collect::<Vec<_>>()));
    assert!(took >= Duration::from_millis(900), "the publisher waited for the stuck subscriber first: {took:?}");
    let first = stuck.recv_publish().await;
    assert_eq!(&first.payload[..], &1u32.to_be_bytes());
    drop(stuck);
    broker.stop().await;
}

/// Publishes held back by a congested subscriber still go before a SUBSCRIBE read behind them: a
/// client that publishes and then subscribes to the same topic in one write gets none of its own
/// earlier messages back.
#[tokio::test]
async fn publishes_held_for_room_still_go_before_a_subscribe_behind_them() {
    let broker = start(Config { max_inflight: 1, max_mqueue_len: 8, ..config() }).await;
    let mut stuck = Raw::connected(broker.addr, "stuck").await;
    stuck.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let mut client = Raw::connected(broker.addr, "client").await;
    let mut bytes = bytes::BytesMut::new();
    for n in 1..=20u16 {
        protocol::encode(&publish("t", &n.to_be_bytes(), QoS::AtLeastOnce, n), Protocol::V311, &mut bytes);
    }
    protocol::encode(&subscribe(100, &[("t", QoS::AtLeastOnce)]), Protocol::V311, &mut bytes);
    client.send_bytes(&bytes).await;
    let (mut acks, mut subacked) = (0, false);
    while acks < 20 || !subacked {
        match client.recv_within(WAIT).await {
            Ok(Some(Packet::Puback(_))) => acks += 1,
            Ok(Some(Packet::Suback(_))) => subacked = true,
            other => panic!("expected PUBACKs and a SUBACK, got {other:?}"),
        }
    }
    client.expect_silence(Duration::from_millis(300)).await;
    drop(stuck);
    broker.stop().await;
}
