//! Hot configuration: read from the nodes, changed on them and stored so it survives restarts.

use midge_shared::control::Request;
use rocket::{get, put, routes, Route, State};

use super::per_node;
use crate::auth::Admin;
use crate::body::Body;
use crate::error::{done, ok, ApiError, ApiResult};
use crate::App;

pub fn routes() -> Vec<Route> {
    routes![all, node_configs, put_all, put_node]
}

#[get("/configs")]
async fn all(_admin: Admin, app: &State<App>) -> ApiResult {
    done(per_node(app, Request::list_configs).await?)
}

#[get("/nodes/<node>/configs")]
async fn node_configs(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::list_configs()).await?)
}

fn key_value(body: &str) -> Result<(String, String), ApiError> {
    let body = Body::parse(body)?;
    Ok((body.string("key")?, body.string("value")?))
}

/// Applies on every node, then stores the change for every node (present and future).
#[put("/configs/<app_name>", data = "<body>")]
async fn put_all(_admin: Admin, app: &State<App>, app_name: &str, body: String) -> ApiResult {
    let (key, value) = key_value(&body)?;
    app.desired.set_config_everywhere(app_name, &key, &value).await?;
    ok()
}

#[put("/nodes/<node>/configs/<app_name>", data = "<body>")]
async fn put_node(_admin: Admin, app: &State<App>, node: &str, app_name: &str, body: String) -> ApiResult {
    let (key, value) = key_value(&body)?;
    app.desired.set_config(node, app_name, &key, &value).await?;
    ok()
}
