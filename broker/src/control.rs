//! The control service: requests from the management principal, answered off the message path.
//!
//! The connection of the management client hands each request payload here; this task parses it,
//! does the work (asking the router for anything it owns) and publishes the reply to the requester's
//! reply topic. A malformed or unknown request gets an error reply whenever it names where to reply.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use midge_shared::control::{self, code, ControlError, ListenerRow, Outcome, ReplyEnvelope, Request, RequestEnvelope};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::codec::QoS;
use crate::metrics::Stat;
use crate::router::{AdminRequest, Request as RouterRequest};
use crate::server::Context;
use crate::session::Message;
use crate::{sys, topic};

/// Requests waiting for the control service; more than this and the management client waits.
pub const QUEUE: usize = 256;

#[derive(Debug)]
pub struct ControlJob {
    pub payload: Bytes,
}

pub fn channel() -> (mpsc::Sender<ControlJob>, mpsc::Receiver<ControlJob>) {
    mpsc::channel(QUEUE)
}

/// Serves control requests until shutdown. Each request runs in its own task, so a slow one (hashing
/// passwords for a plugin config) does not hold up the others.
pub async fn run(ctx: Arc<Context>, mut jobs: mpsc::Receiver<ControlJob>) {
    loop {
        let job = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            job = jobs.recv() => match job { Some(job) => job, None => return },
        };
        tokio::spawn(handle(ctx.clone(), job));
    }
}

async fn handle(ctx: Arc<Context>, job: ControlJob) {
    let envelope: RequestEnvelope = match serde_json::from_slice(&job.payload) {
        Ok(envelope) => envelope,
        Err(e) => return malformed(&ctx, &job.payload, e).await,
    };
    let outcome = if envelope.v != control::VERSION {
        Err(ControlError::new(code::BADRPC, format!("control protocol version {} not supported", envelope.v)))
    } else {
        tracing::debug!(id = %envelope.id, request = ?envelope.request, "control request");
        execute(&ctx, envelope.request).await
    };
    reply(&ctx, &envelope.reply_to, envelope.id, outcome).await;
}

/// A request that does not parse: answer if it says where, else log it.
async fn malformed(ctx: &Context, payload: &[u8], error: serde_json::Error) {
    let loose: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let id = loose.get("id").and_then(|v| v.as_str());
    let reply_to = loose.get("reply_to").and_then(|v| v.as_str());
    match (id, reply_to) {
        (Some(id), Some(reply_to)) => {
            let code = if error.is_data() { code::WRONG_TYPE } else { code::UNKNOWN };
            let outcome = Err(ControlError::new(code, format!("bad control request: {error}")));
            reply(ctx, reply_to, id.to_string(), outcome).await;
        }
        _ => tracing::warn!(error = %error, "unanswerable control request dropped"),
    }
}

async fn reply(ctx: &Context, reply_to: &str, id: String, outcome: Result<serde_json::Value, ControlError>) {
    // Replies only ever go to control topics, which only the management principal can read.
    if !control::is_control_topic(reply_to) || !topic::valid_topic_name(reply_to) {
        tracing::warn!(reply_to, "control reply topic refused");
        return;
    }
    let outcome = match outcome {
        Ok(value) => Outcome::Ok(value),
        Err(error) => Outcome::Err(error),
    };
    let envelope = ReplyEnvelope { v: control::VERSION, id, outcome };
    let Ok(payload) = serde_json::to_vec(&envelope) else { return };
    let message = Message {
        topic: Bytes::copy_from_slice(reply_to.as_bytes()),
        payload: payload.into(),
        qos: QoS::AtLeastOnce,
        retain: false,
    };
    ctx.router.send(RouterRequest::Publish(Arc::new(message)));
}

fn json(value: impl Serialize) -> Result<serde_json::Value, ControlError> {
    serde_json::to_value(value).map_err(|e| ControlError::new(code::UNKNOWN, e.to_string()))
}

fn gone<E>(_: E) -> ControlError {
    ControlError::new(code::BADRPC, "broker is shutting down")
}

fn empty() -> Result<serde_json::Value, ControlError> {
    Ok(serde_json::json!([]))
}

/// `[]` if the router found what the command was about, else the given error.
fn found_or(found: bool, code: u16, message: &str) -> Result<serde_json::Value, ControlError> {
    if found {
        empty()
    } else {
        Err(ControlError::new(code, message))
    }
}

fn qos(value: u8) -> Result<QoS, ControlError> {
    QoS::from_u8(value).ok_or_else(|| ControlError::new(code::UNKNOWN, format!("invalid qos {value}")))
}

async fn execute(ctx: &Arc<Context>, request: Request) -> Result<serde_json::Value, ControlError> {
    let router = &ctx.router;
    match request {
        Request::NodeInfo => json(sys::node_info(ctx)),
        Request::ListClients(page) => json(router.ask(|r| AdminRequest::ListClients(page, r)).await.map_err(gone)?),
        Request::GetClient { client_id } => {
            json(router.ask(|r| AdminRequest::GetClient(client_id, r)).await.map_err(gone)?)
        }
        Request::ListSessions(page) => json(router.ask(|r| AdminRequest::ListSessions(page, r)).await.map_err(gone)?),
        Request::GetSession { client_id } => {
            json(router.ask(|r| AdminRequest::GetSession(client_id, r)).await.map_err(gone)?)
        }
        Request::ListSubscriptions(page) => {
            json(router.ask(|r| AdminRequest::ListSubscriptions(page, r)).await.map_err(gone)?)
        }
        Request::GetSubscriptions { client_id } => {
            json(router.ask(|r| AdminRequest::GetSubscriptions(client_id, r)).await.map_err(gone)?)
        }
        Request::ListRoutes(page) => json(router.ask(|r| AdminRequest::ListRoutes(page, r)).await.map_err(gone)?),
        Request::GetRoute { topic } => json(router.ask(|r| AdminRequest::GetRoute(topic, r)).await.map_err(gone)?),
        Request::Kick { client_id } => {
            let online = router.ask(|r| AdminRequest::Kick(client_id, r)).await.map_err(gone)?;
            found_or(online, code::CLIENT_OFFLINE, "client not online")
        }
        Request::CleanAclCache { client_id, topic } => {
            let online =
                router.ask(|reply| AdminRequest::CleanAclCache { client_id, topic, reply }).await.map_err(gone)?;
            found_or(online, code::CLIENT_OFFLINE, "client not online")
        }
        Request::Publish { topic, payload, qos: q, retain, client_id } => {
            if !topic::valid_topic_name(&topic) {
                return Err(ControlError::new(code::UNKNOWN, format!("invalid topic {topic:?}")));
            }
            if topic::broker_owned(&topic) {
                return Err(ControlError::new(code::UNKNOWN, format!("topic {topic:?} is the broker's own")));
            }
            let message = Message { topic: Bytes::from(topic), payload: Bytes::from(payload), qos: qos(q)?, retain };
            tracing::debug!(on_behalf_of = %client_id.escape_debug(), "publish through the API");
            ctx.metrics.inc(crate::metrics::Metric::MessagesReceived);
            router.send(RouterRequest::Publish(Arc::new(message)));
            empty()
        }
        Request::Subscribe { client_id, topic, qos: q } => {
            if !topic::valid_topic_filter(&topic) {
                return Err(ControlError::new(code::UNKNOWN, format!("invalid topic filter {topic:?}")));
            }
            if topic::reaches_broker_owned(&topic) {
                return Err(ControlError::new(
                    code::UNKNOWN,
                    format!("topic filter {topic:?} reaches the broker's own topics"),
                ));
            }
            let qos = qos(q)?;
            let found = router
                .ask(|reply| AdminRequest::Subscribe { client_id, filter: topic, qos, reply })
                .await
                .map_err(gone)?;
            found_or(found, code::UNKNOWN, "no such client")
        }
        Request::Unsubscribe { client_id, topic } => {
            let found = router
                .ask(|reply| AdminRequest::Unsubscribe { client_id, filter: topic, reply })
                .await
                .map_err(gone)?;
            found_or(found, code::UNKNOWN, "no such client")
        }
        Request::ListPlugins => json(ctx.plugins.list()),
        Request::SetPlugin { name, active } => ctx.plugins.set_active(&name, active).and_then(|_| empty()),
        Request::ListConfigs => json(ctx.settings.list()),
        Request::SetConfig { app, key, value } => ctx.settings.set(&app, &key, &value).and_then(|_| empty()),
        Request::GetPluginConfig { name } => json(ctx.plugins.config(&name)?),
        Request::SetPluginConfig { name, values } => {
            ctx.plugins.set_config(&ctx.auth.hasher, &name, values).await?;
            empty()
        }
        Request::ListListeners => json(vec![ListenerRow {
            protocol: "mqtt:tcp".into(),
            listen: ctx.local_addr.to_string(),
            acceptors: 1,
            max_clients: ctx.config.max_connections as u64,
            current_clients: ctx.stats.count(Stat::Clients),
            shutdown_count: vec![],
        }]),
        Request::Metrics => {
            let map: BTreeMap<&str, u64> = ctx.metrics.snapshot().into_iter().map(|(m, v)| (m.name(), v)).collect();
            json(map)
        }
        Request::Stats => json(ctx.stats.snapshot().into_iter().collect::<BTreeMap<String, u64>>()),
    }
}
