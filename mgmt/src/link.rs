//! The sidecar's MQTT link to the broker: it logs in as the management principal, sends control requests
//! and matches replies to waiters, and keeps the list of nodes that answer.
//!
//! A node exists when it answers. On connecting and at every heartbeat the link asks every node at once
//! who it is (a node-info request on the discovery topic, which every node answers), and lists each one
//! that replies. A listed node that lets two heartbeats in a row go unanswered is dropped, so its routes
//! answer 101 at once instead of waiting out the request timeout; it is listed again when it answers.
//! Nothing else makes a node: not `$SYS`, whose retained messages anyone with a stale copy could replay.
//! Each node that appears, or answers with a smaller uptime than before (it restarted), is announced on
//! a channel, for the stored desired state to be pushed to it (see `desired.rs`). The link reconnects on
//! its own with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use midge_shared::calls::Call;
use midge_shared::control::{self, code, NodeInfo, Outcome, ReplyEnvelope, Request, RequestEnvelope};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::error::ApiError;

/// A listed node is dropped after this many heartbeats in a row without an answer (one could be a
/// moment of load).
const MISSES_TO_DROP: u32 = 2;
/// Ids of discovery requests start with this; their replies come from every node.
const DISCOVERY_ID: &str = "discover-";

/// Node names announced when they appear (or restart), for the desired state to be pushed to them.
pub type Appeared = mpsc::UnboundedReceiver<String>;

/// A node that answered.
#[derive(Debug, Clone)]
struct Node {
    /// The control protocol version to speak to it: the newer of its own and ours.
    version: u32,
    /// Its uptime at its last answer, to tell a restart.
    uptime: u64,
    /// Heartbeats since its last answer.
    missed: u32,
}

pub struct Link {
    client: AsyncClient,
    reply_topic: String,
    timeout: Duration,
    heartbeat: Duration,
    connected: AtomicBool,
    next_id: AtomicU64,
    pending: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// Nodes that answer, by name.
    nodes: Mutex<BTreeMap<String, Node>>,
    appeared: mpsc::UnboundedSender<String>,
    started: Instant,
    /// Milliseconds after `started` of the last answer from any node (0: none yet).
    last_answer_ms: AtomicU64,
}

impl Link {
    /// Connects (in the background) and returns at once; requests fail with 101 until a node answers.
    pub fn start(config: &Config) -> Result<(Arc<Link>, Appeared), String> {
        let client_id = format!("{}{:08x}", control::CLIENT_ID_PREFIX, rand::random::<u32>());
        let credentials = (config.mgmt_username.clone(), config.mgmt_secret.clone().unwrap_or_default());
        let brokers = Brokers { client_id: client_id.clone(), credentials, addresses: config.brokers()? };
        let (client, mut eventloop) = AsyncClient::new(brokers.options(0), 256);
        // Without it a request waits behind the PUBACK of the previous reply until the broker's
        // delayed ACK comes (Nagle's algorithm): some 40 ms on every call after the first.
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (appeared, announcements) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            client,
            reply_topic: control::reply_topic(&client_id),
            timeout: config.request_timeout(),
            heartbeat: config.heartbeat(),
            connected: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            nodes: Mutex::new(BTreeMap::new()),
            appeared,
            started: Instant::now(),
            last_answer_ms: AtomicU64::new(0),
        });
        tokio::spawn(run(link.clone(), eventloop, brokers));
        tokio::spawn(heartbeat(Arc::downgrade(&link)));
        Ok((link, announcements))
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// How long since any node last answered (since the link started, if none has yet).
    pub fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.last_answer_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Whether any node has answered since the link started.
    pub fn ever_answered(&self) -> bool {
        self.last_answer_ms.load(Ordering::Relaxed) > 0
    }

    /// Nodes that answer, sorted by name.
    pub fn nodes(&self) -> Vec<String> {
        lock(&self.nodes).keys().cloned().collect()
    }

    /// Nodes that answer, sorted by name; 101 if none does (a route over every node has nobody to ask).
    pub fn answering(&self) -> Result<Vec<String>, ApiError> {
        let nodes = self.nodes();
        if nodes.is_empty() {
            let why = if self.is_connected() { "no broker node answers" } else { "broker not connected" };
            return Err(ApiError::badrpc(why));
        }
        Ok(nodes)
    }

    /// The control protocol version to speak to `node`; 101 for a node that is not answering (or was
    /// never heard of).
    pub fn known(&self, node: &str) -> Result<u32, ApiError> {
        match lock(&self.nodes).get(node) {
            Some(listed) => Ok(listed.version),
            None => Err(ApiError::badrpc(format!("unknown node {node}"))),
        }
    }

    /// Sends a request to a node and waits for its reply, at most the configured timeout; the reply is
    /// read as the type the contract gives it.
    pub async fn call<Reply: DeserializeOwned>(&self, node: &str, call: Call<Reply>) -> Result<Reply, ApiError> {
        let version = self.known(node)?;
        if call.since > version {
            return Err(ApiError::badrpc(format!(
                "node {node} speaks control protocol v{version}; this request needs v{}",
                call.since
            )));
        }
        let value = self.send(node, version, call.request.clone()).await?;
        call.reply(value).map_err(|e| ApiError::badrpc(format!("unexpected reply from {node}: {e}")))
    }

    async fn send(&self, node: &str, version: u32, request: Request) -> Result<serde_json::Value, ApiError> {
        if !self.is_connected() {
            return Err(ApiError::badrpc("broker not connected"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        if let Err(e) = self.publish(&control::request_topic(node), version, id.clone(), request) {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Outcome::Ok(value))) => Ok(value),
            Ok(Ok(Outcome::Err(e))) => Err(e.into()),
            Ok(Err(_)) => Err(ApiError::badrpc("broker connection lost")),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ApiError::badrpc(format!("node {node} did not answer in time")))
            }
        }
    }

    fn publish(&self, topic: &str, v: u32, id: String, request: Request) -> Result<(), ApiError> {
        let envelope = RequestEnvelope { v, id, reply_to: self.reply_topic.clone(), request };
        let payload = serde_json::to_vec(&envelope).map_err(|e| ApiError::new(code::UNKNOWN, e.to_string()))?;
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| ApiError::badrpc(format!("cannot send to broker: {e}")))
    }

    /// Asks every node who it is; the answers come as replies to a discovery id (see `incoming`).
    /// Every listed node has missed this heartbeat until it answers; those that missed too many are
    /// dropped.
    fn discover(&self) {
        let mut dropped = Vec::new();
        lock(&self.nodes).retain(|name, node| {
            node.missed += 1;
            let keep = node.missed <= MISSES_TO_DROP;
            if !keep {
                dropped.push(name.clone());
            }
            keep
        });
        for node in dropped {
            tracing::warn!(%node, "node stopped answering; no longer listed");
        }
        let id = format!("{DISCOVERY_ID}{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        // In the oldest version: every node understands it, and says in its answer which it speaks.
        let request = Request::node_info().request;
        if let Err(e) = self.publish(control::DISCOVERY_TOPIC, control::OLDEST_VERSION, id, request) {
            tracing::debug!(error = %e.message, "cannot ask the nodes who they are");
        }
    }

    /// A node answered a discovery request: listed, and announced if it is new or has restarted.
    fn answered_discovery(&self, info: NodeInfo) {
        let uptime = midge_shared::sys::uptime_seconds(&info.uptime);
        let version = info.control_version.min(control::VERSION);
        let previous = lock(&self.nodes).insert(info.name.clone(), Node { version, uptime, missed: 0 });
        match previous {
            None => tracing::info!(node = %info.name.escape_debug(), "node answers"),
            Some(before) if uptime < before.uptime => {
                tracing::info!(node = %info.name.escape_debug(), "node restarted")
            }
            Some(_) => return,
        }
        let _ = self.appeared.send(info.name);
    }

    fn answered(&self) {
        let now = self.started.elapsed().as_millis().max(1) as u64;
        self.last_answer_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Handles one incoming publish: a reply, for its waiter or for discovery.
    fn incoming(&self, topic: &str, payload: &[u8]) {
        if topic != self.reply_topic {
            return;
        }
        let reply = match serde_json::from_slice::<ReplyEnvelope>(payload) {
            Ok(reply) => reply,
            Err(e) => return tracing::warn!(error = %e, "malformed control reply"),
        };
        self.answered();
        if reply.id.starts_with(DISCOVERY_ID) {
            match reply.outcome {
                Outcome::Ok(value) => match serde_json::from_value::<NodeInfo>(value) {
                    Ok(info) => self.answered_discovery(info),
                    Err(e) => tracing::warn!(error = %e, "malformed node info"),
                },
                Outcome::Err(e) => tracing::warn!(error = %e.message, "a node refused to say who it is"),
            }
        } else if let Some(waiter) = lock(&self.pending).remove(&reply.id) {
            let _ = waiter.send(reply.outcome);
        }
    }

    /// A new connection: every node must answer again, and replies to the old one will not come.
    fn reset(&self) {
        lock(&self.pending).clear();
        lock(&self.nodes).clear();
    }
}

/// A panic elsewhere while holding one of these leaves plain data that is still valid.
/// Runs `task` with the link every `period` (a late tick is not made up for), until `shutdown` fires
/// or the link is gone: the sidecar's background followers of the nodes.
pub async fn every(
    link: Weak<Link>,
    period: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    mut task: impl FnMut(Arc<Link>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(link) = link.upgrade() else { return };
        task(link).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The brokers the sidecar may be a client of, in the order given.
struct Brokers {
    client_id: String,
    /// The management principal's username and secret.
    credentials: (String, String),
    addresses: Vec<(String, u16)>,
}

impl Brokers {
    /// The connection to the `n`th broker (modulo their number).
    fn options(&self, n: usize) -> MqttOptions {
        let (host, port) = self.addresses[n % self.addresses.len()].clone();
        let mut options = MqttOptions::new(self.client_id.clone(), host, port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_session(true);
        // Listings are paged, but a page of long client ids is still larger than rumqttc's default.
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (username, secret) = self.credentials.clone();
        options.set_credentials(username, secret);
        options
    }
}

async fn run(link: Arc<Link>, mut eventloop: EventLoop, brokers: Brokers) {
    let mut backoff = Duration::from_millis(200);
    let mut current = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(code = ?ack.code, "connected to broker");
                backoff = Duration::from_millis(200);
                link.reset();
                link.connected.store(true, Ordering::Relaxed);
                // The broker handles the subscription before the discovery request behind it.
                if let Err(e) = link.client.try_subscribe(link.reply_topic.clone(), QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "cannot subscribe to control replies");
                }
                link.discover();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => link.incoming(&publish.topic, &publish.payload),
            Ok(_) => {}
            Err(e) => {
                if link.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "lost the broker; reconnecting");
                } else {
                    tracing::debug!(error = %e, "broker not reachable");
                }
                link.reset();
                if brokers.addresses.len() > 1 {
                    // The next broker of the cluster; the backoff grows once every one has failed.
                    current += 1;
                    eventloop.mqtt_options = brokers.options(current);
                    let (host, port) = eventloop.mqtt_options.broker_address();
                    tracing::info!(broker = %format!("{host}:{port}"), "trying the next broker");
                    if current % brokers.addresses.len() != 0 {
                        continue;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Asks every node who it is, every heartbeat, until the link is dropped.
async fn heartbeat(link: Weak<Link>) {
    let every = match link.upgrade() {
        Some(link) => link.heartbeat,
        None => return,
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(link) = link.upgrade() else { return };
        if link.is_connected() {
            link.discover();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: &str, name: &str, uptime: &str) -> Vec<u8> {
        let info = serde_json::json!({
            "name": name, "version": "0", "sysdescr": "", "uptime": uptime, "datetime": "", "otp_release": "",
            "node_status": "Running", "memory_total": "", "memory_used": "", "process_available": 0,
            "process_used": 0, "max_fds": 0, "clients": 0, "load1": "", "load5": "", "load15": ""
        });
        serde_json::to_vec(&serde_json::json!({"v": 1, "id": id, "ok": info})).unwrap()
    }

    /// Only an answer lists a node; a restart (smaller uptime) announces it again; two heartbeats
    /// without an answer drop it; `$SYS` counts for nothing.
    #[tokio::test]
    async fn nodes_are_those_that_answer() {
        // Nothing listens on port 1: the link never connects, and the test plays the broker's part.
        let config = <Config as clap::Parser>::parse_from(["midge-mgmt", "--broker", "127.0.0.1:1"]);
        let (link, mut appeared) = Link::start(&config).unwrap();
        let replies = link.reply_topic.clone();
        link.incoming("$SYS/brokers", b"ghost@nowhere");
        link.incoming("$SYS/brokers/ghost@nowhere/version", b"9.9");
        link.incoming(&replies, &reply("7", "ghost@nowhere", "5 seconds"));
        assert!(link.nodes().is_empty(), "neither $SYS nor a reply to no discovery lists a node");

        link.incoming(&replies, &reply("discover-1", "a@h", "5 seconds"));
        assert_eq!(link.nodes(), vec!["a@h"]);
        assert_eq!(appeared.try_recv().ok().as_deref(), Some("a@h"));
        link.incoming(&replies, &reply("discover-2", "a@h", "9 seconds"));
        assert!(appeared.try_recv().is_err(), "still running: nothing to push");
        link.incoming(&replies, &reply("discover-3", "a@h", "1 seconds"));
        assert_eq!(appeared.try_recv().ok().as_deref(), Some("a@h"), "restarted: pushed again");

        // A node speaking an older control protocol than a request needs is not sent it.
        let mut old = serde_json::from_slice::<serde_json::Value>(&reply("discover-4", "old@h", "1 seconds")).unwrap();
        old["ok"]["control_version"] = 0.into();
        link.incoming(&replies, &serde_json::to_vec(&old).unwrap());
        let refused = link.call("old@h", Request::metrics()).await.unwrap_err();
        assert!(refused.message.contains("speaks control protocol v0"), "{refused:?}");
        assert_eq!(link.known("a@h").unwrap(), 1, "a node without the field speaks v1");

        link.discover();
        link.discover();
        assert_eq!(link.nodes(), vec!["a@h", "old@h"], "two heartbeats missed: still listed");
        link.discover();
        assert!(link.nodes().is_empty(), "a third: dropped (old@h too)");
        assert!(link.known("a@h").is_err());
    }
}
