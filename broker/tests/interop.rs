//! Clients we did not write: Mosquitto's command-line tools and Python's paho-mqtt, against the broker.
//! `.ci/run` installs them; run it once locally, or `apt-get install mosquitto-clients` and
//! `pip install paho-mqtt`.

mod helpers;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use helpers::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TOOL_WAIT: Duration = Duration::from_secs(15);

fn tool(name: &str) -> Command {
    let mut command = Command::new(name);
    command.kill_on_drop(true).stdin(Stdio::null());
    command
}

async fn run(mut command: Command) -> String {
    let output = tokio::time::timeout(TOOL_WAIT, command.output())
        .await
        .expect("tool finishes in time")
        .unwrap_or_else(|e| panic!("cannot run {command:?} ({e}); .ci/run installs the interop tools"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Option<String> {
    tokio::time::timeout(TOOL_WAIT, lines.next_line()).await.expect("a line in time").expect("readable stdout")
}

#[tokio::test]
async fn mosquitto_clients_v31_and_v311() {
    let broker = start_default().await;
    check_mosquitto_clients_v31_and_v311(broker.addr).await;
    broker.stop().await;
}

async fn check_mosquitto_clients_v31_and_v311(addr: SocketAddr) {
    let port = addr.port().to_string();
    for version in ["mqttv311", "mqttv31"] {
        let topic = format!("interop/{version}");
        let mut publish = tool("mosquitto_pub");
        publish.args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1", "-r", "-t", &topic, "-m", "retained"]);
        run(publish).await;

        let mut subscribe = tool("mosquitto_sub");
        subscribe
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "2", "-v", "-C", "2", "-t", &topic])
            .stdout(Stdio::piped());
        let mut child = subscribe.spawn().expect("mosquitto_sub starts; .ci/run installs it");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The retained message arrives first and proves the subscription is in place.
        assert_eq!(next_line(&mut lines).await, Some(format!("{topic} retained")));

        let mut live = tool("mosquitto_pub");
        live.args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "2", "-t", &topic, "-m", "live"]);
        run(live).await;
        assert_eq!(next_line(&mut lines).await, Some(format!("{topic} live")));
        let status = tokio::time::timeout(TOOL_WAIT, child.wait()).await.unwrap().unwrap();
        assert!(status.success());
    }
}

#[tokio::test]
async fn paho_mqtt_v31_and_v311() {
    let broker = start_default().await;
    check_paho_mqtt_v31_and_v311(broker.addr).await;
    broker.stop().await;
}

async fn check_paho_mqtt_v31_and_v311(addr: SocketAddr) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_roundtrip.py");
    let mut python = tool("python3");
    python.arg(script).arg(addr.port().to_string());
    let out = run(python).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["v311 paho/v311 from-v311 2", "v31 paho/v31 from-v31 2"]);
}

/// paho-mqtt at MQTT 5: no-local, a subscription identifier, properties and a topic alias passed
/// through, and a session kept by its expiry interval (see the script for each step).
#[tokio::test]
async fn paho_mqtt_v5() {
    let broker = start_default().await;
    check_paho_mqtt_v5(broker.addr).await;
    broker.stop().await;
}

async fn check_paho_mqtt_v5(addr: SocketAddr) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_v5.py");
    let mut python = tool("python3");
    python.arg(script).arg(addr.port().to_string());
    let out = run(python).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "connack Success 100",
            "paho5-sub paho5/aliased first qos=1 user=[('k', 'v'), ('k', 'w')] ids=[5] content=text/plain",
            "paho5-sub paho5/aliased second qos=1 user=[] ids=[5] content=None",
            "resumed present True",
            "paho5-keeper kept/while-away queued qos=1 user=[] ids=[] content=None",
        ]
    );
}

/// Mosquitto's tools at MQTT 5: properties set with `-D` arrive, printed by `-F`, with the subscription
/// identifier; a retained message arrives with its flag and none of the properties it was not given.
#[tokio::test]
async fn mosquitto_clients_v5() {
    let broker = start_default().await;
    check_mosquitto_clients_v5(broker.addr).await;
    broker.stop().await;
}

async fn check_mosquitto_clients_v5(addr: SocketAddr) {
    let port = addr.port().to_string();
    let mut retained = tool("mosquitto_pub");
    retained.args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-r", "-t", "m5/old", "-m", "retained"]);
    run(retained).await;

    let mut subscribe = tool("mosquitto_sub");
    subscribe
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1", "-C", "2", "-t", "m5/#"])
        .args(["-D", "subscribe", "subscription-identifier", "9"])
        .args(["-F", "%t %p r=%r ct=%C exp=%E user=%P id=%S rt=%R"])
        .stdout(Stdio::piped());
    let mut child = subscribe.spawn().expect("mosquitto_sub starts; .ci/run installs it");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The retained message arrives first and proves the subscription is in place.
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("m5/old retained r=1 ct= exp= user= id=9 rt="));
    let mut live = tool("mosquitto_pub");
    live.args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1", "-t", "m5/new", "-m", "live"])
        .args(["-D", "publish", "content-type", "text/x", "-D", "publish", "message-expiry-interval", "300"])
        .args(["-D", "publish", "user-property", "k", "v", "-D", "publish", "response-topic", "r/t"]);
    run(live).await;
    let line = next_line(&mut lines).await.expect("a message");
    // The expiry is the time left: 300, or 299 if a second turned meanwhile.
    let line = line.replace("exp=299", "exp=300");
    assert_eq!(line, "m5/new live r=0 ct=text/x exp=300 user=k:v id=9 rt=r/t");
    let status = tokio::time::timeout(TOOL_WAIT, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

/// paho's `connect(); subscribe(); publish(); loop_start()` writes SUBSCRIBE and PUBLISH before it reads
/// CONNACK; they must not be lost.
#[tokio::test]
async fn paho_mqtt_pipelining_behind_connect() {
    let broker = start_default().await;
    check_paho_mqtt_pipelining_behind_connect(broker.addr).await;
    broker.stop().await;
}

async fn check_paho_mqtt_pipelining_behind_connect(addr: SocketAddr) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_pipelined.py");
    let mut python = tool("python3");
    python.arg(script).arg(addr.port().to_string());
    assert_eq!(run(python).await, "pipelined/paho right-behind-connect 1\n");
}

/// paho publishing QoS 1 without a window of its own into a slower paho subscriber whose queue holds
/// 100: every message acknowledged to the publisher arrives, in order (the broker slows the publisher,
/// router/outbox.rs), where before 349 of 3,000 did.
#[tokio::test]
async fn paho_mqtt_flooding_a_slow_subscriber_loses_nothing() {
    let broker = start(Config { max_inflight: 10, max_mqueue_len: 100, ..config() }).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_flood.py");
    let mut python = tool("python3");
    python.arg(script).arg(broker.addr.port().to_string()).arg("3000");
    assert_eq!(run(python).await, "acked 3000 received 3000 in-order True\n");
    broker.stop().await;
}

/// paho-mqtt (MQTT 5) sessions with a 2-second expiry, parked together, some resumed in between: each
/// is there before its expiry and gone after it, also to a client that comes back within the router's
/// once-a-second sweep (paho found one resumed 0.6 s late before the connect looked for itself).
#[tokio::test]
async fn paho_mqtt_sessions_expire_when_their_client_chose() {
    let broker = start(config()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_expiry.py");
    let mut python = tool("python3");
    python.arg(script).arg(broker.addr.port().to_string());
    let expected = "resumed-early True\n".repeat(2) + &"after-expiry False\n".repeat(5);
    assert_eq!(run(python).await, expected);
    broker.stop().await;
}

/// Mosquitto's clients over TLS: `--cafile` against the server certificate, `--cert/--key` where the
/// listener requires a client certificate; one that trusts another CA is refused, and the others go on.
#[tokio::test]
async fn mosquitto_clients_over_tls_with_and_without_client_certificates() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let plain = ListenerConfig {
        certfile: Some(server.cert.clone()),
        keyfile: Some(server.key.clone()),
        ..ListenerConfig::new(ListenerKind::Ssl, "127.0.0.1:0".parse().unwrap())
    };
    let mutual = ListenerConfig {
        cacertfile: Some(pki.ca.clone()),
        verify_peer: true,
        fail_if_no_peer_cert: true,
        ..plain.clone()
    };
    let broker = start(Config { listener: vec![plain, mutual], ..config() }).await;
    let (tls, mtls) = (broker.listener(ListenerKind::Ssl, 0).port(), broker.listener(ListenerKind::Ssl, 1).port());
    let ca = pki.ca.to_str().unwrap().to_string();
    let client = pki.client("mosquitto");
    let (cert, key) = (client.cert.to_str().unwrap().to_string(), client.key.to_str().unwrap().to_string());

    let mut subscribe = tool("mosquitto_sub");
    subscribe
        .args(["-h", "localhost", "-p", &tls.to_string(), "--cafile", &ca, "-q", "1", "-v", "-C", "2"])
        .args(["-t", "tls/#"])
        .stdout(Stdio::piped());
    let mut child = subscribe.spawn().expect("mosquitto_sub starts; .ci/run installs it");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Retained first: once it arrives the subscription is in place.
    let mut retained = tool("mosquitto_pub");
    retained.args(["-h", "localhost", "-p", &tls.to_string(), "--cafile", &ca, "-r", "-t", "tls/retained", "-m", "r"]);
    run(retained).await;
    assert_eq!(next_line(&mut lines).await, Some("tls/retained r".into()));

    let mut stranger = tool("mosquitto_pub");
    let other_ca = pki::Pki::new("other-ca").ca.to_str().unwrap().to_string();
    stranger.args(["-h", "localhost", "-p", &tls.to_string(), "--cafile", &other_ca, "-t", "tls/x", "-m", "no"]);
    let refused = tokio::time::timeout(TOOL_WAIT, stranger.output()).await.unwrap().unwrap();
    assert!(!refused.status.success(), "a client that trusts another CA does not get through");
    let mut anonymous = tool("mosquitto_pub");
    anonymous.args(["-h", "localhost", "-p", &mtls.to_string(), "--cafile", &ca, "-t", "tls/x", "-m", "no"]);
    let refused = tokio::time::timeout(TOOL_WAIT, anonymous.output()).await.unwrap().unwrap();
    assert!(!refused.status.success(), "no client certificate where one is required");

    let mut mutual = tool("mosquitto_pub");
    mutual.args(["-h", "localhost", "-p", &mtls.to_string(), "--cafile", &ca, "--cert", &cert, "--key", &key]);
    mutual.args(["-q", "1", "-t", "tls/mutual", "-m", "with-certificate"]);
    run(mutual).await;
    assert_eq!(next_line(&mut lines).await, Some("tls/mutual with-certificate".into()));
    let status = tokio::time::timeout(TOOL_WAIT, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    broker.stop().await;
}

/// paho-mqtt (Python's ssl module) over TLS, with a client certificate where the listener asks for one.
#[tokio::test]
async fn paho_mqtt_over_tls() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let mutual = ListenerConfig {
        certfile: Some(server.cert.clone()),
        keyfile: Some(server.key.clone()),
        cacertfile: Some(pki.ca.clone()),
        verify_peer: true,
        fail_if_no_peer_cert: true,
        ..ListenerConfig::new(ListenerKind::Ssl, "127.0.0.1:0".parse().unwrap())
    };
    let broker = start(Config { listener: vec![mutual], ..config() }).await;
    let port = broker.listener(ListenerKind::Ssl, 0).port().to_string();
    let client = pki.client("paho");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_transport.py");
    let mut python = tool("python3");
    python.args([script, &port, "--ca"]).arg(&pki.ca).arg("--cert").arg(&client.cert).arg("--key").arg(&client.key);
    assert_eq!(run(python).await, "paho/transport over-tcp 1\n");
    let mut without = tool("python3");
    without.args([script, &port, "--ca"]).arg(&pki.ca);
    assert!(run(without).await.starts_with("refused"), "no client certificate, no connection");
    broker.stop().await;
}

/// paho-mqtt with `transport="websockets"`, over ws and over wss.
#[tokio::test]
async fn paho_mqtt_over_websocket_and_secure_websocket() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let ws = ListenerConfig::new(ListenerKind::Ws, "127.0.0.1:0".parse().unwrap());
    let wss = ListenerConfig {
        certfile: Some(server.cert.clone()),
        keyfile: Some(server.key.clone()),
        ..ListenerConfig::new(ListenerKind::Wss, "127.0.0.1:0".parse().unwrap())
    };
    let broker = start(Config { listener: vec![ws, wss], ..config() }).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_transport.py");
    let mut python = tool("python3");
    python.args([script, &broker.listener(ListenerKind::Ws, 0).port().to_string(), "--ws", "/mqtt"]);
    assert_eq!(run(python).await, "paho/transport over-ws 1\n");
    let mut python = tool("python3");
    python.args([script, &broker.listener(ListenerKind::Wss, 0).port().to_string(), "--ws", "/mqtt", "--ca"]);
    python.arg(&pki.ca);
    assert_eq!(run(python).await, "paho/transport over-ws 1\n");
    broker.stop().await;
}

/// The same clients against the nodes of a cluster of two (through a real nats-server): their traffic
/// takes the cluster's paths (client ids claimed cluster-wide, routes confirmed in NATS, retained
/// messages kept in JetStream, sessions recorded), and they see a broker as they do on one node.
#[tokio::test]
async fn the_same_clients_against_clustered_nodes() {
    let nats = helpers::nats::nats().await;
    let node = |name: &str| Config { node: format!("{name}@127.0.0.1"), cluster: vec![nats.url.clone()], ..config() };
    let (a, b) = (start(node("a")).await, start(node("b")).await);
    // Each on both nodes, the second time after the first left its traces (retained messages, kept
    // sessions) on the other.
    for (first, second) in [(a.addr, b.addr), (b.addr, a.addr)] {
        check_mosquitto_clients_v31_and_v311(first).await;
        check_paho_mqtt_v31_and_v311(second).await;
        check_paho_mqtt_v5(first).await;
        check_mosquitto_clients_v5(second).await;
        check_paho_mqtt_pipelining_behind_connect(first).await;
    }
    a.stop().await;
    b.stop().await;
}
