//! The `$SYS` tree and the counters behind it, observed through the real socket.

mod helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use helpers::*;
use midge_broker::protocol::*;
use midge_shared::control::Request;
use midge_shared::sys::{ClientConnected, ClientDisconnected, Metric, Stat};

const NODE: &str = "midge@127.0.0.1";

#[tokio::test]
async fn sys_subscriber_sees_every_key() {
    let broker = start(Config { sys_interval: 1, ..config() }).await;
    let mut sys = Raw::connected(broker.addr, "sys-reader").await;
    sys.subscribe(1, &[("$SYS/brokers/+/#", QoS::AtMostOnce), ("$SYS/brokers", QoS::AtMostOnce)]).await;

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(Packet::Publish(p))) = sys.recv_within(Duration::from_millis(200)).await {
            seen.insert(p.topic_str().to_string(), String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    let prefix = format!("$SYS/brokers/{NODE}/");
    assert_eq!(seen.get("$SYS/brokers").map(String::as_str), Some(NODE));
    assert_eq!(seen[&format!("{prefix}version")], env!("CARGO_PKG_VERSION"));
    assert_eq!(seen[&format!("{prefix}sysdescr")], "Midge MQTT Broker");
    assert!(seen[&format!("{prefix}uptime")].ends_with(" seconds"));
    let datetime = &seen[&format!("{prefix}datetime")];
    assert!(chrono::NaiveDateTime::parse_from_str(datetime, "%Y-%m-%d %H:%M:%S").is_ok(), "{datetime}");
    for stat in Stat::ALL {
        for suffix in ["count", "max"] {
            let key = format!("{prefix}stats/{}/{suffix}", stat.name());
            assert!(seen.get(&key).is_some_and(|v| v.parse::<u64>().is_ok()), "missing {key}");
        }
    }
    for metric in Metric::ALL {
        let key = format!("{prefix}metrics/{}", metric.name());
        assert!(seen.get(&key).is_some_and(|v| v.parse::<u64>().is_ok()), "missing {key}");
    }
    assert_eq!(seen[&format!("{prefix}stats/clients/count")], "1");
    let listener = format!("{prefix}listeners/mqtt:tcp/{}", broker.addr.port());
    assert_eq!(seen[&format!("{listener}/current_clients")], "1");
    assert_eq!(seen[&format!("{listener}/shutdown_count")], "[]", "as in monitoring/listeners");
    broker.stop().await;
}

#[tokio::test]
async fn sys_interval_zero_turns_periodic_topics_off_but_identity_is_retained() {
    let broker = start(Config { sys_interval: 0, ..config() }).await;
    let mut sys = Raw::connected(broker.addr, "sys-reader").await;
    sys.subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]).await;
    let mut topics = BTreeSet::new();
    while let Ok(Some(Packet::Publish(p))) = sys.recv_within(Duration::from_millis(1500)).await {
        assert!(p.retain, "only retained identity topics: {}", p.topic_str());
        topics.insert(p.topic_str().to_string());
    }
    let expected: BTreeSet<String> =
        ["$SYS/brokers".to_string(), format!("$SYS/brokers/{NODE}/version"), format!("$SYS/brokers/{NODE}/sysdescr")]
            .into();
    assert_eq!(topics, expected);
    broker.stop().await;
}

#[tokio::test]
async fn presence_events_carry_emq_payloads() {
    let broker = start(config()).await;
    let mut watcher = Raw::connected(broker.addr, "watcher").await;
    watcher.subscribe(1, &[("$SYS/brokers/+/clients/#", QoS::AtMostOnce)]).await;
    let mut c = connect_packet("device-1", false);
    c.username = Some("dev".into());
    let (device, _) = Raw::connect(broker.addr, c).await;
    let connected = watcher.recv_publish().await;
    assert_eq!(connected.topic_str(), format!("$SYS/brokers/{NODE}/clients/device-1/connected"));
    let event: ClientConnected = serde_json::from_slice(&connected.payload).unwrap();
    assert_eq!(
        (event.clientid.as_str(), event.username.as_str(), event.ipaddress.as_str()),
        ("device-1", "dev", "127.0.0.1")
    );
    assert_eq!((event.clean_sess, event.protocol, event.connack), (false, 4, 0));
    assert!((event.ts - chrono::Utc::now().timestamp()).abs() < 5);
    device.disconnect().await;
    let disconnected = watcher.recv_publish().await;
    assert_eq!(disconnected.topic_str(), format!("$SYS/brokers/{NODE}/clients/device-1/disconnected"));
    let event: ClientDisconnected = serde_json::from_slice(&disconnected.payload).unwrap();
    assert_eq!((event.clientid.as_str(), event.reason.as_str()), ("device-1", "normal"));

    // An abrupt close says so.
    let anon = Raw::connected(broker.addr, "anon").await;
    let connected: ClientConnected = serde_json::from_slice(&watcher.recv_publish().await.payload).unwrap();
    assert_eq!(connected.username, "undefined");
    drop(anon);
    let gone: ClientDisconnected = serde_json::from_slice(&watcher.recv_publish().await.payload).unwrap();
    assert_eq!(gone.reason, "closed");
    broker.stop().await;
}

/// Expected movements of the counters, tallied as the script runs.
#[derive(Default)]
struct Tally(BTreeMap<&'static str, u64>);

impl Tally {
    fn add(&mut self, keys: &[&'static str]) {
        for key in keys {
            *self.0.entry(key).or_default() += 1;
        }
    }

    fn received(&mut self, packet: &'static str) {
        self.add(&["packets/received", packet]);
    }

    fn sent(&mut self, packet: &'static str) {
        self.add(&["packets/sent", packet]);
    }

    fn message_in(&mut self, qos: &'static str) {
        self.add(&["packets/received", "packets/publish/received", "messages/received", qos]);
    }

    fn message_out(&mut self, qos: &'static str) {
        self.add(&["packets/sent", "packets/publish/sent", "messages/sent", qos]);
    }
}

#[tokio::test]
async fn counters_move_exactly_for_a_scripted_session() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let before: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    // The management client's own calls count in nothing.
    let mut t = Tally::default();

    let (mut sub, _) = Raw::connect(broker.addr, connect_packet("sub", true)).await;
    t.received("packets/connect");
    t.sent("packets/connack");
    sub.subscribe(1, &[("t/#", QoS::ExactlyOnce)]).await;
    t.received("packets/subscribe");
    t.sent("packets/suback");
    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet("pub", true)).await;
    t.received("packets/connect");
    t.sent("packets/connack");

    publisher.send(&publish("t/0", b"q0", QoS::AtMostOnce, 0)).await;
    t.message_in("messages/qos0/received");
    sub.recv_publish().await;
    t.message_out("messages/qos0/sent");

    publisher.send(&publish("t/1", b"q1", QoS::AtLeastOnce, 1)).await;
    t.message_in("messages/qos1/received");
    assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(1))));
    t.sent("packets/puback/sent");
    let p = sub.recv_publish().await;
    t.message_out("messages/qos1/sent");
    sub.send(&Packet::Puback(Ack::new(p.pkid))).await;
    t.received("packets/puback/received");

    publisher.send(&publish("t/2", b"q2", QoS::ExactlyOnce, 2)).await;
    t.message_in("messages/qos2/received");
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(2))));
    t.sent("packets/pubrec/sent");
    publisher.send(&Packet::Pubrel(Ack::new(2))).await;
    t.received("packets/pubrel/received");
    assert_eq!(publisher.recv().await, Some(Packet::Pubcomp(Ack::new(2))));
    t.sent("packets/pubcomp/sent");
    let p = sub.recv_publish().await;
    t.message_out("messages/qos2/sent");
    sub.send(&Packet::Pubrec(Ack::new(p.pkid))).await;
    t.received("packets/pubrec/received");
    assert_eq!(sub.recv().await, Some(Packet::Pubrel(Ack::new(p.pkid))));
    t.sent("packets/pubrel/sent");
    sub.send(&Packet::Pubcomp(Ack::new(p.pkid))).await;
    t.received("packets/pubcomp/received");

    // Acknowledgements for packet ids not in flight.
    publisher.send(&Packet::Puback(Ack::new(999))).await;
    t.add(&["packets/received", "packets/puback/received", "packets/puback/missed"]);
    publisher.send(&Packet::Pubrec(Ack::new(998))).await;
    t.add(&["packets/received", "packets/pubrec/received", "packets/pubrec/missed"]);
    publisher.send(&Packet::Pubcomp(Ack::new(997))).await;
    t.add(&["packets/received", "packets/pubcomp/received", "packets/pubcomp/missed"]);
    publisher.send(&Packet::Pubrel(Ack::new(996))).await;
    t.add(&["packets/received", "packets/pubrel/received", "packets/pubrel/missed"]);
    assert_eq!(publisher.recv().await, Some(Packet::Pubcomp(Ack::new(996))));
    t.sent("packets/pubcomp/sent");

    // Nobody subscribes to this one.
    publisher.send(&publish("nobody/here", b"x", QoS::AtMostOnce, 0)).await;
    t.message_in("messages/qos0/received");
    t.add(&["messages/dropped"]);

    publisher.ping().await;
    t.received("packets/pingreq");
    t.sent("packets/pingresp");
    sub.send(&Packet::Unsubscribe(Unsubscribe { pkid: 3, filters: vec!["t/#".into()] })).await;
    t.received("packets/unsubscribe");
    assert_eq!(sub.recv().await, Some(Packet::Unsuback(Unsuback::new(3))));
    t.sent("packets/unsuback");
    for client in [sub, publisher] {
        client.disconnect().await;
        t.received("packets/disconnect");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let after: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    for metric in Metric::ALL {
        let name = metric.name();
        if name.starts_with("bytes/") || name == "messages/retained" {
            continue;
        }
        let expected = t.0.get(name).copied().unwrap_or(0);
        assert_eq!(after[name] - before[name], expected, "{name}");
    }
    assert!(after["bytes/received"] > before["bytes/received"]);
    assert!(after["bytes/sent"] > before["bytes/sent"]);

    let stats: BTreeMap<String, u64> = mgmt.ok(Request::Stats).await;
    assert_eq!((stats["clients/count"], stats["clients/max"]), (0, 2));
    assert_eq!((stats["subscriptions/count"], stats["subscriptions/max"]), (0, 1));
    assert_eq!(stats["routes/max"], 1);
    broker.stop().await;
}

#[tokio::test]
async fn retained_gauge_and_qos2_drops_are_counted() {
    let broker = start(Config { max_awaiting_rel: 1, ..mgmt_config() }).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&retained("r/1", b"a", QoS::AtMostOnce, 0)).await;
    publisher.send(&retained("r/2", b"b", QoS::AtMostOnce, 0)).await;
    publisher.send(&publish("q", b"1", QoS::ExactlyOnce, 1)).await;
    publisher.send(&publish("q", b"2", QoS::ExactlyOnce, 2)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Pubrec(Ack::new(1))));
    publisher.ping().await;
    let metrics: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    // Ours plus the three retained identity topics of `$SYS`, as EMQ counts them.
    assert_eq!((metrics["messages/retained"], metrics["messages/qos2/dropped"]), (5, 1));
    let stats: BTreeMap<String, u64> = mgmt.ok(Request::Stats).await;
    assert_eq!(stats["retained/count"], 5);
    broker.stop().await;
}

/// A subscriber that stops reading costs a bounded number of bytes (its outbox counts bytes as well as
/// entries, whatever the size of the messages); what does not fit is dropped and counted, and what it
/// gets once it reads again is the unbroken start of the stream.
#[tokio::test]
async fn a_stalled_subscriber_costs_bounded_bytes_and_the_excess_is_counted_as_dropped() {
    const COUNT: u32 = 60;
    const SIZE: usize = 1_000_000;
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut sub = Raw::connected(broker.addr, "stalled").await;
    sub.subscribe(1, &[("big/#", QoS::AtMostOnce)]).await;
    let before: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    for seq in 0..COUNT {
        let mut payload = vec![0; SIZE];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        publisher.send(&publish("big/x", &payload, QoS::AtMostOnce, 0)).await;
    }
    publisher.ping().await;
    let after: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    let dropped = after["messages/dropped"] - before["messages/dropped"];
    assert!(dropped > 0, "60 MB are not all kept for a subscriber that does not read");
    let mut received = 0u32;
    while let Ok(Some(packet)) = sub.recv_within(Duration::from_millis(500)).await {
        let Packet::Publish(p) = packet else { panic!("expected PUBLISH, got {packet:?}") };
        assert_eq!(u32::from_be_bytes(p.payload[..4].try_into().unwrap()), received, "no gaps");
        received += 1;
    }
    assert_eq!(received as u64 + dropped, COUNT as u64, "every message either delivered or counted");
    broker.stop().await;
}

#[tokio::test]
async fn sys_is_for_localhost_and_the_management_principal_by_default() {
    let broker = start(mgmt_config()).await;
    // A client from another loopback address is not "localhost" to EMQ's default ACL.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let mut remote = Raw::from_stream(stream);
    remote.send(&Packet::Connect(connect_packet("remote", true))).await;
    assert!(matches!(remote.recv().await, Some(Packet::Connack(Connack { reason: ReasonCode::Success, .. }))));
    let codes =
        remote.subscribe(1, &[("$SYS/#", QoS::AtMostOnce), ("#", QoS::AtMostOnce), ("a/#", QoS::AtMostOnce)]).await;
    assert_eq!(codes, vec![None, None, Some(QoS::AtMostOnce)]);

    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    assert_eq!(mgmt.raw.subscribe(7, &[("$SYS/#", QoS::AtMostOnce)]).await, vec![Some(QoS::AtMostOnce)]);
    broker.stop().await;
}

/// `--metrics-listen`: a Prometheus scrape of this node alone, in the sidecar's names.
#[tokio::test]
async fn metrics_listen_serves_prometheus() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut metrics_addr = None;
    let config = Config { metrics_listen: Some("127.0.0.1:0".parse().unwrap()), ..config() };
    let broker = start_prepared(config, |b| metrics_addr = b.metrics_addr()).await;
    let metrics_addr = metrics_addr.expect("a metrics listener");
    let _client = Raw::connected(broker.addr, "scraped").await;
    let get = |request: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    };

    let reply = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the text format");
    let sample = |name: &str| {
        let found = scrape.samples.iter().find(|s| s.metric == name && s.labels.get("node") == Some(NODE));
        found.unwrap_or_else(|| panic!("no {name} in\n{body}")).value.clone()
    };
    assert_eq!(sample("midge_packets_connect_total"), prometheus_parse::Value::Counter(1.0));
    assert_eq!(sample("midge_clients_count"), prometheus_parse::Value::Gauge(1.0));
    assert_eq!(scrape.samples.len(), Metric::ALL.len() + 2 * Stat::ALL.len(), "{body}");

    assert!(get("GET /other HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
    assert!(get("POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
    broker.stop().await;
}

/// `emq_recon`: memory, tasks, queue depths and the longest queues, on request; 111 while it is off.
#[tokio::test]
async fn recon_reports_where_the_messages_wait() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    // Two persistent subscribers go away and messages queue for them: five for one, two for the other.
    for id in ["five", "two"] {
        let (mut sub, _) = Raw::connect(broker.addr, connect_packet(id, false)).await;
        sub.subscribe(1, &[(&format!("recon/{id}"), QoS::AtLeastOnce)]).await;
        sub.disconnect().await;
    }
    let mut publisher = Raw::connected(broker.addr, "publisher").await;
    publisher.publish_acked("recon/five", 1..=5).await;
    publisher.publish_acked("recon/two", 1..=2).await;

    let recon: midge_shared::control::Recon = mgmt.ok(Request::Recon { top: 1 }).await;
    assert_eq!(recon.queues.mqueue, 7);
    let top: Vec<(&str, u64, bool)> =
        recon.top_queues.iter().map(|q| (q.client_id.as_str(), q.mqueue_len, q.online)).collect();
    assert_eq!(top, vec![("five", 5, false)], "the longest queue only, as asked");
    assert_eq!(recon.connections.count, 1, "the publisher (the sidecar is not counted)");
    assert!(recon.connections.task_bytes > 0 && recon.connections.task_bytes < 4096, "{:?}", recon.connections);
    assert!(recon.memory.rss_bytes > 0 && recon.memory.virtual_bytes >= recon.memory.rss_bytes);
    assert!(recon.runtime.workers >= 1 && recon.runtime.tasks >= 2);
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let (used, total) = (recon.memory.heap_in_use_bytes.unwrap(), recon.memory.heap_total_bytes.unwrap());
        assert!(used > 0 && used <= total);
    }

    let _: serde_json::Value = mgmt.ok(Request::SetPlugin { name: "emq_recon".into(), active: false }).await;
    assert_eq!(mgmt.err(Request::Recon { top: 1 }).await, 111);
    broker.stop().await;
}
