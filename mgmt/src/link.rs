//! The sidecar's MQTT link to the broker: it logs in as the management principal, sends control requests
//! and matches replies to waiters, and keeps the list of nodes that answer.
//!
//! A node exists when it answers. `$SYS` only says where to look: a node named there is asked for its
//! node info, and listed once it replies under that name. A heartbeat asks every listed node again, and
//! one that stops answering is dropped (and asked again at every heartbeat, to be listed again when it
//! answers), so a node that is gone (or a stale retained `$SYS` message about one that never was)
//! cannot stall every route for a request timeout. Each node that appears, or that
//! answers with a smaller uptime than before (it restarted), is announced on a channel, for the stored
//! desired state to be pushed to it (see `desired.rs`). The link reconnects on its own with backoff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use midge_shared::control::{self, code, NodeInfo, Outcome, ReplyEnvelope, Request, RequestEnvelope};
use midge_shared::topics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::error::ApiError;

/// A node named in `$SYS` but not (yet) answering is asked at most this often.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Unconfirmed node names remembered at once; `$SYS` cannot make the sidecar hold more.
const MAX_CANDIDATES: usize = 64;

/// Node names announced when they appear (or restart), for the desired state to be pushed to them.
pub type Appeared = mpsc::UnboundedReceiver<String>;

/// A node that answered.
#[derive(Debug, Clone)]
struct Node {
    /// Its uptime at its last answer, to tell a restart.
    uptime: u64,
}

pub struct Link {
    client: AsyncClient,
    reply_topic: String,
    timeout: Duration,
    heartbeat: Duration,
    connected: AtomicBool,
    next_id: AtomicU64,
    pending: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// Nodes that answered, by name.
    nodes: Mutex<BTreeMap<String, Node>>,
    /// Names seen in `$SYS` that have not answered, with when they were last asked.
    candidates: Mutex<HashMap<String, Instant>>,
    /// Nodes that answered and then stopped, asked again at every heartbeat.
    lost: Mutex<BTreeSet<String>>,
    appeared: mpsc::UnboundedSender<String>,
    started: Instant,
    /// Milliseconds after `started` of the last answer from any node (0: none yet).
    last_answer_ms: AtomicU64,
}

impl Link {
    /// Connects (in the background) and returns at once; requests fail with 101 until a node answers.
    pub fn start(config: &Config) -> Result<(Arc<Link>, Appeared), String> {
        let (host, port) = config.broker_host_port()?;
        let client_id = format!("{}{:08x}", control::CLIENT_ID_PREFIX, rand::random::<u32>());
        let mut options = MqttOptions::new(client_id.clone(), host, port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_session(true);
        // Listings are paged, but a page of long client ids is still larger than rumqttc's default.
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        options.set_credentials(config.mgmt_username.clone(), config.mgmt_secret.clone().unwrap_or_default());
        let (client, eventloop) = AsyncClient::new(options, 256);
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
            candidates: Mutex::new(HashMap::new()),
            lost: Mutex::new(BTreeSet::new()),
            appeared,
            started: Instant::now(),
            last_answer_ms: AtomicU64::new(0),
        });
        tokio::spawn(run(link.clone(), eventloop));
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

    /// 101 for a node that is not answering (or was never heard of).
    pub fn known(&self, node: &str) -> Result<(), ApiError> {
        if lock(&self.nodes).contains_key(node) {
            Ok(())
        } else {
            Err(ApiError::badrpc(format!("unknown node {node}")))
        }
    }

    /// Sends a request to a node and waits for its reply, at most the configured timeout.
    pub async fn request(&self, node: &str, request: Request) -> Result<serde_json::Value, ApiError> {
        self.known(node)?;
        self.send(node, request).await
    }

    /// `request`, with the reply read as `T`.
    pub async fn ask<T: DeserializeOwned>(&self, node: &str, request: Request) -> Result<T, ApiError> {
        let value = self.request(node, request).await?;
        parse(node, value)
    }

    /// Sends a request to `node`, listed or not, and waits for its reply.
    async fn send(&self, node: &str, request: Request) -> Result<serde_json::Value, ApiError> {
        if !self.is_connected() {
            return Err(ApiError::badrpc("broker not connected"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let envelope =
            RequestEnvelope { v: control::VERSION, id: id.clone(), reply_to: self.reply_topic.clone(), request };
        let payload = serde_json::to_vec(&envelope).map_err(|e| ApiError::new(code::UNKNOWN, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        let sent = self.client.try_publish(control::request_topic(node), QoS::AtLeastOnce, false, payload);
        let outcome = match sent {
            Ok(()) => tokio::time::timeout(self.timeout, rx).await,
            Err(e) => {
                lock(&self.pending).remove(&id);
                return Err(ApiError::badrpc(format!("cannot send to broker: {e}")));
            }
        };
        match outcome {
            Ok(Ok(outcome)) => {
                self.answered();
                match outcome {
                    Outcome::Ok(value) => Ok(value),
                    Outcome::Err(e) => Err(e.into()),
                }
            }
            Ok(Err(_)) => Err(ApiError::badrpc("broker connection lost")),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ApiError::badrpc(format!("node {node} did not answer in time")))
            }
        }
    }

    fn answered(&self) {
        let now = self.started.elapsed().as_millis().max(1) as u64;
        self.last_answer_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Asks `node` who it is. Lists it if it answers under that name, and announces it if it is new
    /// or has restarted; drops it if it does not answer.
    async fn probe(&self, node: &str) {
        let info = match self.send(node, Request::NodeInfo).await.and_then(|v| parse::<NodeInfo>(node, v)) {
            Ok(info) if info.name == node => info,
            Ok(info) => {
                tracing::warn!(node = %node.escape_debug(), answered_as = %info.name.escape_debug(), "node answered under another name");
                return self.drop_node(node);
            }
            Err(e) => return self.drop_node_after(node, &e),
        };
        lock(&self.candidates).remove(node);
        lock(&self.lost).remove(node);
        let uptime = midge_shared::sys::uptime_seconds(&info.uptime);
        let previous = lock(&self.nodes).insert(node.to_string(), Node { uptime });
        match previous {
            None => tracing::info!(%node, "node answers"),
            Some(before) if uptime < before.uptime => tracing::info!(%node, "node restarted"),
            Some(_) => return,
        }
        let _ = self.appeared.send(node.to_string());
    }

    fn drop_node_after(&self, node: &str, error: &ApiError) {
        if lock(&self.nodes).remove(node).is_some() {
            tracing::warn!(%node, error = %error.message, "node stopped answering; no longer listed");
            lock(&self.lost).insert(node.to_string());
        }
    }

    fn drop_node(&self, node: &str) {
        lock(&self.nodes).remove(node);
    }

    /// A node named in `$SYS`: to be asked who it is, unless it is listed or was asked recently.
    fn candidate(&self, node: &str) -> bool {
        if node.is_empty() || lock(&self.nodes).contains_key(node) {
            return false;
        }
        let mut candidates = lock(&self.candidates);
        let now = Instant::now();
        candidates.retain(|_, asked| now.duration_since(*asked) < PROBE_EVERY);
        if candidates.contains_key(node) || candidates.len() >= MAX_CANDIDATES {
            return false;
        }
        candidates.insert(node.to_string(), now);
        true
    }

    fn subscribe_all(&self) {
        let filters = [
            (self.reply_topic.clone(), QoS::AtLeastOnce),
            // Both retained: a node names itself in them as soon as the link subscribes.
            (topics::SYS_BROKERS.to_string(), QoS::AtMostOnce),
            ("$SYS/brokers/+/version".to_string(), QoS::AtMostOnce),
        ];
        for (filter, qos) in filters {
            if let Err(e) = self.client.try_subscribe(filter.clone(), qos) {
                tracing::warn!(%filter, error = %e, "cannot subscribe");
            }
        }
    }

    /// Handles one incoming publish: a reply for a waiter, or node names from `$SYS`, which it returns
    /// for probing.
    fn incoming(&self, topic: &str, payload: &[u8]) -> Vec<String> {
        if topic == self.reply_topic {
            match serde_json::from_slice::<ReplyEnvelope>(payload) {
                Ok(reply) => {
                    if let Some(waiter) = lock(&self.pending).remove(&reply.id) {
                        let _ = waiter.send(reply.outcome);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "malformed control reply"),
            }
            return Vec::new();
        }
        let named: Vec<String> = if topic == topics::SYS_BROKERS {
            String::from_utf8_lossy(payload).split(',').map(|n| n.trim().to_string()).collect()
        } else {
            topics::parse_node_topic(topic).map(|(node, _)| node.to_string()).into_iter().collect()
        };
        named.into_iter().filter(|node| self.candidate(node)).collect()
    }

    /// A new connection: every node must answer again, and replies to the old one will not come.
    fn reset(&self) {
        lock(&self.pending).clear();
        lock(&self.nodes).clear();
        lock(&self.candidates).clear();
        lock(&self.lost).clear();
    }
}

fn parse<T: DeserializeOwned>(node: &str, value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::badrpc(format!("unexpected reply from {node}: {e}")))
}

/// A panic elsewhere while holding one of these leaves plain data that is still valid.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(link: Arc<Link>, mut eventloop: EventLoop) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(code = ?ack.code, "connected to broker");
                backoff = Duration::from_millis(200);
                link.reset();
                link.connected.store(true, Ordering::Relaxed);
                link.subscribe_all();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                for node in link.incoming(&publish.topic, &publish.payload) {
                    let link = link.clone();
                    tokio::spawn(async move { link.probe(&node).await });
                }
            }
            Ok(_) => {}
            Err(e) => {
                if link.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "lost the broker; reconnecting");
                } else {
                    tracing::debug!(error = %e, "broker not reachable");
                }
                link.reset();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Asks every listed node, and every node lost since the link connected, who it is, every heartbeat,
/// until the link is dropped.
async fn heartbeat(link: std::sync::Weak<Link>) {
    let every = match link.upgrade() {
        Some(link) => link.heartbeat,
        None => return,
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(link) = link.upgrade() else { return };
        if !link.is_connected() {
            continue;
        }
        let lost: Vec<String> = lock(&link.lost).iter().cloned().collect();
        for node in link.nodes().into_iter().chain(lost) {
            let link = link.clone();
            tokio::spawn(async move { link.probe(&node).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `$SYS` names candidates to ask; it never lists a node, and the same name is not asked again
    /// and again.
    #[tokio::test]
    async fn sys_names_candidates_but_only_an_answer_lists_a_node() {
        // Nothing listens on port 1: nothing will answer.
        let config = <Config as clap::Parser>::parse_from(["midge-mgmt", "--broker", "127.0.0.1:1"]);
        let (link, _) = Link::start(&config).unwrap();
        assert_eq!(link.incoming("$SYS/brokers/ghost@nowhere/version", b"9.9"), vec!["ghost@nowhere"]);
        assert!(link.incoming("$SYS/brokers/ghost@nowhere/version", b"9.9").is_empty(), "asked recently");
        assert_eq!(link.incoming("$SYS/brokers", b"a@h, b@h"), vec!["a@h", "b@h"]);
        assert!(link.nodes().is_empty());
        assert!(link.known("ghost@nowhere").is_err());
        for i in 0..2 * MAX_CANDIDATES {
            link.incoming(&format!("$SYS/brokers/n{i}/version"), b"1");
        }
        assert_eq!(lock(&link.candidates).len(), MAX_CANDIDATES, "candidates are bounded");
    }
}
