//! Nodes: `management/nodes`, `monitoring/nodes`, alarms, and the unauthenticated `/status`.

use midge_shared::control::{NodeInfo, Request};
use rocket::{get, routes, Route, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::docs::{NodeParam, Nothing, Reply};

use super::per_node;
use crate::auth::Admin;
use crate::error::{done, ApiResult};
use crate::App;

pub fn routes() -> Vec<Route> {
    routes![management_nodes, management_node, monitoring_nodes, monitoring_node, alarms]
}

/// A node as `management/nodes` shows it.
#[derive(Serialize, ToSchema)]
struct ManagementNode {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    version: String,
    sysdescr: String,
    uptime: String,
    datetime: String,
    otp_release: String,
    node_status: String,
}

impl ManagementNode {
    fn new(info: NodeInfo, with_name: bool) -> Self {
        ManagementNode {
            name: with_name.then_some(info.name),
            version: info.version,
            sysdescr: info.sysdescr,
            uptime: info.uptime,
            datetime: info.datetime,
            otp_release: info.otp_release,
            node_status: info.node_status,
        }
    }
}

/// A node as `monitoring/nodes` shows it.
#[derive(Serialize, ToSchema)]
struct MonitoringNode {
    name: String,
    otp_release: String,
    memory_total: String,
    memory_used: String,
    process_available: u64,
    process_used: u64,
    max_fds: u64,
    clients: u64,
    node_status: String,
    load1: String,
    load5: String,
    load15: String,
}

impl From<NodeInfo> for MonitoringNode {
    fn from(i: NodeInfo) -> Self {
        MonitoringNode {
            name: i.name,
            otp_release: i.otp_release,
            memory_total: i.memory_total,
            memory_used: i.memory_used,
            process_available: i.process_available,
            process_used: i.process_used,
            max_fds: i.max_fds,
            clients: i.clients,
            node_status: i.node_status,
            load1: i.load1,
            load5: i.load5,
            load15: i.load15,
        }
    }
}

async fn infos(app: &App) -> Result<Vec<NodeInfo>, crate::error::ApiError> {
    Ok(per_node(app, Request::node_info).await?.into_values().collect())
}

#[utoipa::path(get, path = "/management/nodes", tag = "nodes", responses((status = 200, description = "Every answering node", body = Reply<Vec<ManagementNode>>)))]
#[get("/management/nodes")]
async fn management_nodes(_admin: Admin, app: &State<App>) -> ApiResult {
    done(infos(app).await?.into_iter().map(|i| ManagementNode::new(i, true)).collect::<Vec<_>>())
}

#[utoipa::path(get, path = "/management/nodes/{node}", tag = "nodes", params(NodeParam), responses((status = 200, description = "The node (without its name)", body = Reply<ManagementNode>)))]
#[get("/management/nodes/<node>")]
async fn management_node(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(ManagementNode::new(app.link.call(node, Request::node_info()).await?, false))
}

#[utoipa::path(get, path = "/monitoring/nodes", tag = "nodes", responses((status = 200, description = "Every answering node, with its load and memory", body = Reply<Vec<MonitoringNode>>)))]
#[get("/monitoring/nodes")]
async fn monitoring_nodes(_admin: Admin, app: &State<App>) -> ApiResult {
    done(infos(app).await?.into_iter().map(MonitoringNode::from).collect::<Vec<_>>())
}

#[utoipa::path(get, path = "/monitoring/nodes/{node}", tag = "nodes", params(NodeParam), responses((status = 200, description = "The node, with its load and memory", body = Reply<MonitoringNode>)))]
#[get("/monitoring/nodes/<node>")]
async fn monitoring_node(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(MonitoringNode::from(app.link.call(node, Request::node_info()).await?))
}

/// Midge raises no alarms yet; the node must still be there to say so.
#[utoipa::path(get, path = "/nodes/{node}/alarms", tag = "nodes", params(NodeParam), responses((status = 200, description = "The node's alarms (Midge raises none yet)", body = Reply<Nothing>)))]
#[get("/nodes/<node>/alarms")]
async fn alarms(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    app.link.call(node, Request::node_info()).await?;
    done(Vec::<()>::new())
}

/// Is the sidecar up, and does it reach a broker? Plain text, no auth, always 200 (as EMQ's): the first
/// lines are EMQ's, and `broker_silence_secs` says how long since a broker last answered (since the
/// sidecar started, if none has), which `midge-mgmt healthcheck` reads.
#[get("/status")]
pub fn status(app: &State<App>) -> String {
    let nodes = app.link.nodes();
    let head = if nodes.is_empty() {
        "midge-mgmt is running\nno broker node answers\n".to_string()
    } else {
        format!("Node {} is started\nmidge is running\n", nodes.join(","))
    };
    let link = if app.link.is_connected() { "connected" } else { "disconnected" };
    let answered = if app.link.ever_answered() { "yes" } else { "never" };
    format!(
        "{head}broker_link={link}\nbroker_answered={answered}\nbroker_silence_secs={}\n",
        app.link.silence().as_secs()
    )
}
