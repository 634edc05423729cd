//! Several brokers as one through a real nats-server (Debian's `nats-server`, on a port of its own per
//! test): a publish on any node reaches the subscribers of every node, once; a SUBACK means the other
//! nodes already send; topics of any bytes cross whole; retained messages reach every node; `$local/`
//! stays home; a client id is held by one node at a time (a connect elsewhere takes it over, two at
//! once leave one, a dead node's go at once); a node whose NATS is away still serves its own clients.

mod helpers;

use std::net::SocketAddr;
use std::time::Duration;

use helpers::nats::{nats, nats_cluster, Nats, TempDir};
use helpers::*;
use midge_broker::config::ClusterOutage;
use midge_broker::protocol::*;
use tokio::process::Child;

async fn node(nats: &Nats, name: &str) -> TestBroker {
    start(Config { node: format!("{name}@127.0.0.1"), cluster: vec![nats.url.clone()], ..config() }).await
}

/// Every message that arrives within a short silence, as (topic, payload), acknowledging QoS 1.
async fn drain(client: &mut Raw) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    while let Ok(Some(Packet::Publish(p))) = client.recv_within(Duration::from_millis(400)).await {
        if p.qos == QoS::AtLeastOnce {
            client.send(&Packet::Puback(Ack::new(p.pkid))).await;
        }
        got.push((p.topic_str().to_string(), p.payload.to_vec()));
    }
    got.sort();
    got
}

/// Three nodes, a subscriber on each with overlapping filters (each of which is a NATS subscription,
/// so a node hears a message more than once) and a publisher on each: every subscriber gets every
/// message exactly once.
#[tokio::test]
async fn a_publish_on_each_node_reaches_every_subscriber_once() {
    let nats = nats().await;
    let nodes = [node(&nats, "a").await, node(&nats, "b").await, node(&nats, "c").await];
    let mut subscribers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut client = Raw::connected(node.addr, &format!("sub-{i}")).await;
        let filters = [("t/#", QoS::AtLeastOnce), ("t/+", QoS::AtMostOnce), ("+/+", QoS::AtLeastOnce)];
        assert_eq!(client.subscribe(1, &filters).await.len(), 3);
        subscribers.push(client);
    }
    for (i, node) in nodes.iter().enumerate() {
        let mut publisher = Raw::connected(node.addr, &format!("pub-{i}")).await;
        publisher.send(&publish(&format!("t/{i}"), b"m", QoS::AtLeastOnce, 1)).await;
        assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(1))));
    }
    let want: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("t/{i}"), b"m".to_vec())).collect();
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        assert_eq!(drain(subscriber).await, want, "subscriber on node {i}");
    }
    for node in nodes {
        node.stop().await;
    }
}

/// A publish on one node right after a SUBACK on another is delivered: the SUBACK waits until the
/// NATS server has the new subscription. Fifty fresh filters, each published to at once.
#[tokio::test]
async fn a_suback_means_other_nodes_already_send() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut subscriber = Raw::connected(b.addr, "sub").await;
    let mut publisher = Raw::connected(a.addr, "pub").await;
    for n in 1..=50u16 {
        let topic = format!("fresh/{n}");
        subscriber.subscribe(n, &[(topic.as_str(), QoS::AtMostOnce)]).await;
        publisher.send(&publish(&topic, b"now", QoS::AtMostOnce, 0)).await;
        let got = subscriber.recv_publish().await;
        assert_eq!(got.topic_str(), topic);
    }
    a.stop().await;
    b.stop().await;
}

/// In a NATS cluster of three servers, each node on a server of its own, a publish on any other node
/// right after a SUBACK is delivered: the SUBACK waits until the servers every node publishes through
/// have the subscription, not only the subscriber's own server.
#[tokio::test]
async fn a_suback_means_every_node_sends_in_a_nats_cluster() {
    let servers = nats_cluster().await;
    let (a, b, c) = (node(&servers[0], "a").await, node(&servers[1], "b").await, node(&servers[2], "c").await);
    // JetStream elects its leaders first: until then the registry refuses persistent connects.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    for (addr, id) in [(a.addr, "sub"), (b.addr, "pub-b"), (c.addr, "pub-c")] {
        loop {
            let mut raw = Raw::open(addr).await;
            raw.send(&Packet::Connect(connect_packet(id, false))).await;
            let answer = raw.recv_within(Duration::from_secs(5)).await;
            if matches!(answer, Ok(Some(Packet::Connack(c))) if c.code() == ConnectReturnCode::Accepted) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the NATS cluster's JetStream never came up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    wait_for_brokers(&mut watching_brokers(a.addr, "watch-a").await, &["a", "b", "c"], Duration::from_secs(5)).await;
    let mut subscriber = Raw::connected(a.addr, "sub").await;
    let mut publishers = [Raw::connected(b.addr, "pub-b").await, Raw::connected(c.addr, "pub-c").await];
    for n in 1..=100u16 {
        let topic = format!("fresh/{n}");
        subscriber.subscribe(n, &[(topic.as_str(), QoS::AtMostOnce)]).await;
        publishers[usize::from(n % 2)].send(&publish(&topic, b"now", QoS::AtMostOnce, 0)).await;
        let got = subscriber.recv_publish().await;
        assert_eq!(got.topic_str(), topic);
    }
    for node in [a, b, c] {
        node.stop().await;
    }
}

/// A SUBACK waits for every other live node that says it confirms new routes (here one that says so
/// and never answers: the SUBACK comes only at the bound, 2 s), and not for a node of an older
/// version that does not say so (a rolling upgrade): then it comes at once.
#[tokio::test]
async fn a_suback_waits_for_the_nodes_that_confirm_routes_only() {
    let nats = nats().await;
    let a = node(&nats, "a").await;
    let mut watch = watching_brokers(a.addr, "watch-a").await;
    let impostor = async_nats::connect(&nats.url).await.unwrap();
    for (n, (name, confirms)) in [("old", false), ("silent", true)].into_iter().enumerate() {
        let heartbeat = format!(r#"{{"node":"{name}@127.0.0.1","incarnation":1,"confirms":{confirms}}}"#);
        let beating = {
            let impostor = impostor.clone();
            tokio::spawn(async move {
                loop {
                    let _ = impostor.publish(format!("midge.node.{name}"), heartbeat.clone().into()).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        wait_for_brokers(&mut watch, &["a", name], Duration::from_secs(3)).await;
        let mut subscriber = Raw::connected(a.addr, &format!("sub-{name}")).await;
        let started = std::time::Instant::now();
        subscriber.subscribe(1, &[(format!("fresh/{n}/#").as_str(), QoS::AtMostOnce)]).await;
        let waited = started.elapsed();
        if confirms {
            assert!(waited >= Duration::from_millis(1500), "waited for {name} only {waited:?}");
        } else {
            assert!(waited < Duration::from_secs(1), "waited for {name}, which never confirms: {waited:?}");
        }
        beating.abort();
        wait_for_brokers(&mut watch, &["a"], Duration::from_secs(4)).await;
    }
    a.stop().await;
}

/// Topic levels NATS gives meaning to, or cannot carry as they are, arrive as they were published;
/// so does a topic too long for a subject of its own.
#[tokio::test]
async fn topics_of_any_bytes_cross_whole() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let long = format!("long/{}", "level.with spaces/".repeat(200));
    let topics = ["a.b/c d", "*/>", "x//y/", "/", "ünï/日本/€", "~7E/~", long.as_str()];
    let mut everything = Raw::connected(b.addr, "everything").await;
    everything.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    let mut exact = Raw::connected(b.addr, "exact").await;
    let filters: Vec<(&str, QoS)> = topics.iter().map(|t| (*t, QoS::AtMostOnce)).collect();
    exact.subscribe(1, &filters).await;
    let mut wild = Raw::connected(b.addr, "wild").await;
    wild.subscribe(1, &[("+/>", QoS::AtMostOnce), ("x/+/y/#", QoS::AtMostOnce)]).await;

    let mut publisher = Raw::connected(a.addr, "pub").await;
    for topic in topics {
        publisher.send(&publish(topic, topic.as_bytes(), QoS::AtMostOnce, 0)).await;
    }
    let mut want: Vec<(String, Vec<u8>)> = topics.iter().map(|t| (t.to_string(), t.as_bytes().to_vec())).collect();
    want.sort();
    assert_eq!(drain(&mut everything).await, want);
    assert_eq!(drain(&mut exact).await, want);
    let wild_got: Vec<String> = drain(&mut wild).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(wild_got, ["*/>", "x//y/"], "`+/>` matches the literal level `>`, `x/+/y/#` an empty level");
    a.stop().await;
    b.stop().await;
}

/// A retained message published on one node is there for a subscriber arriving later on any node,
/// though nobody subscribed when it was published, and on a node that joined later; clearing it
/// clears it everywhere.
#[tokio::test]
async fn retained_messages_reach_every_node() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut publisher = Raw::connected(a.addr, "pub").await;
    publisher.send(&retained("kept/1", b"v1", QoS::AtLeastOnce, 1)).await;
    assert!(matches!(publisher.recv().await, Some(Packet::Puback(_))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let nodes = [a, b, node(&nats, "c").await];
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in &nodes[1..] {
        let mut late = Raw::connected(node.addr, "late").await;
        late.subscribe(1, &[("kept/#", QoS::AtLeastOnce)]).await;
        let got = late.recv_publish().await;
        assert_eq!((got.topic_str(), &got.payload[..], got.retain), ("kept/1", &b"v1"[..], true));
        late.disconnect().await;
    }
    publisher.send(&retained("kept/1", b"", QoS::AtLeastOnce, 2)).await;
    assert!(matches!(publisher.recv().await, Some(Packet::Puback(_))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = Raw::connected(nodes[2].addr, "later").await;
    late.subscribe(1, &[("kept/#", QoS::AtLeastOnce)]).await;
    late.expect_silence(Duration::from_millis(300)).await;
    for node in nodes {
        node.stop().await;
    }
}

/// Node a, keeping what it has in `dir` (and its control channel open), to stop and start again.
fn persistent_a(nats: &Nats, dir: &TempDir) -> Config {
    Config {
        node: "a@127.0.0.1".into(),
        cluster: vec![nats.url.clone()],
        persistence: true,
        data_dir: dir.0.clone(),
        ..mgmt_config()
    }
}

/// A node down (with its retained messages on its disk) while others clear some and retain others
/// comes back with the cluster's retained messages, not its own stale copy: a topic too long to be a
/// key of its own (kept under a digest) as well as a short one.
#[tokio::test]
async fn a_node_back_from_a_stop_forgets_the_retained_messages_cleared_meanwhile() {
    let nats = nats().await;
    let dir_a = TempDir(tempdir());
    let kept = |dir: &TempDir| persistent_a(&nats, dir);
    let (a, b) = (start(kept(&dir_a)).await, node(&nats, "b").await);
    let long = format!("away/{}", "x".repeat(1100));
    let mut publisher = Raw::connected(b.addr, "pub").await;
    for (n, topic) in ["away/short", long.as_str()].into_iter().enumerate() {
        publisher.send(&retained(topic, b"stale", QoS::AtLeastOnce, n as u16 + 1)).await;
        assert!(matches!(publisher.recv().await, Some(Packet::Puback(_))));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_a = Raw::connected(a.addr, "on-a").await;
    on_a.subscribe(1, &[("away/#", QoS::AtMostOnce)]).await;
    let before: Vec<String> = drain(&mut on_a).await.into_iter().map(|(t, _)| t.chars().take(12).collect()).collect();
    assert_eq!(before.len(), 2, "a has both before it stops: {before:?}");
    on_a.disconnect().await;
    a.stop().await;

    for (n, topic) in ["away/short", long.as_str()].into_iter().enumerate() {
        publisher.send(&retained(topic, b"", QoS::AtLeastOnce, n as u16 + 3)).await;
        assert!(matches!(publisher.recv().await, Some(Packet::Puback(_))));
    }
    publisher.send(&retained("away/new", b"fresh", QoS::AtLeastOnce, 5)).await;
    assert!(matches!(publisher.recv().await, Some(Packet::Puback(_))));

    let a = start(kept(&dir_a)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut on_a = Raw::connected(a.addr, "on-a").await;
    on_a.subscribe(1, &[("away/#", QoS::AtMostOnce)]).await;
    assert_eq!(drain(&mut on_a).await, [("away/new".to_string(), b"fresh".to_vec())]);
    a.stop().await;
    b.stop().await;
}

/// `$local/` subscriptions and the broker's own topics never become NATS subscriptions; a route's
/// subscriptions go when its last subscriber leaves.
#[tokio::test]
async fn local_filters_stay_home_and_routes_go_with_their_last_subscriber() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let baseline = nats.subjects().await;
    let count = |matches: &dyn Fn(&str) -> bool| baseline.iter().filter(|s| matches(s)).count();
    assert_eq!(count(&|s| s == "midge.long"), 2, "midge.long once for each node: {baseline:?}");
    assert_eq!(count(&|s| s == "midge.echo.every"), 2, "midge.echo.every once for each node: {baseline:?}");
    let own_echo = |s: &str| s.starts_with("midge.echo.") && s != "midge.echo.every";
    assert_eq!(count(&own_echo), 2, "a node's own echo once for each node: {baseline:?}");

    let mut home = Raw::connected(b.addr, "home").await;
    home.subscribe(1, &[("$local/x/#", QoS::AtMostOnce), ("$SYS/#", QoS::AtMostOnce)]).await;
    let mut remote = Raw::connected(a.addr, "remote").await;
    remote.send(&publish("x/1", b"from a", QoS::AtMostOnce, 0)).await;
    let mut neighbour = Raw::connected(b.addr, "neighbour").await;
    neighbour.send(&publish("x/2", b"from b", QoS::AtMostOnce, 0)).await;
    let (sys, user): (Vec<_>, Vec<_>) = drain(&mut home).await.into_iter().partition(|(t, _)| t.starts_with("$SYS"));
    assert_eq!(user, [("x/2".to_string(), b"from b".to_vec())]);
    assert!(!sys.is_empty() && sys.iter().all(|(t, _)| !t.contains("a@")), "b's own $SYS only: {sys:?}");
    assert!(nats.routes().await.is_empty(), "no NATS subscription for $local or $SYS");

    let mut one = Raw::connected(b.addr, "one").await;
    let mut two = Raw::connected(b.addr, "two").await;
    one.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    two.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    assert_eq!(nats.routes().await, ["midge.m.r", "midge.m.r.>"], "r/# is two subjects, once per node");
    one.send(&unsubscribe(2, &["r/#"])).await;
    assert!(matches!(one.recv().await, Some(Packet::Unsuback(_))));
    assert_eq!(nats.routes().await, ["midge.m.r", "midge.m.r.>"], "two still holds it");
    two.disconnect().await;
    nats.wait_for_routes(&[], "r/# unsubscribed").await;
    a.stop().await;
    b.stop().await;
}

/// With its NATS server unreachable a node starts, and its own clients publish and subscribe as ever.
#[tokio::test]
async fn a_node_without_its_nats_serves_its_own_clients() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", unused.local_addr().unwrap());
    drop(unused);
    let alone = start(Config { cluster: vec![url], ..config() }).await;
    let mut subscriber = Raw::connected(alone.addr, "sub").await;
    subscriber.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let mut publisher = Raw::connected(alone.addr, "pub").await;
    publisher.publish_acked("t", 1..=3).await;
    subscriber.expect_acking(1..=3).await;
    // A persistent session lives where the registry says; without it, it is refused, plainly.
    let code = connack_code(alone.addr, Packet::Connect(connect_packet("kept", false))).await;
    assert_eq!(code, ConnectReturnCode::ServerUnavailable);
    alone.stop().await;
    // Unless its operator chose to serve such sessions locally meanwhile.
    let url = format!("nats://{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
    let lenient = Config { cluster: vec![url], cluster_outage: ClusterOutage::Local, ..config() };
    let lenient = start(lenient).await;
    let code = connack_code(lenient.addr, Packet::Connect(connect_packet("kept", false))).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    lenient.stop().await;
}

/// Whether the connection is still open: it answers a PINGREQ.
async fn alive(client: &mut Raw) -> bool {
    client.send(&Packet::Pingreq).await;
    matches!(client.recv_within(Duration::from_millis(500)).await, Ok(Some(Packet::Pingresp)))
}

/// A client id connecting on another node takes the id over: its connection on the first node ends,
/// as it would on one node, and back again.
#[tokio::test]
async fn a_client_id_is_held_by_one_node_at_a_time() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut on_a = Raw::connected(a.addr, "roamer").await;
    let mut on_b = Raw::connected(b.addr, "roamer").await;
    on_a.expect_closed().await;
    assert!(alive(&mut on_b).await);
    let mut again_on_a = Raw::connected(a.addr, "roamer").await;
    on_b.expect_closed().await;
    assert!(alive(&mut again_on_a).await);
    // A clean session gives the id back when it ends: the next connect elsewhere finds it free.
    again_on_a.disconnect().await;
    let mut bystander = Raw::connected(a.addr, "bystander").await;
    let _on_b = Raw::connected(b.addr, "roamer").await;
    assert!(alive(&mut bystander).await);
    a.stop().await;
    b.stop().await;
}

/// Two connects of one client id on two nodes at once: once both have settled, exactly one is
/// connected. Ten ids, each raced.
#[tokio::test]
async fn simultaneous_connects_on_two_nodes_leave_one() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    for n in 0..10 {
        let id = format!("twin-{n}");
        let (mut first, mut second) = tokio::join!(Raw::connected(a.addr, &id), Raw::connected(b.addr, &id));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (first_alive, second_alive) = (alive(&mut first).await, alive(&mut second).await);
        assert!(first_alive != second_alive, "{id}: on a {first_alive}, on b {second_alive}");
    }
    a.stop().await;
    b.stop().await;
}

/// A node that is gone holds no client id: a connect elsewhere takes it at once.
#[tokio::test]
async fn a_gone_nodes_client_ids_are_taken_at_once() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let _held = Raw::connected(a.addr, "orphan").await;
    a.stop().await;
    let started = std::time::Instant::now();
    let mut moved = Raw::connected(b.addr, "orphan").await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(alive(&mut moved).await);
    b.stop().await;
}

/// A persistent session taken over by another node does not linger on the first, parked with its
/// routes: whether its client was online or away there, its filters leave NATS when the id moves.
#[tokio::test]
async fn a_session_taken_over_by_another_node_leaves_the_first() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    for (n, online) in [(1, true), (2, false)] {
        let id = format!("kept-{n}");
        let (mut on_a, _) = Raw::connect(a.addr, connect_packet(&id, false)).await;
        on_a.subscribe(1, &[("kept/topic", QoS::AtLeastOnce)]).await;
        assert_eq!(nats.routes().await, ["midge.m.kept.topic"]);
        if !online {
            on_a.disconnect().await;
        }
        let (_on_b, _) = Raw::connect(b.addr, connect_packet(&id, true)).await;
        nats.wait_for_routes(&[], &format!("{id} no longer routed on a")).await;
    }
    a.stop().await;
    b.stop().await;
}

/// Reads `$SYS/brokers` from `client` (subscribed to it) until it lists `want`; how long that took.
async fn wait_for_brokers(client: &mut Raw, want: &[&str], within: Duration) -> Duration {
    let started = std::time::Instant::now();
    let want: Vec<String> = want.iter().map(|name| format!("{name}@127.0.0.1")).collect();
    let mut last = String::new();
    while started.elapsed() < within {
        let Ok(Some(Packet::Publish(p))) = client.recv_within(within - started.elapsed()).await else { break };
        if p.topic_str() == "$SYS/brokers" {
            last = String::from_utf8_lossy(&p.payload).into_owned();
            if last == want.join(",") {
                return started.elapsed();
            }
        }
    }
    panic!("$SYS/brokers still {last:?} after {within:?}, not {want:?}");
}

async fn watching_brokers(addr: SocketAddr, id: &str) -> Raw {
    let mut client = Raw::connected(addr, id).await;
    client.subscribe(1, &[("$SYS/brokers", QoS::AtMostOnce)]).await;
    client
}

fn with_will(client_id: &str, topic: &str) -> Connect {
    let mut connect = connect_packet(client_id, true);
    connect.will = Some(LastWill::new(topic, bytes::Bytes::from(format!("{client_id} gone")), QoS::AtLeastOnce, false));
    connect
}

/// Every node lists the live nodes in `$SYS/brokers`, as EMQ does (names, comma-separated); a node
/// stopped in good order leaves the list at once and its clients' wills stay unpublished, as on a
/// single node.
#[tokio::test]
async fn sys_brokers_lists_the_live_nodes_on_every_node() {
    let nats = nats().await;
    let (a, b, c) = (node(&nats, "a").await, node(&nats, "b").await, node(&nats, "c").await);
    let mut on_a = watching_brokers(a.addr, "watch-a").await;
    let mut on_c = watching_brokers(c.addr, "watch-c").await;
    wait_for_brokers(&mut on_a, &["a", "b", "c"], Duration::from_secs(3)).await;
    wait_for_brokers(&mut on_c, &["a", "b", "c"], Duration::from_secs(3)).await;

    let mut wills = Raw::connected(a.addr, "will-watcher").await;
    wills.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let (_leaving_with_b, _) = Raw::connect(b.addr, with_will("on-b", "wills/on-b")).await;
    b.stop().await;
    let seen = wait_for_brokers(&mut on_a, &["a", "c"], Duration::from_secs(3)).await;
    assert!(seen < Duration::from_secs(1), "a node that says it leaves is gone at once, not after {seen:?}");
    wait_for_brokers(&mut on_c, &["a", "c"], Duration::from_secs(1)).await;
    // Past the time a silent node is taken for dead: still no will.
    wills.expect_silence(Duration::from_secs(3)).await;
    a.stop().await;
    c.stop().await;
}

/// A client whose connection breaks on one node has its will published once, cluster-wide: every
/// subscriber on every node gets it once.
#[tokio::test]
async fn a_broken_connections_will_reaches_every_node_once() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut on_a = Raw::connected(a.addr, "sub-a").await;
    on_a.subscribe(1, &[("wills/#", QoS::AtLeastOnce), ("wills/+", QoS::AtLeastOnce)]).await;
    let mut on_b = Raw::connected(b.addr, "sub-b").await;
    on_b.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let (broken, _) = Raw::connect(b.addr, with_will("fragile", "wills/fragile")).await;
    drop(broken);
    let once = vec![("wills/fragile".to_string(), b"fragile gone".to_vec())];
    assert_eq!(drain(&mut on_a).await, once);
    assert_eq!(drain(&mut on_b).await, once);
    a.stop().await;
    b.stop().await;
}

/// An outage of NATS itself (its server killed and started again, then stopped and continued) is
/// no node's death: once the nodes hear each other again, no will of a client still connected fires
/// on either side, and every node is listed again.
#[tokio::test]
async fn a_nats_outage_fires_no_will_of_a_client_still_connected() {
    let mut nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut wills_on_a = Raw::connected(a.addr, "watch-wills-a").await;
    wills_on_a.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let mut wills_on_b = Raw::connected(b.addr, "watch-wills-b").await;
    wills_on_b.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let (mut with_a, _) = Raw::connect(a.addr, with_will("stays-on-a", "wills/a")).await;
    let (mut with_b, _) = Raw::connect(b.addr, with_will("stays-on-b", "wills/b")).await;
    let mut watch = watching_brokers(a.addr, "watch-a").await;
    wait_for_brokers(&mut watch, &["a", "b"], Duration::from_secs(3)).await;

    nats.kill().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    nats.signal("-STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The list never changed, so a new watcher reads it.
    wait_for_brokers(&mut watching_brokers(a.addr, "watch-a-after").await, &["a", "b"], Duration::from_secs(3)).await;
    assert_eq!(drain(&mut wills_on_a).await, []);
    assert_eq!(drain(&mut wills_on_b).await, []);
    assert!(alive(&mut with_a).await && alive(&mut with_b).await);
    a.stop().await;
    b.stop().await;
}

/// The broker binary as node `name` of the cluster on `nats`, in memory; its child process and
/// address.
async fn node_process(nats: &Nats, name: &str) -> (Child, SocketAddr) {
    let node = format!("{name}@127.0.0.1");
    spawn_binary(&["--persistence", "false", "--cluster", &nats.url, "--node", &node]).await
}

/// SIGKILL of a node: within 3 s every other node lists it gone, and the wills of its clients are
/// published once cluster-wide (not once per survivor); the will of a client that left in good
/// order is not.
#[tokio::test]
async fn a_killed_nodes_wills_fire_once_and_it_leaves_the_list() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let (mut killed, c) = node_process(&nats, "c").await;
    let mut watch = watching_brokers(a.addr, "watch-a").await;
    wait_for_brokers(&mut watch, &["a", "b", "c"], Duration::from_secs(3)).await;
    let mut on_a = Raw::connected(a.addr, "sub-a").await;
    on_a.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let mut on_b = Raw::connected(b.addr, "sub-b").await;
    on_b.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let mut held = Vec::new();
    for id in ["w1", "w2", "w3"] {
        held.push(Raw::connect(c, with_will(id, &format!("wills/{id}"))).await.0);
    }
    let (polite, _) = Raw::connect(c, with_will("polite", "wills/polite")).await;
    polite.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    killed.start_kill().unwrap();
    let _ = killed.wait().await;
    let seen = wait_for_brokers(&mut watch, &["a", "b"], Duration::from_secs(4)).await;
    assert!(seen <= Duration::from_secs(3), "dead node seen after {seen:?}");
    let want: Vec<(String, Vec<u8>)> =
        ["w1", "w2", "w3"].iter().map(|id| (format!("wills/{id}"), format!("{id} gone").into_bytes())).collect();
    assert_eq!(drain(&mut on_a).await, want);
    assert_eq!(drain(&mut on_b).await, want);
    a.stop().await;
    b.stop().await;
}

async fn managed_node(nats: &Nats, name: &str) -> TestBroker {
    start(Config { node: format!("{name}@127.0.0.1"), cluster: vec![nats.url.clone()], ..mgmt_config() }).await
}

/// The sidecar is a client of one node, and through it every node answers: the discovery brings each
/// node's facts, a request for another node is answered by that node (about its own clients), and one
/// for a node that has left gets 101 at once rather than after a timeout.
#[tokio::test]
async fn control_requests_reach_every_node_through_one() {
    use midge_shared::control::{
        code, reply_topic, ClientRow, NodeInfo, Outcome, Request, RequestEnvelope, DISCOVERY_TOPIC, VERSION,
    };
    let nats = nats().await;
    let (a, b, c) = (managed_node(&nats, "a").await, managed_node(&nats, "b").await, managed_node(&nats, "c").await);
    let mut watch = watching_brokers(a.addr, "watch-a").await;
    wait_for_brokers(&mut watch, &["a", "b", "c"], Duration::from_secs(3)).await;

    // Discovery: one request on `a`, an answer from each node.
    let mut sidecar = Mgmt::connect_as(a.addr, "a@127.0.0.1", "midge-mgmt-a").await;
    let envelope = RequestEnvelope {
        v: VERSION,
        id: "discover-1".into(),
        reply_to: reply_topic("midge-mgmt-a"),
        request: Request::NodeInfo,
    };
    sidecar.raw.send(&publish(DISCOVERY_TOPIC, &serde_json::to_vec(&envelope).unwrap(), QoS::AtLeastOnce, 1)).await;
    let mut answered = Vec::new();
    while let Ok(Some(packet)) = sidecar.raw.recv_within(Duration::from_millis(500)).await {
        if let Packet::Publish(p) = packet {
            sidecar.raw.send(&Packet::Puback(Ack::new(p.pkid))).await;
            let reply: midge_shared::control::ReplyEnvelope = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(reply.id, "discover-1");
            let Outcome::Ok(info) = reply.outcome else { panic!("{:?}", reply.outcome) };
            answered.push(serde_json::from_value::<NodeInfo>(info).unwrap().name);
        }
    }
    answered.sort();
    assert_eq!(answered, ["a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"]);

    // A request for `c`, sent to `a`, is about `c`'s clients.
    let _on_c = Raw::connected(c.addr, "lives-on-c").await;
    let mut for_c = Mgmt::connect_as(a.addr, "c@127.0.0.1", "midge-mgmt-c").await;
    let info: NodeInfo = for_c.ok(Request::NodeInfo).await;
    assert_eq!(info.name, "c@127.0.0.1");
    let rows: Vec<ClientRow> = for_c.ok(Request::GetClient { client_id: "lives-on-c".into() }).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let mut for_b = Mgmt::connect_as(a.addr, "b@127.0.0.1", "midge-mgmt-b").await;
    let rows: Vec<ClientRow> = for_b.ok(Request::GetClient { client_id: "lives-on-c".into() }).await;
    assert!(rows.is_empty(), "b does not have c's client: {rows:?}");

    c.stop().await;
    wait_for_brokers(&mut watch, &["a", "b"], Duration::from_secs(3)).await;
    let started = std::time::Instant::now();
    assert_eq!(for_c.err(Request::NodeInfo).await, code::BADRPC);
    assert!(started.elapsed() < Duration::from_millis(500), "101 after {:?}", started.elapsed());
    a.stop().await;
    b.stop().await;
}

/// A persistent session follows its client to another node: parked on `a` with queued messages, it is
/// handed over when its client connects to `b` (session present, the messages in order, its
/// subscriptions now routed from `b` alone); online on `a` with a message unacknowledged, that message
/// comes again on `b`, DUP set, under the same packet id.
#[tokio::test]
async fn a_persistent_session_follows_its_client_to_another_node() {
    use midge_shared::control::{Request, SessionRow};
    let nats = nats().await;
    let (a, b) = (managed_node(&nats, "a").await, managed_node(&nats, "b").await);
    let mut publisher = Raw::connected(b.addr, "publisher").await;

    let (mut mover, _) = Raw::connect(a.addr, connect_packet("mover", false)).await;
    mover.subscribe(1, &[("moving/#", QoS::AtLeastOnce)]).await;
    mover.disconnect().await;
    publisher.publish_acked("moving/x", 1..=3).await;
    let mut on_a = Mgmt::connect(a.addr, "a@127.0.0.1").await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let rows: Vec<SessionRow> = on_a.ok(Request::GetSession { client_id: "mover".into() }).await;
        if rows.first().is_some_and(|row| row.mqueue_len == 3) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not queued on a: {rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut mover, present) = Raw::connect(b.addr, connect_packet("mover", false)).await;
    assert!(present, "the session came with its client");
    mover.expect_acking(1..=3).await;
    let rows: Vec<SessionRow> = on_a.ok(Request::GetSession { client_id: "mover".into() }).await;
    assert!(rows.is_empty(), "gone from a: {rows:?}");
    nats.wait_for_routes(&["midge.m.moving", "midge.m.moving.>"], "moving/# routed from b alone").await;
    let mut on_a_publisher = Raw::connected(a.addr, "publisher-a").await;
    on_a_publisher.publish_acked("moving/x", 4..=4).await;
    mover.expect_acking(4..=4).await;

    let (mut online, _) = Raw::connect(a.addr, connect_packet("online-mover", false)).await;
    online.subscribe(1, &[("inflight/#", QoS::AtLeastOnce)]).await;
    publisher.send(&publish("inflight/1", b"unacked", QoS::AtLeastOnce, 9)).await;
    let first = online.recv_publish().await;
    assert!(!first.dup);
    let (mut moved, present) = Raw::connect(b.addr, connect_packet("online-mover", false)).await;
    assert!(present);
    let again = moved.recv_publish().await;
    assert_eq!((again.pkid, again.dup, &again.payload[..]), (first.pkid, true, &b"unacked"[..]));
    online.expect_closed().await;
    a.stop().await;
    b.stop().await;
}

/// With persistence on, a session handed over is kept on the disk of the node that took it, and
/// forgotten on the disk of the one that gave it: after both restart, it is on the new node, with
/// the messages its client had not acknowledged, and nowhere else.
#[tokio::test]
async fn a_handed_over_session_is_kept_by_the_node_that_took_it() {
    use midge_shared::control::{Request, SessionRow};
    let nats = nats().await;
    let (dir_a, dir_b) = (TempDir(tempdir()), TempDir(tempdir()));
    let kept = |name: &str, dir: &TempDir| Config {
        node: format!("{name}@127.0.0.1"),
        cluster: vec![nats.url.clone()],
        persistence: true,
        data_dir: dir.0.clone(),
        ..mgmt_config()
    };
    let (a, b) = (start(kept("a", &dir_a)).await, start(kept("b", &dir_b)).await);
    let (mut keeper, _) = Raw::connect(a.addr, connect_packet("keeper", false)).await;
    keeper.subscribe(1, &[("kept/#", QoS::AtLeastOnce)]).await;
    keeper.disconnect().await;
    Raw::connected(a.addr, "publisher").await.publish_acked("kept/x", 1..=2).await;
    // Taken over on b, the two messages sent but not acknowledged.
    let (mut keeper, present) = Raw::connect(b.addr, connect_packet("keeper", false)).await;
    assert!(present);
    for n in 1..=2u8 {
        assert_eq!(&keeper.recv_publish().await.payload[..], &[n]);
    }
    drop(keeper);
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.stop().await;
    b.stop().await;

    let (a, b) = (start(kept("a", &dir_a)).await, start(kept("b", &dir_b)).await);
    let rows: Vec<SessionRow> =
        Mgmt::connect(a.addr, "a@127.0.0.1").await.ok(Request::GetSession { client_id: "keeper".into() }).await;
    assert!(rows.is_empty(), "a forgot it: {rows:?}");
    let (mut keeper, present) = Raw::connect(b.addr, connect_packet("keeper", false)).await;
    assert!(present, "b kept it");
    for n in 1..=2u8 {
        let again = keeper.recv_publish().await;
        assert_eq!((&again.payload[..], again.dup), (&[n][..], true));
        keeper.send(&Packet::Puback(Ack::new(again.pkid))).await;
    }
    a.stop().await;
    b.stop().await;
}

/// SIGKILL of the node that held a persistent session: its client, connecting to another node,
/// finds the session there (present, with its subscriptions: a message published on a third node
/// reaches it), taken from the record its node had kept cluster-wide.
#[tokio::test]
async fn a_persistent_session_outlives_its_node() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let (mut killed, c) = node_process(&nats, "c").await;
    let (mut survivor, _) = Raw::connect(c, connect_packet("survivor", false)).await;
    survivor.subscribe(1, &[("surv/#", QoS::AtLeastOnce)]).await;
    let (mut parked, _) = Raw::connect(c, connect_packet("parked-survivor", false)).await;
    parked.subscribe(1, &[("parked/+", QoS::AtLeastOnce)]).await;
    parked.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    killed.start_kill().unwrap();
    let _ = killed.wait().await;

    let mut publisher = Raw::connected(b.addr, "publisher").await;
    for (id, topic) in [("survivor", "surv/1"), ("parked-survivor", "parked/1")] {
        let (mut back, present) = Raw::connect(a.addr, connect_packet(id, false)).await;
        assert!(present, "{id}: the session outlived its node");
        publisher.send(&publish(topic, b"after the kill", QoS::AtLeastOnce, 1)).await;
        assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(1))));
        assert_eq!(&back.recv_publish().await.payload[..], b"after the kill", "{id}");
    }
    a.stop().await;
    b.stop().await;
}

/// A shared subscription with members on several nodes gets each message once cluster-wide (NATS's
/// queue group picks the node), while a plain subscriber gets every one; a group whose only member
/// is on the publisher's own node gets its messages too.
#[tokio::test]
async fn a_shared_subscription_gets_each_message_once_across_nodes() {
    let nats = nats().await;
    let nodes = [node(&nats, "a").await, node(&nats, "b").await, node(&nats, "c").await];
    let mut members = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut member = Raw::connected(node.addr, &format!("worker-{n}")).await;
        member.subscribe(1, &[("$share/g/work/#", QoS::AtLeastOnce)]).await;
        members.push(member);
    }
    let mut watcher = Raw::connected(nodes[0].addr, "watcher").await;
    watcher.subscribe(1, &[("work/#", QoS::AtLeastOnce)]).await;
    let mut alone = Raw::connected(nodes[0].addr, "alone").await;
    alone.subscribe(1, &[("$share/solo/alone/#", QoS::AtLeastOnce)]).await;

    let mut publisher = Raw::connected(nodes[1].addr, "publisher").await;
    for n in 1..=60u16 {
        publisher.send(&publish(&format!("work/{n}"), &n.to_be_bytes(), QoS::AtLeastOnce, n)).await;
        assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(n))));
    }
    let mut shared = Vec::new();
    let mut busy = 0;
    for member in &mut members {
        let got = drain(member).await;
        busy += usize::from(!got.is_empty());
        shared.extend(got);
    }
    shared.sort();
    let mut all: Vec<(String, Vec<u8>)> =
        (1..=60u16).map(|n| (format!("work/{n}"), n.to_be_bytes().to_vec())).collect();
    all.sort();
    assert_eq!(shared, all, "each message to one member, cluster-wide");
    assert!(busy >= 2, "NATS spread the group's messages over its nodes");
    assert_eq!(drain(&mut watcher).await, all, "a plain subscriber gets every one");

    let mut on_a = Raw::connected(nodes[0].addr, "publisher-a").await;
    on_a.publish_acked("alone/1", 1..=1).await;
    assert_eq!(drain(&mut alone).await, [("alone/1".to_string(), vec![1])]);
    for node in nodes {
        node.stop().await;
    }
}

/// Publishes probes on `topic` from `publisher` until `subscriber` gets one (the nodes hear each other
/// again); false if none arrives within 15 s.
async fn until_across(publisher: &mut Raw, subscriber: &mut Raw, topic: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        publisher.send(&publish(topic, b"probe", QoS::AtMostOnce, 0)).await;
        while let Ok(Some(packet)) = subscriber.recv_within(Duration::from_millis(200)).await {
            if let Packet::Publish(p) = packet {
                if p.qos == QoS::AtLeastOnce {
                    subscriber.send(&Packet::Puback(Ack::new(p.pkid))).await;
                }
                if p.topic_str() == topic {
                    return true;
                }
            }
        }
    }
    false
}

/// SIGKILL of the NATS server, then SIGSTOP: each node keeps serving its own clients meanwhile and
/// counts what it could not send across as dropped; once NATS is back the nodes hear each other again
/// with no manual step (routes, the registry and retained messages work across nodes as before).
#[tokio::test]
async fn the_nodes_come_together_again_after_nats_fails() {
    use midge_shared::control::Request;
    use std::collections::BTreeMap;
    let mut nats = nats().await;
    let (a, b) = (managed_node(&nats, "a").await, managed_node(&nats, "b").await);
    let mut on_b = Raw::connected(b.addr, "sub-b").await;
    on_b.subscribe(1, &[("across/#", QoS::AtLeastOnce)]).await;
    let mut on_a = Raw::connected(a.addr, "sub-a").await;
    on_a.subscribe(1, &[("across/#", QoS::AtLeastOnce)]).await;
    let mut publisher = Raw::connected(a.addr, "pub-a").await;
    assert!(until_across(&mut publisher, &mut on_b, "across/before").await);
    drain(&mut on_a).await;
    let mut metrics_of_a = Mgmt::connect(a.addr, "a@127.0.0.1").await;
    let dropped = |metrics: &BTreeMap<String, u64>| metrics["messages/dropped"];
    let before: BTreeMap<String, u64> = metrics_of_a.ok(Request::Metrics).await;

    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher.publish_acked("across/away", 1..=3).await;
    on_a.expect_acking(1..=3).await;
    let during: BTreeMap<String, u64> = metrics_of_a.ok(Request::Metrics).await;
    assert!(dropped(&during) >= dropped(&before) + 3, "not sent across, counted: {before:?} -> {during:?}");
    nats.restart().await;
    assert!(until_across(&mut publisher, &mut on_b, "across/after-kill").await, "routes resynced");
    let deadline = std::time::Instant::now() + WAIT;
    while connack_code(b.addr, Packet::Connect(connect_packet("kept-after", false))).await
        != ConnectReturnCode::Accepted
    {
        assert!(std::time::Instant::now() < deadline, "the registry never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.send(&retained("across/kept", b"r", QoS::AtLeastOnce, 7)).await;
    assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(7))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = Raw::connected(b.addr, "late").await;
    late.subscribe(1, &[("across/kept", QoS::AtLeastOnce)]).await;
    assert_eq!(&late.recv_publish().await.payload[..], b"r");

    drain(&mut on_a).await;
    nats.signal("-STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    publisher.publish_acked("across/stopped", 4..=4).await;
    on_a.expect_acking(4..=4).await;
    nats.signal("-CONT");
    assert!(until_across(&mut publisher, &mut on_b, "across/after-stop").await, "routes resynced after SIGCONT");
    a.stop().await;
    b.stop().await;
}

/// A burst across nodes (what one wake-up of the link finds goes as one NATS message per topic):
/// every message arrives once, in order per topic.
#[tokio::test]
async fn a_burst_crosses_whole_and_in_order_per_topic() {
    let nats = nats().await;
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut subscriber = Raw::connected(b.addr, "sub").await;
    subscriber.subscribe(1, &[("burst/#", QoS::AtMostOnce)]).await;
    let mut publisher = Raw::connected(a.addr, "pub").await;
    let mut burst = bytes::BytesMut::new();
    for n in 0..600u16 {
        let packet = publish(&format!("burst/{}", n % 3), &n.to_be_bytes(), QoS::AtMostOnce, 0);
        midge_broker::protocol::encode(&packet, Protocol::V311, &mut burst);
    }
    publisher.send_bytes(&burst).await;
    let mut got: std::collections::BTreeMap<String, Vec<u16>> = Default::default();
    while let Ok(Some(Packet::Publish(p))) = subscriber.recv_within(Duration::from_millis(500)).await {
        got.entry(p.topic_str().to_string()).or_default().push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
    }
    for (k, topic) in ["burst/0", "burst/1", "burst/2"].iter().enumerate() {
        let want: Vec<u16> = (0..600u16).filter(|n| n % 3 == k as u16).collect();
        assert_eq!(got.get(*topic), Some(&want), "{topic}");
    }
    a.stop().await;
    b.stop().await;
}

/// A node that was down while one of the sessions on its disk moved to another node gives that
/// session up when it comes back, rather than keep a second copy with its routes.
#[tokio::test]
async fn a_node_back_from_a_stop_gives_up_the_sessions_that_moved() {
    use midge_shared::control::{Request, SessionRow};
    let nats = nats().await;
    let dir_a = TempDir(tempdir());
    let kept = |dir: &TempDir| persistent_a(&nats, dir);
    let (a, b) = (start(kept(&dir_a)).await, node(&nats, "b").await);
    let (mut wanderer, _) = Raw::connect(a.addr, connect_packet("wanderer", false)).await;
    wanderer.subscribe(1, &[("wander/#", QoS::AtLeastOnce)]).await;
    wanderer.disconnect().await;
    let (mut stayer, _) = Raw::connect(a.addr, connect_packet("stayer", false)).await;
    stayer.subscribe(1, &[("stay/#", QoS::AtLeastOnce)]).await;
    stayer.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.stop().await;
    // Resumed on b from its record while a is down.
    let (_wanderer, present) = Raw::connect(b.addr, connect_packet("wanderer", false)).await;
    assert!(present);

    let a = start(kept(&dir_a)).await;
    let mut on_a = Mgmt::connect(a.addr, "a@127.0.0.1").await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let rows: Vec<SessionRow> = on_a.ok(Request::GetSession { client_id: "wanderer".into() }).await;
        if rows.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a still has the session that moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: Vec<SessionRow> = on_a.ok(Request::GetSession { client_id: "stayer".into() }).await;
    assert_eq!(rows.len(), 1, "a keeps what is still its own");
    nats.wait_for_routes(&["midge.m.stay", "midge.m.stay.>", "midge.m.wander", "midge.m.wander.>"], "one copy each")
        .await;
    a.stop().await;
    b.stop().await;
}

/// An MQTT 5 CONNECT resuming (clean start 0) a session that outlives its connection by `seconds`.
fn expiring(client_id: &str, seconds: u32) -> Connect {
    let mut connect = connect_packet(client_id, false);
    connect.protocol = Protocol::V5;
    connect.properties.session_expiry_interval = Some(seconds);
    connect
}

/// The expiry of a session taken up from its dead node's record still counts from when its client
/// left: past it, the client starts afresh.
#[tokio::test]
async fn a_session_that_expired_while_its_node_was_gone_is_not_taken_up() {
    let nats = nats().await;
    let a = node(&nats, "a").await;
    let (mut killed, c) = node_process(&nats, "c").await;
    let (mut client, _) = Raw::connect(c, expiring("brief", 1)).await;
    client.subscribe(1, &[("brief/#", QoS::AtLeastOnce)]).await;
    client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    killed.start_kill().unwrap();
    let _ = killed.wait().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_client, present) = Raw::connect(a.addr, expiring("brief", 1)).await;
    assert!(!present, "expired while its node was gone");
    a.stop().await;
}

/// A session online when its node died was left then: its expiry counts from the node's death, so
/// a client back later than that on another node starts afresh, and one back within it resumes.
#[tokio::test]
async fn a_session_online_when_its_node_died_expires_from_its_death() {
    let nats = nats().await;
    let a = node(&nats, "a").await;
    let (mut killed, c) = node_process(&nats, "c").await;
    let mut watch = watching_brokers(a.addr, "watch-a").await;
    wait_for_brokers(&mut watch, &["a", "c"], Duration::from_secs(3)).await;
    let (mut brief, _) = Raw::connect(c, expiring("online-brief", 1)).await;
    brief.subscribe(1, &[("brief/#", QoS::AtLeastOnce)]).await;
    let (mut lasting, _) = Raw::connect(c, expiring("online-lasting", 60)).await;
    lasting.subscribe(1, &[("lasting/#", QoS::AtLeastOnce)]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    killed.start_kill().unwrap();
    let _ = killed.wait().await;
    wait_for_brokers(&mut watch, &["a"], Duration::from_secs(4)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_brief, present) = Raw::connect(a.addr, expiring("online-brief", 1)).await;
    assert!(!present, "expired 1 s after its node died");
    let (_lasting, present) = Raw::connect(a.addr, expiring("online-lasting", 60)).await;
    assert!(present, "within its expiry");
    a.stop().await;
}

/// What a SIGKILLed node leaves in the cluster's buckets goes without its clients coming back: the
/// record and the claim of a session that expires (it was online, so its expiry runs from the death),
/// and the claim of a client that kept no session; a session without expiry keeps both, and its
/// client resumes it later on another node.
#[tokio::test]
async fn a_dead_nodes_expired_sessions_and_claims_are_swept() {
    let nats = nats().await;
    let a = node(&nats, "a").await;
    let (mut killed, c) = node_process(&nats, "c").await;
    let mut watch = watching_brokers(a.addr, "watch-a").await;
    wait_for_brokers(&mut watch, &["a", "c"], Duration::from_secs(3)).await;
    let (mut brief, _) = Raw::connect(c, expiring("sweep-brief", 2)).await;
    brief.subscribe(1, &[("brief/#", QoS::AtLeastOnce)]).await;
    let (mut kept, _) = Raw::connect(c, connect_packet("sweep-kept", false)).await;
    kept.subscribe(1, &[("kept/#", QoS::AtLeastOnce)]).await;
    let (_plain, _) = Raw::connect(c, connect_packet("sweep-plain", true)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let records = js.get_key_value("midge-session-records").await.unwrap();
    let claims = js.get_key_value("midge-sessions").await.unwrap();
    let has = |store: &async_nats::jetstream::kv::Store, key: &'static str| {
        let store = store.clone();
        async move { store.get(key).await.unwrap().is_some() }
    };
    assert!(has(&records, "sweep-brief").await && has(&claims, "sweep-plain").await, "kept while c lives");
    killed.start_kill().unwrap();
    let _ = killed.wait().await;

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while has(&records, "sweep-brief").await || has(&claims, "sweep-brief").await || has(&claims, "sweep-plain").await {
        let left =
            (has(&records, "sweep-brief").await, has(&claims, "sweep-brief").await, has(&claims, "sweep-plain").await);
        assert!(std::time::Instant::now() < deadline, "the dead node's expired session and plain claim stay: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(has(&records, "sweep-kept").await && has(&claims, "sweep-kept").await, "no expiry: kept");
    let (_kept, present) = Raw::connect(a.addr, connect_packet("sweep-kept", false)).await;
    assert!(present);
    a.stop().await;
}

/// MQTT 5 wills with a delay, of clients of a node that is SIGKILLed: one goes out once, after its
/// delay and not before; one whose client resumes its session on another node within the delay
/// never does.
#[tokio::test]
async fn delayed_wills_of_a_dead_node_wait_out_their_delay_or_are_voided() {
    let nats = nats().await;
    let a = node(&nats, "a").await;
    let (mut killed, c) = node_process(&nats, "c").await;
    let delayed = |client_id: &str, delay: u32| {
        let mut connect = expiring(client_id, 60);
        let mut will = LastWill::new(format!("wills/{client_id}"), bytes::Bytes::from("gone"), QoS::AtLeastOnce, false);
        will.delay_interval = delay;
        connect.will = Some(will);
        connect
    };
    let mut watcher = Raw::connected(a.addr, "watcher").await;
    watcher.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let _late = Raw::connect(c, delayed("late", 4)).await;
    let _back = Raw::connect(c, delayed("back", 4)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    killed.start_kill().unwrap();
    let _ = killed.wait().await;
    let killed_at = std::time::Instant::now();
    // "back" resumes on a within its delay: its will is void.
    let (_resumed, present) = Raw::connect(a.addr, delayed("back", 4)).await;
    assert!(present);
    let Ok(Some(Packet::Publish(got))) = watcher.recv_within(Duration::from_secs(8)).await else {
        panic!("no will within 8 s")
    };
    let waited = killed_at.elapsed();
    assert_eq!(got.topic_str(), "wills/late");
    assert!(waited >= Duration::from_millis(3500), "the will waited out its delay: {waited:?}");
    watcher.send(&Packet::Puback(Ack::new(got.pkid))).await;
    watcher.expect_silence(Duration::from_secs(2)).await;
    a.stop().await;
}
