//! Plugins and plugin configs. What is changed here is also stored, and re-applied when a node
//! (re)appears.

use std::collections::BTreeMap;

use midge_shared::control::Request;
use rocket::{get, put, routes, Route, State};

use crate::auth::Admin;
use crate::body::Body;
use crate::error::{code, done, ok, ApiError, ApiResult};
use crate::App;

pub fn routes() -> Vec<Route> {
    routes![list, switch, get_config, put_config]
}

#[get("/nodes/<node>/plugins")]
async fn list(_admin: Admin, app: &State<App>, node: &str) -> ApiResult {
    done(app.link.call(node, Request::list_plugins()).await?)
}

#[put("/nodes/<node>/plugins/<name>", data = "<body>")]
async fn switch(_admin: Admin, app: &State<App>, node: &str, name: &str, body: String) -> ApiResult {
    let active = Body::parse(&body)?.bool("active")?;
    app.desired.set_plugin(node, name, active).await?;
    if name == crate::dashboard::PLUGIN {
        app.dashboard.refresh(&app.link).await;
    }
    ok()
}

#[get("/nodes/<node>/plugin_configs/<plugin>")]
async fn get_config(_admin: Admin, app: &State<App>, node: &str, plugin: &str) -> ApiResult {
    done(app.link.call(node, Request::get_plugin_config(plugin.to_string())).await?)
}

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
