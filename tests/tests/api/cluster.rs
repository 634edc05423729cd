//! Three brokers clustered through a real nats-server (Debian's package), and one sidecar, a client of
//! the first broker: the `/api/v2` cluster routes answer for every node, as EMQ's do.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const NODES: [&str; 3] = ["midge1@127.0.0.1", "midge2@127.0.0.1", "midge3@127.0.0.1"];

/// A nats-server with JetStream on a free port, killed when dropped.
struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    fn start() -> NatsServer {
        let store = tempdir();
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&store)
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server installed (Debian's nats-server package; .ci/run installs it)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
        let port = lines
            .find_map(|line| {
                line.contains("Listening for client connections on")
                    .then(|| line.rsplit(':').next().unwrap().trim().to_string())
            })
            .expect("nats-server says where it listens");
        // Keep reading its log, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        NatsServer { child, url: format!("nats://127.0.0.1:{port}") }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn names(list: &Value) -> Vec<String> {
    let nodes = list.as_array().into_iter().flatten();
    let mut names: Vec<String> = nodes.filter_map(|node| node["name"].as_str().map(str::to_string)).collect();
    names.sort();
    names
}

/// Waits until `management/nodes` lists `want`.
async fn wait_for_nodes(api: &Api, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = api.send(Method::GET, "management/nodes", None, true).await;
        let listed = serde_json::from_str::<Value>(&text).ok().map(|reply| names(&reply["result"]));
        if listed.as_deref() == Some(&want.iter().map(|n| n.to_string()).collect::<Vec<_>>()[..]) {
            return;
        }
        assert!(Instant::now() < deadline, "management/nodes never listed {want:?}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The seed example's walk (clients, sessions, subscriptions, routes, publish, kick) against a cluster
/// of three, with the sidecar on the first node and the client on the third; then the third is killed:
/// it leaves the node list and its routes answer 101 at once; then the first: the sidecar fails over
/// to the second.
#[tokio::test]
async fn the_api_answers_for_every_node_of_a_cluster() {
    let nats = NatsServer::start();
    let mut brokers: Vec<Process> =
        NODES.iter().map(|node| start_broker_with("127.0.0.1:0", node, &["--cluster", &nats.url])).collect();
    let dir = tempdir();
    let every: Vec<String> = brokers.iter().map(|broker| broker.addr.to_string()).collect();
    let mgmt = start_mgmt_of(&every.join(","), &dir.join("mgmt.db"), None, &["--heartbeat-ms", "500"]);
    let api = Api::new(mgmt.addr);
    wait_for_nodes(&api, &NODES).await;
    assert_eq!(names(&api.get("monitoring/nodes").await), NODES);
    assert_eq!(api.get(&format!("management/nodes/{}", NODES[2])).await["node_status"], "Running");

    let mut js = Client::connect(brokers[2].addr.port(), "mqttjs_722b4d845f").await;
    js.subscribe(&api, "mqttjs_722b4d845f", "/World").await;
    let on = |node: &str| format!("nodes/{node}/clients");
    let listed =
        |page: &Value| page["objects"].as_array().unwrap().iter().any(|c| c["client_id"] == "mqttjs_722b4d845f");
    assert!(listed(&api.get(&on(NODES[2])).await), "on the node it is connected to");
    assert!(!listed(&api.get(&on(NODES[0])).await), "not on the sidecar's node");
    assert_eq!(api.get("clients/mqttjs_722b4d845f").await["objects"][0]["client_id"], "mqttjs_722b4d845f");
    assert_eq!(api.get("sessions/mqttjs_722b4d845f").await["objects"][0]["client_id"], "mqttjs_722b4d845f");
    let route = json!({"topic": "/World", "node": NODES[2]});
    assert!(api.get("routes").await["objects"].as_array().unwrap().contains(&route));
    assert_eq!(api.get("routes//World").await, json!({"objects": [route]}));

    // Published through the first node, delivered on the third.
    let body = json!({"topic": "/World", "payload": "across", "qos": 1, "retain": false, "client_id": "api"});
    api.ok(Method::POST, "mqtt/publish", Some(body)).await;
    assert_eq!(&js.next_message().await.payload[..], b"across");
    // Kicked through the first node, on the third.
    api.ok(Method::DELETE, "clients/mqttjs_722b4d845f", None).await;
    js.wait_closed().await;

    brokers[2].kill();
    let started = Instant::now();
    let code = api.code(Method::GET, &on(NODES[2]), None).await;
    assert_eq!(code, 101);
    assert!(started.elapsed() < Duration::from_secs(1), "101 after {:?}", started.elapsed());
    wait_for_nodes(&api, &NODES[..2]).await;
    assert_eq!(api.code(Method::GET, &on(NODES[2]), None).await, 101);
    assert!(api.get(&on(NODES[1])).await["objects"].is_array(), "the others still answer");

    // The sidecar's own broker goes: it moves on to the next one that answers.
    brokers[0].kill();
    wait_for_nodes(&api, &NODES[1..2]).await;
    assert!(api.get(&on(NODES[1])).await["objects"].is_array());
}
