//! The sidecar's MQTT link to the broker: it logs in as the management principal, follows `$SYS` to know
//! the nodes and their latest figures, sends control requests and matches replies to waiters.
//! It reconnects on its own with backoff, resubscribes, and pushes the stored desired state (configs,
//! plugin configs and states) to every node it sees (re)appear.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use midge_shared::control::{self, code, Outcome, ReplyEnvelope, Request, RequestEnvelope};
use midge_shared::topics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::db::{self, Db};
use crate::error::ApiError;

/// What the sidecar knows about one node from `$SYS`.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    pub version: Option<String>,
    pub uptime: Option<String>,
    pub metrics: BTreeMap<String, u64>,
    pub stats: BTreeMap<String, u64>,
}

pub struct Link {
    client: AsyncClient,
    reply_topic: String,
    timeout: Duration,
    connected: AtomicBool,
    next_id: AtomicU64,
    pending: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    nodes: Mutex<BTreeMap<String, NodeState>>,
    /// Nodes that got the stored desired state since the link last connected.
    applied: Mutex<HashSet<String>>,
    db: Db,
}

impl Link {
    /// Connects (in the background) and returns at once; requests fail with 101 until connected.
    pub fn start(config: &Config, db: Db) -> Result<Arc<Link>, String> {
        let (host, port) = config.broker_host_port()?;
        let client_id = format!("{}{:08x}", control::CLIENT_ID_PREFIX, rand::random::<u32>());
        let mut options = MqttOptions::new(client_id.clone(), host, port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_session(true);
        // Listings are paged, but a page of long client ids is still larger than rumqttc's default.
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        options.set_credentials(config.mgmt_username.clone(), config.mgmt_secret.clone().unwrap_or_default());
        let (client, eventloop) = AsyncClient::new(options, 256);
        let link = Arc::new(Link {
            client,
            reply_topic: control::reply_topic(&client_id),
            timeout: config.request_timeout(),
            connected: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            nodes: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(HashSet::new()),
            db,
        });
        tokio::spawn(run(link.clone(), eventloop));
        Ok(link)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Known node names, sorted.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.lock().map(|n| n.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn node_state(&self, node: &str) -> Option<NodeState> {
        self.nodes.lock().ok()?.get(node).cloned()
    }

    /// 101 for a node nobody has heard of.
    pub fn known(&self, node: &str) -> Result<(), ApiError> {
        if self.nodes.lock().map(|n| n.contains_key(node)).unwrap_or(false) {
            Ok(())
        } else {
            Err(ApiError::badrpc(format!("unknown node {node}")))
        }
    }

    /// Sends a request to a node and waits for its reply, at most the configured timeout.
    pub async fn request(&self, node: &str, request: Request) -> Result<serde_json::Value, ApiError> {
        self.known(node)?;
        if !self.is_connected() {
            return Err(ApiError::badrpc("broker not connected"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let envelope =
            RequestEnvelope { v: control::VERSION, id: id.clone(), reply_to: self.reply_topic.clone(), request };
        let payload = serde_json::to_vec(&envelope).map_err(|e| ApiError::new(code::UNKNOWN, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id.clone(), tx);
        }
        let sent = self.client.try_publish(control::request_topic(node), QoS::AtLeastOnce, false, payload);
        let outcome = match sent {
            Ok(()) => tokio::time::timeout(self.timeout, rx).await,
            Err(e) => {
                self.forget(&id);
                return Err(ApiError::badrpc(format!("cannot send to broker: {e}")));
            }
        };
        match outcome {
            Ok(Ok(Outcome::Ok(value))) => Ok(value),
            Ok(Ok(Outcome::Err(e))) => Err(e.into()),
            Ok(Err(_)) => Err(ApiError::badrpc("broker connection lost")),
            Err(_) => {
                self.forget(&id);
                Err(ApiError::badrpc(format!("node {node} did not answer in time")))
            }
        }
    }

    /// `request`, with the reply read as `T`.
    pub async fn ask<T: DeserializeOwned>(&self, node: &str, request: Request) -> Result<T, ApiError> {
        let value = self.request(node, request).await?;
        serde_json::from_value(value).map_err(|e| ApiError::badrpc(format!("unexpected reply from {node}: {e}")))
    }

    fn forget(&self, id: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(id);
        }
    }

    fn fail_pending(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }

    fn subscribe_all(&self) {
        let filters = [
            (self.reply_topic.clone(), QoS::AtLeastOnce),
            (topics::SYS_BROKERS.to_string(), QoS::AtMostOnce),
            ("$SYS/brokers/+/version".to_string(), QoS::AtMostOnce),
            ("$SYS/brokers/+/uptime".to_string(), QoS::AtMostOnce),
            ("$SYS/brokers/+/stats/#".to_string(), QoS::AtMostOnce),
            ("$SYS/brokers/+/metrics/#".to_string(), QoS::AtMostOnce),
        ];
        for (filter, qos) in filters {
            if let Err(e) = self.client.try_subscribe(filter.clone(), qos) {
                tracing::warn!(%filter, error = %e, "cannot subscribe");
            }
        }
    }

    /// Handles one incoming publish; returns a node that needs the desired state pushed to it.
    fn incoming(&self, topic: &str, payload: &[u8]) -> Option<String> {
        if topic == self.reply_topic {
            match serde_json::from_slice::<ReplyEnvelope>(payload) {
                Ok(reply) => {
                    let waiter = self.pending.lock().ok()?.remove(&reply.id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(reply.outcome);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "malformed control reply"),
            }
            return None;
        }
        let text = String::from_utf8_lossy(payload);
        let mut nodes = self.nodes.lock().ok()?;
        if topic == topics::SYS_BROKERS {
            for node in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                nodes.entry(node.to_string()).or_default();
            }
            return None;
        }
        let (node, rest) = topics::parse_node_topic(topic)?;
        let state = nodes.entry(node.to_string()).or_default();
        let mut restarted = false;
        if rest == "version" {
            state.version = Some(text.to_string());
        } else if rest == "uptime" {
            restarted = seconds(&text) < state.uptime.as_deref().map_or(0, seconds);
            state.uptime = Some(text.to_string());
        } else if let Some(key) = rest.strip_prefix("metrics/") {
            state.metrics.insert(key.to_string(), text.parse().unwrap_or(0));
        } else if let Some(key) = rest.strip_prefix("stats/") {
            state.stats.insert(key.to_string(), text.parse().unwrap_or(0));
        }
        let mut applied = self.applied.lock().ok()?;
        if restarted {
            applied.remove(node);
        }
        applied.insert(node.to_string()).then(|| node.to_string())
    }
}

/// Seconds in EMQ's uptime text (`"1 hours, 2 minutes, 5 seconds"`).
fn seconds(uptime: &str) -> u64 {
    let mut total = 0;
    let mut number = 0;
    for word in uptime.split([' ', ',']).filter(|w| !w.is_empty()) {
        match word {
            "days" => total += number * 86_400,
            "hours" => total += number * 3600,
            "minutes" => total += number * 60,
            "seconds" => total += number,
            n => number = n.parse().unwrap_or(0),
        }
    }
    total
}

async fn run(link: Arc<Link>, mut eventloop: EventLoop) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(code = ?ack.code, "connected to broker");
                backoff = Duration::from_millis(200);
                if let Ok(mut applied) = link.applied.lock() {
                    applied.clear();
                }
                link.connected.store(true, Ordering::Relaxed);
                link.subscribe_all();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(node) = link.incoming(&publish.topic, &publish.payload) {
                    tokio::spawn(reapply(link.clone(), node));
                }
            }
            Ok(_) => {}
            Err(e) => {
                if link.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "lost the broker; reconnecting");
                } else {
                    tracing::debug!(error = %e, "broker not reachable");
                }
                link.fail_pending();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Pushes the stored configs, plugin configs and plugin states to a node that has just appeared.
async fn reapply(link: Arc<Link>, node: String) {
    let result: Result<usize, ApiError> = async {
        let mut count = 0;
        for (app, key, value) in db::configs_for(&link.db, &node).await? {
            link.request(&node, Request::SetConfig { app, key, value }).await?;
            count += 1;
        }
        let mut plugins: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (plugin, key, value) in db::plugin_configs_for(&link.db, &node).await? {
            plugins.entry(plugin).or_default().insert(key, value);
        }
        for (name, values) in plugins {
            link.request(&node, Request::SetPluginConfig { name, values }).await?;
            count += 1;
        }
        for (name, active) in db::plugin_states_for(&link.db, &node).await? {
            match link.request(&node, Request::SetPlugin { name, active }).await {
                Ok(_) => {}
                Err(e) if e.code == code::PLUGIN_ACTIVE || e.code == code::PLUGIN_INACTIVE => {}
                Err(e) => return Err(e),
            }
            count += 1;
        }
        Ok(count)
    }
    .await;
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(%node, settings = n, "stored settings re-applied"),
        Err(e) => {
            tracing::warn!(%node, error = %e, "re-applying stored settings failed; will retry when the node reappears");
            if let Ok(mut applied) = link.applied.lock() {
                applied.remove(&node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime_seconds() {
        assert_eq!(super::seconds("5 seconds"), 5);
        assert_eq!(super::seconds("1 hours, 2 minutes, 5 seconds"), 3725);
        assert_eq!(super::seconds("2 days,3 hours, 0 minutes, 1 seconds"), 2 * 86_400 + 3 * 3600 + 1);
    }
}
