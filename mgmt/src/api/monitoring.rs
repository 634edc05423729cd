//! Listeners, metrics and stats, asked of the live nodes.

use std::collections::BTreeMap;

use midge_shared::control::Request;
use rocket::{get, routes, Route, State};

use super::docs::{Figures, NodeParam, Reply};
use super::per_node;
use crate::auth::Admin;
use crate::error::{done, ApiResult};
use crate::history::Sample;
use crate::App;
use midge_shared::control::{ListenerRow, Recon};

pub fn routes() -> Vec<Route> {
    routes![listeners, node_listeners, metrics, node_metrics, stats, node_stats, node_recon, history]
}

#[utoipa::path(get, path = "/monitoring/listeners", tag = "monitoring", responses((status = 200, description = "Every node's listeners, by node", body = Reply<BTreeMap<String, Vec<ListenerRow>>>)))]
#[get("/monitoring/listeners")]
async fn listeners(_admin: Admin, app: &State<App>) -> ApiResult {
    done(per_node(app, Request::list_listeners).await?)
}

#[utoipa::path(get, path = "/monitoring/listeners/{node}", tag = "monitoring", params(NodeParam), responses((status = 200, description = "The node's listeners", body = Reply<Vec<ListenerRow>>)))]
#[get("/monitoring/listeners/<node>")]
async fn node_listeners(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::list_listeners()).await?)
}

/// Every metric summed over the nodes.
#[utoipa::path(get, path = "/monitoring/metrics", tag = "monitoring", responses((status = 200, description = "Every metric, summed over the nodes", body = Reply<Figures>)))]
#[get("/monitoring/metrics")]
async fn metrics(_admin: Admin, app: &State<App>) -> ApiResult {
    let mut sum = Figures::new();
    for figures in per_node(app, Request::metrics).await?.into_values() {
        for (key, value) in figures {
            *sum.entry(key).or_default() += value;
        }
    }
    done(sum)
}

#[utoipa::path(get, path = "/monitoring/metrics/{node}", tag = "monitoring", params(NodeParam), responses((status = 200, description = "The node's metrics (counters)", body = Reply<Figures>)))]
#[get("/monitoring/metrics/<node>")]
async fn node_metrics(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::metrics()).await?)
}

/// `[{node: {stat: value}}]`, one object per node.
#[utoipa::path(get, path = "/monitoring/stats", tag = "monitoring", responses((status = 200, description = "One object per node: its name and its stats", body = Reply<Vec<BTreeMap<String, Figures>>>)))]
#[get("/monitoring/stats")]
async fn stats(_admin: Admin, app: &State<App>) -> ApiResult {
    let by_node = per_node(app, Request::stats).await?;
    done(by_node.into_iter().map(|(node, figures)| BTreeMap::from([(node, figures)])).collect::<Vec<_>>())
}

#[utoipa::path(get, path = "/monitoring/stats/{node}", tag = "monitoring", params(NodeParam), responses((status = 200, description = "The node's stats (gauges and their maxima)", body = Reply<Figures>)))]
#[get("/monitoring/stats/<node>")]
async fn node_stats(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::stats()).await?)
}

/// **(Ours)** the node's runtime diagnostics (`emq_recon`): memory, tasks, queue depths and the `top`
/// clients by queue (default 10, at most 1000); 111 while the plugin is off.
#[utoipa::path(get, path = "/nodes/{node}/recon", tag = "monitoring", summary = "Runtime diagnostics (ours)", params(NodeParam, ("top" = Option<u64>, Query, description = "How many clients with the longest queues (default 10, at most 1000)")), responses((status = 200, description = "The node's diagnostics; 111 while emq_recon is off", body = Reply<Recon>)))]
#[get("/nodes/<node>/recon?<top>")]
async fn node_recon(_admin: Admin, app: &State<App>, node: &str, top: Option<u64>) -> ApiResult {
    done(app.link.call(node, Request::recon(top.unwrap_or(10))).await?)
}

/// **(Ours)** each node's headline figures over the last minutes, sampled by the sidecar (for the
/// dashboard's charts): `{node: [{ts, received, sent, connections, subscriptions, retained}]}`, oldest
/// first; `received` and `sent` are counters, the rest gauges.
#[utoipa::path(get, path = "/monitoring/history", tag = "monitoring", summary = "The last minutes of each node (ours)", responses((status = 200, description = "Samples by node, oldest first", body = Reply<BTreeMap<String, Vec<Sample>>>)))]
#[get("/monitoring/history")]
async fn history(_admin: Admin, app: &State<App>) -> ApiResult {
    done(app.history.snapshot())
}
