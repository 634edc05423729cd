//! Scale, in the router alone (no sockets): a million subscriptions on distinct topics and 100k
//! wildcard filters (memory per subscription, subscribe and match time), and a million retained
//! messages (memory per message, and how fast a `#` subscription collects them all).
//! `cargo bench -p midge-broker --bench scale`; figures in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use midge_broker::metrics::{Metrics, Stats};
use midge_broker::protocol::{QoS, SubscriptionOptions};
use midge_broker::router::subscriptions::SubscriptionTree;
use midge_broker::router::{self, ClientMeta, OutboxItem, RouterHandle, Wiring};
use midge_broker::session::Message;

const TOPICS: usize = 1_000_000;
const WILDCARDS: usize = 100_000;
const RETAINED: usize = 1_000_000;

/// Bytes in live allocations (glibc's count).
fn heap_in_use() -> u64 {
    midge_broker::ops::sys::heap().used
}

fn subscriptions() {
    let options = SubscriptionOptions::qos(QoS::AtMostOnce);
    let clients: Vec<Arc<str>> = (0..TOPICS).map(|i| Arc::from(format!("device-{i:07}"))).collect();
    let filters: Vec<String> = (0..TOPICS).map(|i| format!("devices/{i:07}/status")).collect();
    let wildcards: Vec<String> = (0..WILDCARDS).map(|i| format!("fleet/{i:06}/+/temp")).collect();
    let before = heap_in_use();
    let mut tree = SubscriptionTree::new();
    let started = Instant::now();
    for (client, filter) in clients.iter().zip(&filters) {
        tree.subscribe(filter, client, options);
    }
    let plain = started.elapsed();
    let started = Instant::now();
    for (client, filter) in clients.iter().zip(&wildcards) {
        tree.subscribe(filter, client, options);
    }
    let wild = started.elapsed();
    let bytes = heap_in_use().saturating_sub(before);
    let count = TOPICS + WILDCARDS;
    println!(
        "{count} subscriptions: {:.0} bytes each in the trie; subscribe {:.0} ns each (distinct topics), {:.0} ns (wildcards)",
        bytes as f64 / count as f64,
        plain.as_nanos() as f64 / TOPICS as f64,
        wild.as_nanos() as f64 / WILDCARDS as f64
    );
    let (mut out, mut groups) = (Vec::new(), Vec::new());
    for (label, topic) in [("a distinct topic", "devices/0500000/status"), ("a wildcard filter", "fleet/050000/x/temp")]
    {
        let rounds = 1_000_000;
        let started = Instant::now();
        for _ in 0..rounds {
            out.clear();
            groups.clear();
            tree.matches(black_box(topic), &mut out, &mut groups);
        }
        let each = started.elapsed().as_nanos() as f64 / rounds as f64;
        println!("  match {label} among them: {each:.0} ns ({} match)", out.len());
    }
}

fn retained() {
    let wiring = Wiring {
        retaining: Arc::new(AtomicBool::new(true)),
        metrics: Arc::new(Metrics::default()),
        stats: Arc::new(Stats::default()),
        node: "bench@127.0.0.1".into(),
        shared_strategy: Default::default(),
        journal: None,
        uplink: None,
    };
    let router = RouterHandle::new(midge_broker::Config::default().session_limits(), wiring);
    let payload = Bytes::from(vec![7u8; 64]);
    let topics: Vec<Bytes> = (0..RETAINED).map(|i| Bytes::from(format!("state/{i:07}/last"))).collect();
    let before = heap_in_use();
    let started = Instant::now();
    for topic in topics {
        router.publish(Arc::new(Message::new(topic, payload.clone(), QoS::AtMostOnce, true)));
    }
    let stored = started.elapsed();
    let bytes = heap_in_use().saturating_sub(before);
    println!(
        "{RETAINED} retained messages (64-byte payloads): {:.0} bytes each; stored at {:.0}k/s",
        bytes as f64 / RETAINED as f64,
        RETAINED as f64 / stored.as_secs_f64() / 1000.0
    );
    let (outbox, receiver) = router::outbox(1);
    let meta = ClientMeta {
        username: None,
        peer: "127.0.0.1:1883".parse::<std::net::SocketAddr>().expect("an address").into(),
        clean_session: true,
        expiry: Some(Duration::ZERO),
        proto_ver: 4,
        keepalive: 60,
        connected_at: 0,
        hidden: false,
    };
    // The router answers at once for a new client id; the answer is not needed here.
    drop(router.connect(Arc::from("everything"), meta, outbox));
    let started = Instant::now();
    router.subscribe(Arc::from("everything"), 1, 1, vec![("#".into(), Ok(SubscriptionOptions::qos(QoS::AtMostOnce)))]);
    let collected = started.elapsed();
    let delivered = match receiver.take_all().into_iter().next() {
        Some(OutboxItem::Subscribed(subscribed)) => subscribed.1.len(),
        _ => 0,
    };
    println!(
        "  a # subscription collects {delivered} of them in {collected:.2?}: {:.0}k/s (router only; the socket writes follow)",
        delivered as f64 / collected.as_secs_f64() / 1000.0
    );
}

fn main() {
    subscriptions();
    retained();
}
