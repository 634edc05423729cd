//! Each command as the API calls it takes, and how its result reads as a table.

use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::api::{segment, Api, ApiError};
use crate::output::{table, Render};
use crate::{AdminsCommand, BrokerCommand, ClientsCommand, ClusterCommand, Command, ListOrShow};
use crate::{PluginsCommand, SubscriptionsCommand};

const CLIENT: &[&str] =
    &["client_id", "username", "ipaddress", "port", "clean_sess", "proto_ver", "keepalive", "connected_at"];
const SESSION: &[&str] = &[
    "client_id",
    "clean_sess",
    "subscriptions",
    "max_inflight",
    "inflight_len",
    "mqueue_len",
    "mqueue_dropped",
    "awaiting_rel_len",
    "deliver_msg",
    "enqueue_msg",
    "created_at",
];
const SUBSCRIPTION: &[&str] = &["client_id", "topic", "qos"];
const ROUTE: &[&str] = &["topic", "node"];

pub async fn run(api: &Api, command: Command) -> Result<(Value, Render), ApiError> {
    match command {
        Command::Status => {
            let text = api.status().await?;
            Ok((json!({ "status": text.trim() }), Render::Message(text.trim().to_string())))
        }
        Command::Broker { what } => {
            let (route, column) = match what {
                BrokerCommand::Stats => ("monitoring/stats", "stat"),
                BrokerCommand::Metrics => ("monitoring/metrics", "metric"),
            };
            per_node_figures(api, route, column).await
        }
        Command::Cluster { what: ClusterCommand::Status } => {
            Ok(rows(api.get("management/nodes").await?, &["name", "version", "uptime", "node_status"]))
        }
        Command::Clients { what } => match what {
            ClientsCommand::List => Ok(rows(every_node(api, "clients").await?, CLIENT)),
            ClientsCommand::Show { client_id } => found(api, &format!("clients/{}", segment(&client_id)), CLIENT).await,
            ClientsCommand::Kick { client_id } => {
                let result = api.call(Method::DELETE, &format!("clients/{}", segment(&client_id)), None).await?;
                Ok((result, Render::Message(format!("kicked {client_id}"))))
            }
        },
        Command::Sessions { what } => match what {
            ListOrShow::List => Ok(rows(every_node(api, "sessions").await?, SESSION)),
            ListOrShow::Show { key } => found(api, &format!("sessions/{}", segment(&key)), SESSION).await,
        },
        Command::Routes { what } => match what {
            ListOrShow::List => Ok(rows(Value::Array(api.all_pages("routes").await?), ROUTE)),
            ListOrShow::Show { key } => found(api, &format!("routes/{}", segment(&key)), ROUTE).await,
        },
        Command::Subscriptions { what } => subscriptions(api, what).await,
        Command::Plugins { what } => plugins(api, what).await,
        Command::Listeners => {
            let by_node = api.get("monitoring/listeners").await?;
            let columns = &["node", "protocol", "listen", "acceptors", "max_clients", "current_clients"];
            Ok((by_node.clone(), Render::Rows(columns, Value::Array(rows_by_node(&by_node)))))
        }
        Command::Admins { what } => admins(api, what).await,
        Command::Recon { top } => recon(api, top).await,
    }
}

/// Each node's diagnostics: its figures as `section.name  value` lines, then its longest queues.
async fn recon(api: &Api, top: u64) -> Result<(Value, Render), ApiError> {
    let mut by_node = Map::new();
    let mut text = String::new();
    for node in api.nodes().await? {
        let report = api.get(&format!("nodes/{}/recon?top={top}", segment(&node))).await?;
        text.push_str(&format!("node {node}\n"));
        let mut figures = Vec::new();
        for section in ["memory", "runtime", "connections", "queues"] {
            for (name, value) in report[section].as_object().into_iter().flatten() {
                figures.push(json!({ "figure": format!("{section}.{name}"), "value": value }));
            }
        }
        text.push_str(&table(&["figure", "value"], &figures));
        let queues = report["top_queues"].as_array().cloned().unwrap_or_default();
        if !queues.is_empty() {
            text.push('\n');
            let columns = ["client_id", "online", "mqueue_len", "inflight_len", "deferred_len", "awaiting_rel_len"];
            text.push_str(&table(&columns, &queues));
        }
        by_node.insert(node, report);
    }
    Ok((Value::Object(by_node), Render::Message(text.trim_end().to_string())))
}

/// Every node's figures from `{route}/{node}`: one row per figure in the table, `{node: {name: value}}`
/// as JSON.
async fn per_node_figures(api: &Api, route: &str, column: &'static str) -> Result<(Value, Render), ApiError> {
    let mut by_node = Map::new();
    let mut rows = Vec::new();
    for node in api.nodes().await? {
        let figures = api.get(&format!("{route}/{}", segment(&node))).await?;
        for (name, value) in figures.as_object().into_iter().flatten() {
            rows.push(json!({ "node": node, column: name, "value": value }));
        }
        by_node.insert(node, figures);
    }
    let columns: &'static [&'static str] =
        if column == "stat" { &["node", "stat", "value"] } else { &["node", "metric", "value"] };
    Ok((Value::Object(by_node), Render::Rows(columns, Value::Array(rows))))
}

/// A result that is its own table.
fn rows(result: Value, columns: &'static [&'static str]) -> (Value, Render) {
    (result.clone(), Render::Rows(columns, result))
}

/// Every node's rows of a paged listing (`nodes/{node}/{what}`).
async fn every_node(api: &Api, what: &str) -> Result<Value, ApiError> {
    let mut rows = Vec::new();
    for node in api.nodes().await? {
        rows.extend(api.all_pages(&format!("nodes/{}/{what}", segment(&node))).await?);
    }
    Ok(Value::Array(rows))
}

/// The `objects` of a lookup, or "not found" (exit code 1) if there are none.
async fn found(api: &Api, path: &str, columns: &'static [&'static str]) -> Result<(Value, Render), ApiError> {
    let objects = api.get(path).await?["objects"].clone();
    if objects.as_array().is_none_or(Vec::is_empty) {
        return Err(ApiError::Refused { code: 0, message: format!("not found: {path}") });
    }
    Ok(rows(objects, columns))
}

/// `{node: [rows]}` as rows that each name their node.
fn rows_by_node(by_node: &Value) -> Vec<Value> {
    let mut rows = Vec::new();
    for (node, list) in by_node.as_object().into_iter().flatten() {
        for row in list.as_array().into_iter().flatten() {
            let mut row = row.clone();
            if let Some(object) = row.as_object_mut() {
                object.insert("node".into(), Value::String(node.clone()));
            }
            rows.push(row);
        }
    }
    rows
}

async fn subscriptions(api: &Api, what: SubscriptionsCommand) -> Result<(Value, Render), ApiError> {
    match what {
        SubscriptionsCommand::List => Ok(rows(every_node(api, "subscriptions").await?, SUBSCRIPTION)),
        SubscriptionsCommand::Show { client_id } => {
            found(api, &format!("subscriptions/{}", segment(&client_id)), SUBSCRIPTION).await
        }
        SubscriptionsCommand::Add { client_id, topic, qos } => {
            let body = json!({ "client_id": client_id, "topic": topic, "qos": qos });
            let result = api.call(Method::POST, "mqtt/subscribe", Some(body)).await?;
            Ok((result, Render::Message(format!("{client_id} subscribed to {topic} at QoS {qos}"))))
        }
        SubscriptionsCommand::Del { client_id, topic } => {
            let body = json!({ "client_id": client_id, "topic": topic });
            let result = api.call(Method::POST, "mqtt/unsubscribe", Some(body)).await?;
            Ok((result, Render::Message(format!("{client_id} unsubscribed from {topic}"))))
        }
    }
}

async fn plugins(api: &Api, what: PluginsCommand) -> Result<(Value, Render), ApiError> {
    let (name, active) = match what {
        PluginsCommand::List => {
            let mut rows = Vec::new();
            for node in api.nodes().await? {
                let plugins = api.get(&format!("nodes/{}/plugins", segment(&node))).await?;
                let by_node = json!({ node: plugins });
                rows.extend(rows_by_node(&by_node));
            }
            let columns = &["node", "name", "version", "active", "description"];
            return Ok(self::rows(Value::Array(rows), columns));
        }
        PluginsCommand::Load { name } => (name, true),
        PluginsCommand::Unload { name } => (name, false),
    };
    for node in api.nodes().await? {
        let path = format!("nodes/{}/plugins/{}", segment(&node), segment(&name));
        api.call(Method::PUT, &path, Some(json!({ "active": active }))).await?;
    }
    let done = if active { "loaded" } else { "unloaded" };
    Ok((json!([]), Render::Message(format!("{name} {done}"))))
}

async fn admins(api: &Api, what: AdminsCommand) -> Result<(Value, Render), ApiError> {
    match what {
        AdminsCommand::List => Ok(rows(api.get("users").await?, &["username", "tags"])),
        AdminsCommand::Add { username, new_user_password, tags } => {
            let body = json!({ "username": username, "password": new_user_password, "tags": tags });
            let result = api.call(Method::POST, "users", Some(body)).await?;
            Ok((result, Render::Message(format!("added {username}"))))
        }
        AdminsCommand::Passwd { username, new_password, old } => {
            let old = match old {
                Some(old) => old,
                None if username == api.user() => api.password().to_string(),
                None => {
                    return Err(ApiError::Refused {
                        code: 107,
                        message: format!("--old is needed to change {username}'s password"),
                    })
                }
            };
            let body = json!({ "old_pwd": old, "new_pwd": new_password });
            let result = api.call(Method::PUT, &format!("change_pwd/{}", segment(&username)), Some(body)).await?;
            Ok((result, Render::Message(format!("changed {username}'s password"))))
        }
        AdminsCommand::Del { username } => {
            let result = api.call(Method::DELETE, &format!("users/{}", segment(&username)), None).await?;
            Ok((result, Render::Message(format!("deleted {username}"))))
        }
    }
}
