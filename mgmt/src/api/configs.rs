//! Hot configuration: read from the nodes, changed on them and stored so it survives restarts.

use midge_shared::control::Request;
use rocket::{get, put, routes, Route, State};

use super::docs::{ConfigChange, NodeParam, Nothing, Reply};
use super::per_node;
use crate::auth::Admin;
use crate::body::Body;
use crate::error::{done, ok, ApiError, ApiResult};
use crate::App;
use midge_shared::control::ConfigRow;
use std::collections::BTreeMap;

pub fn routes() -> Vec<Route> {
    routes![all, node_configs, put_all, put_node]
}

#[utoipa::path(get, path = "/configs", tag = "configs", responses((status = 200, description = "Every node's hot configuration, by node", body = Reply<BTreeMap<String, Vec<ConfigRow>>>)))]
#[get("/configs")]
async fn all(_admin: Admin, app: &State<App>) -> ApiResult {
    done(per_node(app, Request::list_configs).await?)
}

#[utoipa::path(get, path = "/nodes/{node}/configs", tag = "configs", params(NodeParam), responses((status = 200, description = "The node's hot configuration", body = Reply<Vec<ConfigRow>>)))]
#[get("/nodes/<node>/configs")]
async fn node_configs(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::list_configs()).await?)
}

fn key_value(body: &str) -> Result<(String, String), ApiError> {
    let body = Body::parse(body)?;
    Ok((body.string("key")?, body.string("value")?))
}

/// Applies on every node, then stores the change for every node (present and future).
#[utoipa::path(put, path = "/configs/{app_name}", tag = "configs", params(("app_name" = String, Path, description = "The config's app, e.g. emqttd")), request_body = ConfigChange, responses((status = 200, description = "Applied on every node and stored; 102 if a node refuses it", body = Reply<Nothing>)))]
#[put("/configs/<app_name>", data = "<body>")]
async fn put_all(_admin: Admin, app: &State<App>, app_name: &str, body: String) -> ApiResult {
    let (key, value) = key_value(&body)?;
    app.desired.set_config_everywhere(app_name, &key, &value).await?;
    ok()
}

#[utoipa::path(put, path = "/nodes/{node}/configs/{app_name}", tag = "configs", params(NodeParam, ("app_name" = String, Path, description = "The config's app, e.g. emqttd")), request_body = ConfigChange, responses((status = 200, description = "Applied on the node and stored; 102 if it refuses it", body = Reply<Nothing>)))]
#[put("/nodes/<node>/configs/<app_name>", data = "<body>")]
async fn put_node(_admin: Admin, app: &State<App>, node: &str, app_name: &str, body: String) -> ApiResult {
    let (key, value) = key_value(&body)?;
    app.desired.set_config(node, app_name, &key, &value).await?;
    ok()
}
