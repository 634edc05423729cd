//! Plugins and plugin configs. What is changed here is also stored, and re-applied when a node
//! (re)appears.

use std::collections::BTreeMap;

use midge_shared::control::Request;
use rocket::{get, put, routes, Route, State};

use super::docs::{NodeParam, Nothing, PluginConfigBody, PluginSwitch, Reply};
use crate::auth::Admin;
use crate::body::Body;
use crate::error::{code, done, ok, ApiError, ApiResult};
use crate::App;
use midge_shared::control::{PluginConfigRow, PluginRow};

pub fn routes() -> Vec<Route> {
    routes![list, switch, get_config, put_config]
}

#[utoipa::path(get, path = "/nodes/{node}/plugins", tag = "plugins", params(NodeParam), responses((status = 200, description = "The node's plugins", body = Reply<Vec<PluginRow>>)))]
#[get("/nodes/<node>/plugins")]
async fn list(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::list_plugins()).await?)
}

#[utoipa::path(put, path = "/nodes/{node}/plugins/{name}", tag = "plugins", summary = "Start or stop a plugin", params(NodeParam, ("name" = String, Path, description = "A plugin, e.g. emq_retainer")), request_body = PluginSwitch, responses((status = 200, description = "Switched and stored; 110 already active, 111 already inactive", body = Reply<Nothing>)))]
#[put("/nodes/<node>/plugins/<name>", data = "<body>")]
async fn switch(_admin: Admin, app: &State<App>, node: &str, name: &str, body: String) -> ApiResult {
    let active = Body::parse(&body)?.bool("active")?;
    app.desired.set_plugin(node, name, active).await?;
    if name == crate::dashboard::PLUGIN {
        app.dashboard.refresh(&app.link).await;
    }
    ok()
}

#[utoipa::path(get, path = "/nodes/{node}/plugin_configs/{plugin}", tag = "plugins", params(NodeParam, ("plugin" = String, Path, description = "A plugin, e.g. emq_modules")), responses((status = 200, description = "The plugin's config (passwords as their hashes)", body = Reply<Vec<PluginConfigRow>>)))]
#[get("/nodes/<node>/plugin_configs/<plugin>")]
async fn get_config(_admin: Admin, app: &State<App>, node: &str, plugin: &str) -> ApiResult {
    done(app.link.call(node, Request::get_plugin_config(plugin.to_string())).await?)
}

#[utoipa::path(put, path = "/nodes/{node}/plugin_configs/{plugin}", tag = "plugins", params(NodeParam, ("plugin" = String, Path, description = "A plugin, e.g. emq_modules")), request_body = PluginConfigBody, responses((status = 200, description = "Applied (an active plugin restarts with it) and stored", body = Reply<Nothing>)))]
#[put("/nodes/<node>/plugin_configs/<plugin>", data = "<body>")]
async fn put_config(_admin: Admin, app: &State<App>, node: &str, plugin: &str, body: String) -> ApiResult {
    let body = Body::parse(&body)?;
    let mut values = BTreeMap::new();
    for (key, value) in body.map() {
        let value = value
            .as_str()
            .ok_or_else(|| ApiError::new(code::WRONG_TYPE, format!("value of {key} must be a string")))?;
        values.insert(key.clone(), value.to_string());
    }
    app.desired.set_plugin_config(node, plugin, values).await?;
    ok()
}
