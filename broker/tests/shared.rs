//! Shared subscriptions over the socket: `$share/{group}/{filter}` for 3.1.1 and 5.0 clients alike,
//! EMQ's `$queue/` and `$local/`, the strategies, retained messages, a member leaving with messages it
//! had not taken, and how the API lists them.

mod helpers;

use std::collections::BTreeMap;
use std::time::Duration;

use helpers::*;
use midge_broker::protocol::*;
use midge_broker::router::shared::SharedStrategy;
use midge_shared::control::{Page, PageRequest, Request, RouteRow, SubscriptionRow};

const NODE: &str = "midge@127.0.0.1";

fn v5(client_id: &str) -> Connect {
    Connect { protocol: Protocol::V5, ..connect_packet(client_id, true) }
}

/// Reads QoS 0 messages until none comes for a while: payloads by who got them.
async fn drain(clients: &mut [(&str, &mut Raw)]) -> BTreeMap<String, Vec<u8>> {
    let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, raw) in clients.iter_mut() {
        while let Ok(Some(packet)) = raw.recv_within(Duration::from_millis(300)).await {
            match packet {
                Packet::Publish(p) => got.entry(name.to_string()).or_default().push(p.payload[0]),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    got
}

#[tokio::test]
async fn each_message_goes_to_one_member_in_turn() {
    let broker = start_default().await;
    let mut a = Raw::connected(broker.addr, "a").await;
    let (mut b, _) = Raw::connect(broker.addr, v5("b")).await;
    let mut c = Raw::connected(broker.addr, "c").await;
    let mut everyone = Raw::connected(broker.addr, "everyone").await;
    let mut alone = Raw::connected(broker.addr, "alone").await;
    for raw in [&mut a, &mut b, &mut c] {
        assert_eq!(raw.subscribe(1, &[("$share/workers/jobs/+", QoS::AtMostOnce)]).await, vec![Some(QoS::AtMostOnce)]);
    }
    everyone.subscribe(1, &[("jobs/#", QoS::AtMostOnce)]).await;
    alone.subscribe(1, &[("$share/other/jobs/+", QoS::AtMostOnce)]).await;

    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    for n in 0..9u8 {
        publisher.send(&publish("jobs/x", &[n], QoS::AtMostOnce, 0)).await;
    }
    let got =
        drain(&mut [("a", &mut a), ("b", &mut b), ("c", &mut c), ("everyone", &mut everyone), ("alone", &mut alone)])
            .await;
    // Round robin: three each, in turn; the group of one has them all, and so has a plain subscriber.
    assert_eq!(got["a"], vec![0, 3, 6]);
    assert_eq!(got["b"], vec![1, 4, 7]);
    assert_eq!(got["c"], vec![2, 5, 8]);
    assert_eq!(got["everyone"], (0..9).collect::<Vec<_>>());
    assert_eq!(got["alone"], (0..9).collect::<Vec<_>>());
    broker.stop().await;
}

#[tokio::test]
async fn queue_local_and_no_retained_messages() {
    let broker = start_default().await;
    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    publisher.send(&retained("q/kept", &[9], QoS::AtMostOnce, 0)).await;
    publisher.ping().await;
    let mut one = Raw::connected(broker.addr, "one").await;
    let mut two = Raw::connected(broker.addr, "two").await;
    let mut local = Raw::connected(broker.addr, "local").await;
    one.subscribe(1, &[("$queue/q/#", QoS::AtMostOnce)]).await;
    two.subscribe(1, &[("$queue/q/#", QoS::AtMostOnce)]).await;
    // A shared subscription gets no retained message; `$local/` is an ordinary subscription here.
    one.expect_silence(Duration::from_millis(200)).await;
    local.subscribe(1, &[("$local/q/#", QoS::AtMostOnce)]).await;
    assert_eq!(&local.recv_publish().await.payload[..], &[9]);
    for n in 0..4u8 {
        publisher.send(&publish("q/live", &[n], QoS::AtMostOnce, 0)).await;
    }
    let got = drain(&mut [("one", &mut one), ("two", &mut two), ("local", &mut local)]).await;
    assert_eq!((got["one"].len(), got["two"].len()), (2, 2));
    assert_eq!(got["local"], vec![0, 1, 2, 3]);

    // Unsubscribing takes the member out.
    two.send(&Packet::Unsubscribe(Unsubscribe { pkid: 2, filters: vec!["$queue/q/#".into()] })).await;
    assert!(matches!(two.recv().await, Some(Packet::Unsuback(_))));
    for n in 0..2u8 {
        publisher.send(&publish("q/live", &[n], QoS::AtMostOnce, 0)).await;
    }
    let got = drain(&mut [("one", &mut one), ("two", &mut two)]).await;
    assert_eq!(got["one"], vec![0, 1]);
    assert!(!got.contains_key("two"));
    broker.stop().await;
}

/// Sticky keeps to one member; when it leaves, what it had queued and what it had not acknowledged go
/// to the member still there.
#[tokio::test]
async fn a_leaving_members_messages_go_to_the_others() {
    let broker = start(Config { shared_subscription_strategy: SharedStrategy::Sticky, ..config() }).await;
    // A window of one, so the rest queue behind it.
    let small = Box::new(ConnectProperties { receive_maximum: Some(1), ..Default::default() });
    let (mut first, _) = Raw::connect(broker.addr, Connect { properties: small, ..v5("first") }).await;
    first.subscribe(1, &[("$share/g/work", QoS::AtLeastOnce)]).await;
    let mut second = Raw::connected(broker.addr, "second").await;
    second.subscribe(1, &[("$share/g/work", QoS::AtLeastOnce)]).await;

    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    publisher.publish_acked("work", 1..=4).await;
    // All to the first member, which takes the first and acknowledges nothing.
    assert_eq!(&first.recv_publish().await.payload[..], &[1]);
    first.expect_silence(Duration::from_millis(200)).await;
    second.expect_silence(Duration::from_millis(10)).await;
    drop(first);
    // The unacknowledged one (QoS 1 may come twice) and the three queued behind it.
    second.expect_acking(1..=4).await;
    second.expect_silence(Duration::from_millis(200)).await;
    // And the group is the second member's alone now.
    publisher.publish_acked("work", 5..=5).await;
    second.expect_acking(5..=5).await;
    broker.stop().await;
}

#[tokio::test]
async fn the_api_lists_shared_subscriptions_as_written() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut client = Raw::connected(broker.addr, "member").await;
    client.subscribe(1, &[("$share/g/a/+", QoS::AtLeastOnce), ("$queue/b", QoS::AtMostOnce)]).await;
    let subscriptions: Vec<SubscriptionRow> = mgmt.ok(Request::GetSubscriptions { client_id: "member".into() }).await;
    let mut topics: Vec<(String, u8)> = subscriptions.into_iter().map(|s| (s.topic, s.qos)).collect();
    topics.sort();
    assert_eq!(topics, vec![("$queue/b".to_string(), 0), ("$share/g/a/+".to_string(), 1)]);
    let routes: Page<RouteRow> = mgmt.ok(Request::ListRoutes(PageRequest { page: 1, size: 100 })).await;
    let mut topics: Vec<String> = routes.objects.into_iter().map(|r| r.topic).collect();
    topics.sort();
    assert_eq!(topics, vec!["$queue/b".to_string(), "$share/g/a/+".to_string()]);
    broker.stop().await;
}

#[tokio::test]
async fn shared_subscription_errors() {
    let broker = start_default().await;
    let mut client = Raw::connected(broker.addr, "bad").await;
    assert_eq!(
        client.subscribe(1, &[("$share/g", QoS::AtMostOnce), ("$share/+/t", QoS::AtMostOnce)]).await,
        vec![None, None]
    );
    // MQTT 5 forbids no local on a shared subscription.
    let (mut five, _) = Raw::connect(broker.addr, v5("five")).await;
    let options = SubscriptionOptions { no_local: true, ..SubscriptionOptions::qos(QoS::AtMostOnce) };
    five.send(&Packet::Subscribe(Subscribe { pkid: 1, filters: vec![("$share/g/t".into(), options)] })).await;
    match five.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ProtocolError),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    broker.stop().await;
}
