//! Listeners, metrics and stats, asked of the live nodes.

use std::collections::BTreeMap;

use midge_shared::control::{ListenerRow, Request};
use rocket::{get, routes, Route, State};
use serde_json::{Map, Value};

use crate::auth::Admin;
use crate::error::{done, ApiResult};
use crate::App;

pub fn routes() -> Vec<Route> {
    routes![listeners, node_listeners, metrics, node_metrics, stats, node_stats]
}

type Figures = BTreeMap<String, u64>;

#[get("/monitoring/listeners")]
async fn listeners(_admin: Admin, app: &State<App>) -> ApiResult {
    let mut out = BTreeMap::new();
    for node in app.link.nodes() {
        let rows: Vec<ListenerRow> = app.link.ask(&node, Request::ListListeners).await?;
        out.insert(node, rows);
    }
    done(out)
}

#[get("/monitoring/listeners/<node>")]
async fn node_listeners(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.ask::<Vec<ListenerRow>>(node, Request::ListListeners).await?)
}

/// Every metric summed over the nodes.
#[get("/monitoring/metrics")]
async fn metrics(_admin: Admin, app: &State<App>) -> ApiResult {
    let mut sum = Figures::new();
    for node in app.link.nodes() {
        let figures: Figures = app.link.ask(&node, Request::Metrics).await?;
        for (key, value) in figures {
            *sum.entry(key).or_default() += value;
        }
    }
    done(sum)
}

#[get("/monitoring/metrics/<node>")]
async fn node_metrics(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.ask::<Figures>(node, Request::Metrics).await?)
}

/// `[{node: {stat: value}}]`, one object per node.
#[get("/monitoring/stats")]
async fn stats(_admin: Admin, app: &State<App>) -> ApiResult {
    let mut out = Vec::new();
    for node in app.link.nodes() {
        let figures: Figures = app.link.ask(&node, Request::Stats).await?;
        let mut entry = Map::new();
        entry.insert(node, serde_json::to_value(figures).unwrap_or(Value::Null));
        out.push(Value::Object(entry));
    }
    done(out)
}

#[get("/monitoring/stats/<node>")]
async fn node_stats(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.ask::<Figures>(node, Request::Stats).await?)
}
