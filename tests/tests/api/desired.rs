//! The desired state (hot configs, plugin states, plugin configs): racing writers leave the live broker
//! and the sidecar's database agreeing, which a broker restart (the database pushed back to it) shows.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const RACERS: usize = 20;

/// The value of `key` in the node's live configs.
async fn config(api: &Api, key: &str) -> Option<String> {
    let reply = api.call(Method::GET, &format!("nodes/{NODE}/configs"), None).await;
    let rows = reply["result"].as_array()?;
    rows.iter().find(|r| r["key"] == key).and_then(|r| r["value"].as_str()).map(str::to_string)
}

async fn retainer_active(api: &Api) -> Option<bool> {
    let reply = api.call(Method::GET, &format!("nodes/{NODE}/plugins"), None).await;
    reply["result"].as_array()?.iter().find(|p| p["name"] == "emq_retainer").and_then(|p| p["active"].as_bool())
}

async fn presence_module(api: &Api) -> Option<String> {
    let reply = api.call(Method::GET, &format!("nodes/{NODE}/plugin_configs/emq_modules"), None).await;
    let rows = reply["result"].as_array()?;
    rows.iter().find(|r| r["key"] == "module.presence").and_then(|r| r["value"].as_str()).map(str::to_string)
}

/// Everything the race touched, as the live broker has it.
async fn live(api: &Api) -> (Option<String>, Option<String>, Option<bool>, Option<String>) {
    (
        config(api, "mqtt.broker.sys_interval").await,
        config(api, "mqtt.acl_nomatch").await,
        retainer_active(api).await,
        presence_module(api).await,
    )
}

fn put(api: &Api, path: String, body: Value) -> tokio::task::JoinHandle<Value> {
    let api = api.clone();
    tokio::spawn(async move { api.call(Method::PUT, &path, Some(body)).await })
}

#[tokio::test]
async fn racing_changes_leave_the_broker_and_the_database_agreeing() {
    let mut stack = Stack::start().await;
    let api = stack.api.clone();
    let mut racers = Vec::new();
    for i in 0..RACERS {
        let interval = json!({"key": "mqtt.broker.sys_interval", "value": format!("{}", 10 + i)});
        racers.push(put(&api, "configs/emqttd".into(), interval));
        let nomatch = json!({"key": "mqtt.acl_nomatch", "value": if i % 2 == 0 { "deny" } else { "allow" }});
        racers.push(put(&api, format!("nodes/{NODE}/configs/emqttd"), nomatch));
        let active = json!({"active": i % 2 == 0});
        racers.push(put(&api, format!("nodes/{NODE}/plugins/emq_retainer"), active));
        let presence = json!({"module.presence": if i % 2 == 0 { "off" } else { "on" }});
        racers.push(put(&api, format!("nodes/{NODE}/plugin_configs/emq_modules"), presence));
    }
    for racer in racers {
        let reply = racer.await.unwrap();
        // A plugin switched to the state it is already in answers 110/111; everything else succeeds.
        assert!([0, 110, 111].contains(&reply["code"].as_u64().unwrap()), "{reply}");
    }
    let before = live(&api).await;
    assert!(before.0.is_some() && before.1.is_some() && before.2.is_some() && before.3.is_some(), "{before:?}");

    // A restarted broker starts from its defaults and gets the stored state pushed: what it ends up with
    // is what SQLite holds.
    stack.restart_broker().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let after = live(&api).await;
        if after == before {
            break;
        }
        assert!(Instant::now() < deadline, "the stored state {after:?} is not the live state {before:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
