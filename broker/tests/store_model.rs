//! The store against the router, as a property: after any sequence of what clients do (connect,
//! subscribe, unsubscribe, publish, acknowledge, go away), a broker restarted on its store holds what
//! the running one held, as the management API shows it: the persistent sessions, their subscriptions,
//! how many QoS 1/2 messages each has yet to deliver and how many incoming QoS 2 ids await PUBREL, and
//! the retained messages.
//!
//! Publishes and subscriptions are at QoS 1 and 2: a QoS 0 message queued for an away session is not
//! kept (at most once allows losing it, and keeping it would cost a write for nothing it promises).

mod helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use helpers::*;
use midge_broker::config::Config;
use midge_broker::protocol::*;
use midge_shared::control::{Page, PageRequest, Request, SessionRow, SubscriptionRow};
use proptest::prelude::*;

const CLIENTS: [&str; 3] = ["model-a", "model-b", "model-c"];
const FILTERS: [&str; 4] = ["t/a", "t/+", "t/#", "t/b"];
const TOPICS: [&str; 3] = ["t/a", "t/b", "t/c/d"];
const NODE: &str = "model@127.0.0.1";

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Leave(usize),
    Subscribe(usize, usize, QoS),
    Unsubscribe(usize, usize),
    Publish {
        topic: usize,
        qos: QoS,
        retain: bool,
    },
    /// Completes every delivery waiting for the client (reading and acknowledging what came).
    Acknowledge(usize),
    /// Reads what came and answers QoS 2 deliveries with PUBREC only, leaving them past PUBREC.
    Receive(usize),
    /// A QoS 2 publish left awaiting its PUBREL, from a persistent publisher.
    PublishUnreleased {
        client: usize,
        topic: usize,
    },
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS.len();
    prop_oneof![
        client.clone().prop_map(Op::Connect),
        client.clone().prop_map(Op::Leave),
        (client.clone(), 0..FILTERS.len(), qos()).prop_map(|(c, f, q)| Op::Subscribe(c, f, q)),
        (client.clone(), 0..FILTERS.len()).prop_map(|(c, f)| Op::Unsubscribe(c, f)),
        (0..TOPICS.len(), qos(), any::<bool>()).prop_map(|(topic, qos, retain)| Op::Publish { topic, qos, retain }),
        client.clone().prop_map(Op::Acknowledge),
        client.clone().prop_map(Op::Receive),
        (client, 0..TOPICS.len()).prop_map(|(client, topic)| Op::PublishUnreleased { client, topic }),
    ]
}

/// What the management API shows of the state that is kept.
#[derive(Debug, PartialEq, Eq)]
struct Kept {
    /// Client id -> (subscriptions, QoS 1/2 deliveries pending, incoming QoS 2 awaiting PUBREL).
    sessions: BTreeMap<String, (u64, u64, u64)>,
    subscriptions: BTreeSet<(String, String, u8)>,
    /// Topic -> (payload, QoS).
    retained: BTreeMap<String, (Vec<u8>, QoS)>,
}

async fn kept(addr: std::net::SocketAddr) -> Kept {
    let mut mgmt = Mgmt::connect(addr, NODE).await;
    let all = PageRequest { page: 1, size: 10_000 };
    let sessions: Page<SessionRow> = mgmt.ok(Request::ListSessions(all)).await;
    let subscriptions: Page<SubscriptionRow> = mgmt.ok(Request::ListSubscriptions(all)).await;
    let persistent: BTreeSet<String> =
        sessions.objects.iter().filter(|s| !s.clean_sess).map(|s| s.client_id.clone()).collect();
    let mut retained = BTreeMap::new();
    let mut reader = Raw::connected(addr, "model-reader").await;
    reader.subscribe(1, &[("t/#", QoS::ExactlyOnce)]).await;
    while let Ok(Some(Packet::Publish(p))) = reader.recv_within(Duration::from_millis(150)).await {
        retained.insert(p.topic_str().to_string(), (p.payload.to_vec(), p.qos));
    }
    reader.disconnect().await;
    Kept {
        sessions: sessions
            .objects
            .into_iter()
            .filter(|s| !s.clean_sess)
            .map(|s| (s.client_id, (s.subscriptions, s.inflight_len + s.mqueue_len, s.awaiting_rel_len)))
            .collect(),
        subscriptions: subscriptions
            .objects
            .into_iter()
            .filter(|s| persistent.contains(&s.client_id))
            .map(|s| (s.client_id, s.topic, s.qos))
            .collect(),
        retained,
    }
}

fn persistent_config(dir: &Path) -> Config {
    Config {
        persistence: true,
        data_dir: dir.to_path_buf(),
        node: NODE.into(),
        // Not a delivery is dropped for a full queue: that is not what is compared here.
        max_mqueue_len: 10_000,
        // Queues longer than two wait in the store: read back, they must still count the same.
        max_mqueue_in_memory: 2,
        ..mgmt_config()
    }
}

/// Reads what has come for `client`; with `complete`, acknowledges every delivery to its end, else
/// answers QoS 2 ones with PUBREC only.
async fn read(client: &mut Raw, complete: bool) {
    while let Ok(Some(packet)) = client.recv_within(Duration::from_millis(60)).await {
        match packet {
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce => client.send(&Packet::Puback(Ack::new(p.pkid))).await,
            Packet::Publish(p) if p.qos == QoS::ExactlyOnce => client.send(&Packet::Pubrec(Ack::new(p.pkid))).await,
            Packet::Pubrel(ack) if complete => client.send(&Packet::Pubcomp(Ack::new(ack.pkid))).await,
            _ => {}
        }
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempdir();
    let broker = start(persistent_config(&dir)).await;
    let addr = broker.addr;
    let mut online: Vec<Option<Raw>> = (0..CLIENTS.len()).map(|_| None).collect();
    let mut publisher = Raw::connected(addr, "model-publisher").await;
    let mut pkid = 0u16;
    let mut next_pkid = || {
        pkid = pkid % 60_000 + 1;
        pkid
    };
    for (n, op) in ops.iter().enumerate() {
        match *op {
            Op::Connect(c) => {
                if online[c].is_none() {
                    online[c] = Some(Raw::connect(addr, connect_packet(CLIENTS[c], false)).await.0);
                }
            }
            Op::Leave(c) => {
                if let Some(client) = online[c].take() {
                    client.disconnect().await;
                }
            }
            Op::Subscribe(c, f, qos) => {
                if let Some(client) = online[c].as_mut() {
                    let id = next_pkid();
                    client.send(&subscribe(id, &[(FILTERS[f], qos)])).await;
                    read(client, false).await;
                }
            }
            Op::Unsubscribe(c, f) => {
                if let Some(client) = online[c].as_mut() {
                    let id = next_pkid();
                    client.send(&unsubscribe(id, &[FILTERS[f]])).await;
                    read(client, false).await;
                }
            }
            Op::Publish { topic, qos, retain } => {
                let payload = format!("m{n}");
                let id = next_pkid();
                let packet = if retain {
                    retained(TOPICS[topic], payload.as_bytes(), qos, id)
                } else {
                    publish(TOPICS[topic], payload.as_bytes(), qos, id)
                };
                publisher.send(&packet).await;
                match publisher.recv().await {
                    Some(Packet::Puback(_)) => {}
                    Some(Packet::Pubrec(ack)) => {
                        publisher.send(&Packet::Pubrel(Ack::new(ack.pkid))).await;
                        prop_assert!(matches!(publisher.recv().await, Some(Packet::Pubcomp(_))));
                    }
                    other => prop_assert!(false, "publish {op:?}: {other:?}"),
                }
            }
            Op::Acknowledge(c) | Op::Receive(c) => {
                if let Some(client) = online[c].as_mut() {
                    read(client, matches!(op, Op::Acknowledge(_))).await;
                }
            }
            Op::PublishUnreleased { client: c, topic } => {
                if let Some(client) = online[c].as_mut() {
                    let id = next_pkid();
                    client.send(&publish(TOPICS[topic], format!("u{n}").as_bytes(), QoS::ExactlyOnce, id)).await;
                    read(client, false).await;
                }
            }
        }
    }
    for client in online.iter_mut().flatten() {
        read(client, false).await;
        client.ping().await;
    }
    publisher.disconnect().await;
    let before = kept(addr).await;
    for client in online.into_iter().flatten() {
        client.disconnect().await;
    }
    broker.stop().await;

    let broker = start(persistent_config(&dir)).await;
    let after = kept(broker.addr).await;
    broker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    prop_assert_eq!(before, after, "ops: {:?}", ops);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_restarted_broker_holds_what_the_running_one_held(ops in proptest::collection::vec(op(), 1..30)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run(ops))?;
    }
}
