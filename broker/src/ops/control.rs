//! The control service: requests from the management principal, answered off the message path.
//!
//! The connection of the management client hands each request payload here; this task parses it,
//! does the work (asking the router for anything it owns) and publishes the reply to the requester's
//! reply topic. A malformed or unknown request gets an error reply whenever it names where to reply.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use midge_shared::calls::{self, Done, Handler};
use midge_shared::control::{
    self, code, ClientRow, ConfigRow, ControlError, ListenerRow, NodeInfo, Outcome, Page, PageRequest, PluginConfigRow,
    PluginRow, ReplyEnvelope, RequestEnvelope, RouteRow, SessionRow, ShutdownCounts, SubscriptionRow,
};
use tokio::sync::{mpsc, oneshot};

use super::node::Node;
use super::plugins::{Plugin, PluginError};
use super::sys;
use crate::cluster::Asked;
use crate::metrics::Metric;
use crate::protocol::{topic, QoS};
use crate::session::Message;
use crate::store::HotSetting;

/// Requests waiting for the control service; more than this and the management client waits.
pub const QUEUE: usize = 256;

/// A request from the management client on this node.
#[derive(Debug)]
pub struct ControlJob {
    pub payload: Bytes,
    pub to: Target,
}

/// Which node a request is for, by the topic it came on.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    This,
    /// Every node: this one answers, and asks the others in the cluster.
    Every,
    /// Another node of the cluster, asked over NATS.
    Other(String),
}

/// Where the requests come in: from this node's management client, and from other nodes.
pub struct Inbox {
    jobs: mpsc::Receiver<ControlJob>,
    asked: mpsc::Receiver<Asked>,
}

pub fn channel() -> (mpsc::Sender<ControlJob>, mpsc::Sender<Asked>, Inbox) {
    let (jobs_tx, jobs) = mpsc::channel(QUEUE);
    let (asked_tx, asked) = mpsc::channel(QUEUE);
    (jobs_tx, asked_tx, Inbox { jobs, asked })
}

/// Where a reply goes: published to the reply topic the request names, or handed back to the node
/// that asked on its management client's behalf.
enum Answer {
    Topic,
    Node(oneshot::Sender<Bytes>),
}

/// Serves control requests until shutdown. Each request runs in its own task, so a slow one (hashing
/// passwords for a plugin config) does not hold up the others.
pub async fn run(node: Arc<Node>, inbox: Inbox) {
    let Inbox { mut jobs, mut asked } = inbox;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            job = jobs.recv() => match job {
                Some(ControlJob { payload, to: Target::This }) => {
                    tokio::spawn(handle(node.clone(), payload, Answer::Topic));
                }
                Some(ControlJob { payload, to: Target::Every }) => {
                    for other in node.cluster.others() {
                        tokio::spawn(relay(node.clone(), other, payload.clone(), true));
                    }
                    tokio::spawn(handle(node.clone(), payload, Answer::Topic));
                }
                Some(ControlJob { payload, to: Target::Other(other) }) => {
                    tokio::spawn(relay(node.clone(), other, payload, false));
                }
                None => return,
            },
            Some(Asked { payload, answer }) = asked.recv() => {
                tokio::spawn(handle(node.clone(), payload, Answer::Node(answer)));
            }
        }
    }
}

/// Asks `other` for the management client and publishes its reply to the client's reply topic. A node
/// that cannot be asked gets 101 at once, but in a discovery, where silence is the answer.
async fn relay(node: Arc<Node>, other: String, payload: Bytes, discovery: bool) {
    let Some((id, reply_to)) = id_and_reply_to(&payload) else {
        tracing::warn!(node = %other, "control request for another node without id or reply topic dropped");
        return;
    };
    match node.cluster.ask(&other, payload.clone()).await {
        Ok(answer) => publish_reply(&node, &reply_to, answer),
        Err(_) if discovery => {}
        Err(e) => {
            let outcome = Err(ControlError::new(code::BADRPC, e.to_string()));
            reply(&node, &reply_to, Answer::Topic, id, control::VERSION, outcome).await;
        }
    }
}

async fn handle(node: Arc<Node>, payload: Bytes, answer: Answer) {
    let envelope: RequestEnvelope = match serde_json::from_slice(&payload) {
        Ok(envelope) => envelope,
        Err(e) => return malformed(&node, &payload, e, answer).await,
    };
    let (outcome, v) = if !(control::OLDEST_VERSION..=control::VERSION).contains(&envelope.v) {
        let message = format!(
            "control protocol v{} not supported; this node speaks v{} to v{}",
            envelope.v,
            control::OLDEST_VERSION,
            control::VERSION
        );
        (Err(ControlError::new(code::BADRPC, message)), control::VERSION)
    } else {
        tracing::debug!(id = %envelope.id, request = ?envelope.request, "control request");
        (calls::dispatch(&Service { node: &node }, envelope.request).await, envelope.v)
    };
    reply(&node, &envelope.reply_to, answer, envelope.id, v, outcome).await;
}

/// A request that does not parse: answer if it says where, else log it.
async fn malformed(node: &Node, payload: &[u8], error: serde_json::Error, answer: Answer) {
    match id_and_reply_to(payload) {
        Some((id, reply_to)) => {
            let code = if error.is_data() { code::WRONG_TYPE } else { code::UNKNOWN };
            let outcome = Err(ControlError::new(code, format!("bad control request: {error}")));
            reply(node, &reply_to, answer, id, control::VERSION, outcome).await;
        }
        None => tracing::warn!(error = %error, "unanswerable control request dropped"),
    }
}

/// A request's id and reply topic, read loosely: from a request that does not parse as a whole, or
/// that this node passes on without reading.
fn id_and_reply_to(payload: &[u8]) -> Option<(String, String)> {
    let loose: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some((loose.get("id")?.as_str()?.to_string(), loose.get("reply_to")?.as_str()?.to_string()))
}

/// Sends a reply, in protocol version `v`, to the requester's reply topic (or the node that asked).
async fn reply(
    node: &Node,
    reply_to: &str,
    answer: Answer,
    id: String,
    v: u32,
    outcome: Result<serde_json::Value, ControlError>,
) {
    let outcome = match outcome {
        Ok(value) => Outcome::Ok(value),
        Err(error) => Outcome::Err(error),
    };
    let envelope = ReplyEnvelope { v, id, outcome };
    let Ok(payload) = serde_json::to_vec(&envelope) else { return };
    match answer {
        Answer::Topic => publish_reply(node, reply_to, payload.into()),
        Answer::Node(asker) => {
            let _ = asker.send(payload.into());
        }
    }
}

fn publish_reply(node: &Node, reply_to: &str, payload: Bytes) {
    // Replies only ever go to control topics, which only the management principal can read.
    if !control::is_control_topic(reply_to) || !topic::valid_topic_name(reply_to) {
        tracing::warn!(reply_to = %reply_to.escape_debug(), "control reply topic refused");
        return;
    }
    let message = Message::new(Bytes::copy_from_slice(reply_to.as_bytes()), payload, QoS::AtLeastOnce, false);
    node.router.publish(Arc::new(message));
}

/// `Done` if the router found what the command was about, else the given error.
fn found_or(found: bool, code: u16, message: &str) -> Result<Done, ControlError> {
    if found {
        Ok(Done)
    } else {
        Err(ControlError::new(code, message))
    }
}

fn qos(value: u8) -> Result<QoS, ControlError> {
    QoS::from_u8(value).ok_or_else(|| ControlError::new(code::UNKNOWN, format!("invalid qos {value}")))
}

/// Answers each control request on this node: the reply types are the contract's (`shared::calls`).
struct Service<'a> {
    node: &'a Node,
}

/// The API's codes for what the plugins refuse.
/// Keeps what a request changed; it is answered once that is on disk.
async fn keep(node: &Node, setting: HotSetting) -> Result<Done, ControlError> {
    node.keep(setting).await.map(|_| Done).map_err(|_| {
        ControlError::new(code::UNKNOWN, "changed, but the store could not keep the change: it is lost at restart")
    })
}

fn plugin_error(error: PluginError) -> ControlError {
    let code = match error {
        PluginError::AlreadyActive => code::PLUGIN_ACTIVE,
        PluginError::AlreadyInactive => code::PLUGIN_INACTIVE,
        PluginError::Unknown(_) | PluginError::NoSuchKey { .. } | PluginError::BadValue(_) | PluginError::Hash(_) => {
            code::UNKNOWN
        }
    };
    ControlError::new(code, error.to_string())
}

impl Handler for Service<'_> {
    async fn node_info(&self) -> Result<NodeInfo, ControlError> {
        Ok(sys::node_info(self.node))
    }

    async fn list_clients(&self, page: PageRequest) -> Result<Page<ClientRow>, ControlError> {
        Ok(self.node.router.list_clients(page))
    }

    async fn get_client(&self, client_id: String) -> Result<Vec<ClientRow>, ControlError> {
        Ok(self.node.router.get_client(&client_id))
    }

    async fn list_sessions(&self, page: PageRequest) -> Result<Page<SessionRow>, ControlError> {
        Ok(self.node.router.list_sessions(page))
    }

    async fn get_session(&self, client_id: String) -> Result<Vec<SessionRow>, ControlError> {
        Ok(self.node.router.get_session(&client_id))
    }

    async fn list_subscriptions(&self, page: PageRequest) -> Result<Page<SubscriptionRow>, ControlError> {
        Ok(self.node.router.list_subscriptions(page))
    }

    async fn get_subscriptions(&self, client_id: String) -> Result<Vec<SubscriptionRow>, ControlError> {
        Ok(self.node.router.get_subscriptions(&client_id))
    }

    async fn list_routes(&self, page: PageRequest) -> Result<Page<RouteRow>, ControlError> {
        Ok(self.node.router.list_routes(page))
    }

    async fn get_route(&self, topic: String) -> Result<Vec<RouteRow>, ControlError> {
        Ok(self.node.router.get_route(topic))
    }

    async fn kick(&self, client_id: String) -> Result<Done, ControlError> {
        let online = self.node.router.kick(&client_id);
        found_or(online, code::CLIENT_OFFLINE, "client not online")
    }

    async fn clean_acl_cache(&self, client_id: String, topic: String) -> Result<Done, ControlError> {
        let online = self.node.router.clean_acl_cache(&client_id, &topic);
        found_or(online, code::CLIENT_OFFLINE, "client not online")
    }

    async fn publish(
        &self,
        topic: String,
        payload: String,
        qos_level: u8,
        retain: bool,
        client_id: String,
    ) -> Result<Done, ControlError> {
        if !topic::valid_topic_name(&topic) {
            return Err(ControlError::new(code::UNKNOWN, format!("invalid topic {topic:?}")));
        }
        if topic::broker_owned(&topic) {
            return Err(ControlError::new(code::UNKNOWN, format!("topic {topic:?} is the broker's own")));
        }
        let message = Message::new(Bytes::from(topic), Bytes::from(payload), qos(qos_level)?, retain);
        tracing::debug!(on_behalf_of = %client_id.escape_debug(), "publish through the API");
        self.node.metrics.inc(Metric::MessagesReceived);
        self.node.router.publish(Arc::new(message));
        Ok(Done)
    }

    async fn subscribe(&self, client_id: String, topic: String, qos_level: u8) -> Result<Done, ControlError> {
        if !topic::valid_topic_filter(&topic) {
            return Err(ControlError::new(code::UNKNOWN, format!("invalid topic filter {topic:?}")));
        }
        if topic::reaches_broker_owned(&topic) {
            return Err(ControlError::new(
                code::UNKNOWN,
                format!("topic filter {topic:?} reaches the broker's own topics"),
            ));
        }
        let qos = qos(qos_level)?;
        let found = self.node.router.subscribe_for(&client_id, topic, qos);
        found_or(found, code::UNKNOWN, "no such client")
    }

    async fn unsubscribe(&self, client_id: String, topic: String) -> Result<Done, ControlError> {
        let found = self.node.router.unsubscribe_for(&client_id, topic);
        found_or(found, code::UNKNOWN, "no such client")
    }

    async fn list_plugins(&self) -> Result<Vec<PluginRow>, ControlError> {
        Ok(self.node.plugins.list())
    }

    async fn set_plugin(&self, name: String, active: bool) -> Result<Done, ControlError> {
        self.node.plugins.set_active(&name, active).map_err(plugin_error)?;
        keep(self.node, HotSetting::PluginActive { name, active }).await
    }

    async fn list_configs(&self) -> Result<Vec<ConfigRow>, ControlError> {
        Ok(self.node.settings.list())
    }

    async fn set_config(&self, app: String, key: String, value: String) -> Result<Done, ControlError> {
        self.node.settings.set(&app, &key, &value).map_err(|e| ControlError::new(code::UNKNOWN, e.to_string()))?;
        keep(self.node, HotSetting::Config { app, key, value }).await
    }

    async fn get_plugin_config(&self, name: String) -> Result<Vec<PluginConfigRow>, ControlError> {
        self.node.plugins.config(&name).map_err(plugin_error)
    }

    async fn set_plugin_config(&self, name: String, values: BTreeMap<String, String>) -> Result<Done, ControlError> {
        self.node.plugins.set_config(&self.node.hasher, &name, values).await.map_err(plugin_error)?;
        let config = self.node.plugins.config_map(&name).unwrap_or_default();
        keep(self.node, HotSetting::PluginConfig { name, config }).await
    }

    async fn list_listeners(&self) -> Result<Vec<ListenerRow>, ControlError> {
        let listeners = &self.node.listeners;
        Ok(listeners
            .iter()
            .map(|listener| ListenerRow {
                protocol: listener.protocol.into(),
                listen: listener.addr.to_string(),
                acceptors: listener.acceptors as u64,
                max_clients: listener.max_clients as u64,
                current_clients: listener.clients(),
                shutdown_count: ShutdownCounts(listener.shutdowns()),
            })
            .collect())
    }

    async fn reload_certificates(&self) -> Result<u64, ControlError> {
        let certificates = self.node.certificates.clone();
        // Reading and parsing files blocks.
        let reloaded = tokio::task::spawn_blocking(move || certificates.reload())
            .await
            .map_err(|e| ControlError::new(code::UNKNOWN, e.to_string()))?;
        reloaded
            .map(|n| n as u64)
            .map_err(|e| ControlError::new(code::UNKNOWN, format!("certificates not reloaded: {e}")))
    }

    async fn metrics(&self) -> Result<BTreeMap<String, u64>, ControlError> {
        Ok(self.node.metrics.snapshot().into_iter().map(|(m, v)| (m.name().to_string(), v)).collect())
    }

    async fn recon(&self, top: u64) -> Result<midge_shared::control::Recon, ControlError> {
        if !self.node.plugins.is_active(Plugin::Recon) {
            return Err(ControlError::new(code::PLUGIN_INACTIVE, "emq_recon is not loaded"));
        }
        Ok(super::recon::report(self.node, top.min(1000) as usize))
    }

    async fn stats(&self) -> Result<BTreeMap<String, u64>, ControlError> {
        Ok(self.node.stats.snapshot().into_iter().collect())
    }
}
