//! Listeners, metrics and stats, asked of the live nodes.

use std::collections::BTreeMap;

use midge_shared::control::Request;
use rocket::{get, routes, Route, State};

use super::per_node;
use crate::auth::Admin;
use crate::error::{done, ApiResult};
use crate::App;

pub fn routes() -> Vec<Route> {
    routes![listeners, node_listeners, metrics, node_metrics, stats, node_stats, node_recon, history]
}

type Figures = BTreeMap<String, u64>;

#[get("/monitoring/listeners")]
async fn listeners(_admin: Admin, app: &State<App>) -> ApiResult {
    done(per_node(app, Request::list_listeners).await?)
}

#[get("/monitoring/listeners/<node>")]
async fn node_listeners(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::list_listeners()).await?)
}

/// Every metric summed over the nodes.
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

#[get("/monitoring/metrics/<node>")]
async fn node_metrics(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::metrics()).await?)
}

/// `[{node: {stat: value}}]`, one object per node.
#[get("/monitoring/stats")]
async fn stats(_admin: Admin, app: &State<App>) -> ApiResult {
    let by_node = per_node(app, Request::stats).await?;
    done(by_node.into_iter().map(|(node, figures)| BTreeMap::from([(node, figures)])).collect::<Vec<_>>())
}

#[get("/monitoring/stats/<node>")]
async fn node_stats(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::stats()).await?)
}

/// **(Ours)** the node's runtime diagnostics (`emq_recon`): memory, tasks, queue depths and the `top`
/// clients by queue (default 10, at most 1000); 111 while the plugin is off.
#[get("/nodes/<node>/recon?<top>")]
async fn node_recon(_admin: Admin, app: &State<App>, node: &str, top: Option<u64>) -> ApiResult {
    done(app.link.call(node, Request::recon(top.unwrap_or(10))).await?)
}

/// **(Ours)** each node's headline figures over the last minutes, sampled by the sidecar (for the
/// dashboard's charts): `{node: [{ts, received, sent, connections, subscriptions, retained}]}`, oldest
/// first; `received` and `sent` are counters, the rest gauges.
#[get("/monitoring/history")]
async fn history(_admin: Admin, app: &State<App>) -> ApiResult {
    done(app.history.snapshot())
}
