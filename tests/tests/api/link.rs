//! The sidecar's link to the broker: which nodes it believes in, and what `/status` and the healthcheck
//! say about it.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

/// Polls `check` every 100 ms until it holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_names(nodes: &serde_json::Value) -> Vec<String> {
    nodes.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_string()).collect()
}

/// `midge-mgmt healthcheck` against a running sidecar.
fn healthcheck(mgmt: &Process, max_silence: u64) -> bool {
    Command::new(bin("midge-mgmt"))
        .args(["--listen", &mgmt.addr.to_string(), "healthcheck", "--max-silence", &max_silence.to_string()])
        .env("MIDGE_MGMT_SECRET", SECRET)
        .status()
        .unwrap()
        .success()
}

async fn status_page(api: &Api) -> String {
    reqwest::get(format!("{}/status", api.base)).await.unwrap().text().await.unwrap()
}

/// `$SYS` is the broker's: the API cannot publish there (so nobody can plant a retained message about a
/// node that does not exist) nor subscribe a client to it.
#[tokio::test]
async fn the_api_cannot_publish_or_subscribe_to_sys() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let _client = Client::connect(stack.mqtt_port(), "c1").await;
    for topic in ["$SYS/brokers/ghost@nowhere/version", "$SYS/brokers", "$midge/ctl/ghost@nowhere/req"] {
        let body = json!({"topic": topic, "payload": "9.9", "retain": true});
        assert_eq!(api.code(Method::POST, "mqtt/publish", Some(body)).await, 102, "publish {topic}");
    }
    for filter in ["$SYS/#", "$SYS/brokers/+/version", "$midge/#"] {
        let body = json!({"topic": filter, "client_id": "c1"});
        assert_eq!(api.code(Method::POST, "mqtt/subscribe", Some(body)).await, 102, "subscribe {filter}");
    }
    assert_eq!(api.get("subscriptions/c1").await["objects"], json!([]));
    assert_eq!(node_names(&api.get("management/nodes").await), vec![NODE]);
}

/// A node exists while it answers: one that stops is dropped after a heartbeat, so routes answer at once
/// instead of waiting out the request timeout for it, and the healthcheck fails once no broker has
/// answered for its limit. When the node answers again, all is as before.
#[tokio::test]
async fn a_node_that_stops_answering_is_dropped_until_it_answers_again() {
    let stack = Stack::start_with(&["--heartbeat-ms", "300", "--request-timeout-ms", "500"]).await;
    let api = &stack.api;
    assert!(healthcheck(&stack.mgmt, 2), "healthy while the broker answers");
    let status = status_page(api).await;
    assert!(status.contains(&format!("Node {NODE} is started")), "{status}");
    assert!(status.contains("broker_link=connected\nbroker_answered=yes\nbroker_silence_secs=0"), "{status}");

    stack.broker.signal("STOP");
    eventually(Duration::from_secs(5), "the frozen node is dropped", async || {
        status_page(api).await.contains("no broker node answers")
    })
    .await;
    let started = Instant::now();
    assert_eq!(api.code(Method::GET, "management/nodes", None).await, 101);
    assert_eq!(api.code(Method::GET, "monitoring/metrics", None).await, 101);
    assert_eq!(api.code(Method::GET, &format!("nodes/{NODE}/clients"), None).await, 101);
    assert!(started.elapsed() < Duration::from_millis(300), "answered without waiting: {:?}", started.elapsed());
    eventually(Duration::from_secs(5), "the healthcheck fails", async || !healthcheck(&stack.mgmt, 2)).await;

    stack.broker.signal("CONT");
    eventually(Duration::from_secs(10), "the node is back", async || {
        api.call(Method::GET, "management/nodes", None).await["code"] == 0
    })
    .await;
    assert!(healthcheck(&stack.mgmt, 2));
}

/// A broker restarted under another name: the old name is not kept, so nothing waits for it.
#[tokio::test]
async fn a_renamed_node_replaces_the_old_one() {
    let mut stack = Stack::start().await;
    let addr = stack.broker.addr;
    stack.broker.kill();
    stack.broker = start_broker_as(&addr.to_string(), "renamed@127.0.0.1");
    let api = &stack.api;
    eventually(Duration::from_secs(15), "the renamed node is listed", async || {
        let reply = api.call(Method::GET, "management/nodes", None).await;
        reply["code"] == 0 && node_names(&reply["result"]) == vec!["renamed@127.0.0.1"]
    })
    .await;
    let started = Instant::now();
    assert_eq!(api.code(Method::GET, &format!("nodes/{NODE}/clients"), None).await, 101);
    assert!(started.elapsed() < Duration::from_millis(300), "{:?}", started.elapsed());
    assert_eq!(api.get("monitoring/stats").await.as_array().unwrap().len(), 1);
}
