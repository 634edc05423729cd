//! The hot functions: codec, topic matching against 10k filters, fanning one message out to 1k
//! sessions, and routing one publish to 1k connections. `cargo bench -p midge-broker`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use midge_broker::metrics::{Metrics, Stats};
use midge_broker::protocol::{self, Packet, Protocol, Publish, QoS, SubscriptionOptions};
use midge_broker::router::subscriptions::SubscriptionTree;
use midge_broker::router::{self, ClientMeta, RouterHandle, Wiring};
use midge_broker::session::{Delivery, Message, Session, SessionLimits};

fn publish_64() -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::from_static(b"sensors/building-7/floor-3/temperature"),
        pkid: 42,
        payload: Bytes::from(vec![7u8; 64]),
        properties: None,
    })
}

fn codec_benches(c: &mut Criterion) {
    let packet = publish_64();
    let mut encoded = BytesMut::new();
    protocol::encode(&packet, Protocol::V311, &mut encoded);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode publish 64 B", |b| {
        let mut buf = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            protocol::encode(black_box(&packet), Protocol::V311, &mut buf);
            if buf.len() > 60_000 {
                buf.clear();
            }
        })
    });
    group.bench_function("decode publish 64 B", |b| {
        b.iter(|| {
            let mut buf = encoded.clone();
            black_box(protocol::decode(&mut buf, Protocol::V311, usize::MAX).unwrap())
        })
    });
    group.finish();
}

fn matching_benches(c: &mut Criterion) {
    let mut tree = SubscriptionTree::new();
    for i in 0..10_000 {
        let client: Arc<str> = Arc::from(format!("client-{i}"));
        let filter = match i % 4 {
            0 => format!("sensors/building-{}/floor-{}/temperature", i % 100, i % 10),
            1 => format!("sensors/building-{}/+/humidity", i % 100),
            2 => format!("site/{}/#", i),
            _ => format!("devices/{i}/status"),
        };
        tree.subscribe(&filter, &client, SubscriptionOptions::qos(QoS::AtMostOnce));
    }
    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::new();
    for topic in ["sensors/building-7/floor-7/temperature", "devices/4243/status", "nothing/matches/here"] {
        group.bench_function(format!("10k filters: {topic}"), |b| {
            b.iter(|| {
                out.clear();
                tree.matches(black_box(topic), &mut out, &mut Vec::new());
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn qos0_message_64() -> Arc<Message> {
    Arc::new(Message::new(
        Bytes::from_static(b"sensors/building-7/floor-3/temperature"),
        Bytes::from(vec![7u8; 64]),
        QoS::AtMostOnce,
        false,
    ))
}

fn limits() -> SessionLimits {
    SessionLimits {
        expiry: None,
        max_inflight: 32,
        max_mqueue_len: 1000,
        mqueue_store_qos0: true,
        max_awaiting_rel: 100,
        await_rel_timeout: Duration::from_secs(20),
        spill: None,
    }
}

fn fanout_benches(c: &mut Criterion) {
    let limits = Arc::new(limits());
    let mut sessions: Vec<(Session, BytesMut)> = (0..1000)
        .map(|i| {
            (
                Session::new(Arc::from(format!("s{i}")), Some(std::time::Duration::ZERO), limits.clone()),
                BytesMut::with_capacity(1 << 16),
            )
        })
        .collect();
    let message = qos0_message_64();
    let mut group = c.benchmark_group("fan-out");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("one QoS 0 message to 1k sessions (deliver + encode)", |b| {
        b.iter(|| {
            for (session, buf) in sessions.iter_mut() {
                let mut dropped = false;
                let delivery = Delivery::new(message.clone(), QoS::AtMostOnce, false);
                if let Some(publish) = session.deliver(delivery, &mut dropped) {
                    protocol::encode(&Packet::Publish(publish), Protocol::V311, buf);
                }
                if buf.len() > 60_000 {
                    buf.clear();
                }
            }
        })
    });
    group.finish();
}

/// What a publisher's connection does per read: take the router's lock, match, and push an `Arc` into
/// each subscriber's outbox; and what each subscriber's connection then does: take its outbox.
fn routing_benches(c: &mut Criterion) {
    let wiring = Wiring {
        retaining: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        metrics: Arc::new(Metrics::default()),
        stats: Arc::new(Stats::default()),
        node: "bench@127.0.0.1".into(),
        shared_strategy: Default::default(),
        journal: None,
        uplink: None,
    };
    let router = RouterHandle::new(limits(), wiring);
    let mut receivers = Vec::new();
    for i in 0..1000u64 {
        let client_id: Arc<str> = Arc::from(format!("sub-{i}"));
        let (outbox, receiver) = router::outbox(i);
        let meta = ClientMeta {
            username: None,
            peer: "127.0.0.1:1883".parse::<std::net::SocketAddr>().unwrap().into(),
            clean_session: true,
            expiry: Some(std::time::Duration::ZERO),
            proto_ver: 4,
            keepalive: 60,
            connected_at: 0,
            hidden: false,
        };
        let _outcome = router.connect(client_id.clone(), meta, outbox);
        let filters =
            vec![("sensors/+/floor-3/temperature".to_string(), Ok(SubscriptionOptions::qos(QoS::AtMostOnce)))];
        router.subscribe(client_id, i, 1, filters);
        receivers.push(receiver);
    }
    for receiver in &receivers {
        receiver.take_all(); // the SUBACKs
    }
    let message = qos0_message_64();
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1000));
    let mut batch = thin_vec::ThinVec::with_capacity(1);
    let publisher: midge_broker::session::ClientId = "publisher".into();
    group.bench_function("one QoS 0 publish to 1k connections (route + take)", |b| {
        b.iter(|| {
            batch.push(message.clone());
            black_box(router.publish_batch(&mut batch, &publisher));
            for receiver in &receivers {
                black_box(receiver.take_all());
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = codec_benches, matching_benches, fanout_benches, routing_benches
}
criterion_main!(benches);
