//! Every route of /api/v2 against the real broker and sidecar processes.

use std::time::{Duration, Instant};

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn basic_auth_status_and_unknown_routes() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let (status, text) = api.send(Method::GET, "users", None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    let (status, _) = api.as_user("admin", "wrong").send(Method::GET, "users", None, true).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.as_user("ghost", "public").send(Method::GET, "users", None, true).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = reqwest::get(format!("{}/api/v2/users", api.base)).await.unwrap();
    assert_eq!(
        response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"emqx control center\"")
    );

    let status_page = reqwest::get(format!("{}/status", api.base)).await.unwrap();
    assert_eq!(status_page.status(), StatusCode::OK);
    assert!(status_page.text().await.unwrap().contains(&format!("Node {NODE} is started")));

    let (status, _) = api.send(Method::GET, "no/such/route", None, true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.send(Method::PATCH, "users", None, true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // POST auth needs no Basic auth.
    let (status, text) =
        api.send(Method::POST, "auth", Some(r#"{"username":"admin","password":"public"}"#), false).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&text).unwrap()),
        (StatusCode::OK, json!({"code":0,"result":[]}))
    );
    let (_, text) = api.send(Method::POST, "auth", Some(r#"{"username":"admin","password":"nope"}"#), false).await;
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], 103);
    let (_, text) = api.send(Method::POST, "auth", Some(r#"{"username":"","password":"x"}"#), false).await;
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], 104);
    let (_, text) = api.send(Method::POST, "auth", Some("not json"), false).await;
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], 109);
}

#[tokio::test]
async fn nodes() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let nodes = api.get("management/nodes").await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(
        keys(&nodes[0]),
        sorted(&["name", "version", "sysdescr", "uptime", "datetime", "otp_release", "node_status"])
    );
    assert_eq!(nodes[0]["name"], NODE);
    assert_eq!(nodes[0]["node_status"], "Running");
    let node = api.get(&format!("management/nodes/{NODE}")).await;
    assert_eq!(keys(&node), sorted(&["version", "sysdescr", "uptime", "datetime", "otp_release", "node_status"]));

    let monitoring = api.get("monitoring/nodes").await;
    let expected = sorted(&[
        "name",
        "otp_release",
        "memory_total",
        "memory_used",
        "process_available",
        "process_used",
        "max_fds",
        "clients",
        "node_status",
        "load1",
        "load5",
        "load15",
    ]);
    assert_eq!(keys(&monitoring[0]), expected);
    let one = api.get(&format!("monitoring/nodes/{NODE}")).await;
    assert_eq!(keys(&one), expected);
    assert_eq!(one["clients"], 0, "the sidecar's own connection is no client of the users'");
    assert_eq!(api.get(&format!("nodes/{NODE}/alarms")).await, json!([]));

    for path in ["management/nodes/nobody@nowhere", "monitoring/nodes/nobody@nowhere", "nodes/nobody@nowhere/clients"] {
        assert_eq!(api.code(Method::GET, path, None).await, 101, "{path}");
    }
}

#[tokio::test]
async fn the_seed_example_through_clients_sessions_subscriptions_and_routes() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let js = Client::connect(stack.mqtt_port(), "mqttjs_722b4d845f").await;
    js.subscribe(api, "mqttjs_722b4d845f", "/World").await;

    let page = api.get(&format!("nodes/{NODE}/clients")).await;
    assert_eq!(keys(&page), sorted(&["current_page", "page_size", "total_num", "total_page", "objects"]));
    let client = page["objects"].as_array().unwrap().iter().find(|c| c["client_id"] == "mqttjs_722b4d845f").unwrap();
    assert_eq!(
        keys(client),
        sorted(&["client_id", "username", "ipaddress", "port", "clean_sess", "proto_ver", "keepalive", "connected_at"])
    );
    assert_eq!(
        (&client["username"], &client["ipaddress"], &client["proto_ver"]),
        (&json!("undefined"), &json!("127.0.0.1"), &json!(4))
    );
    for path in [format!("nodes/{NODE}/clients/mqttjs_722b4d845f"), "clients/mqttjs_722b4d845f".to_string()] {
        let found = api.get(&path).await;
        assert_eq!(found["objects"].as_array().unwrap().len(), 1, "{path}");
        assert_eq!(found["objects"][0]["client_id"], "mqttjs_722b4d845f");
    }
    assert_eq!(api.get("clients/nobody").await, json!({"objects": []}));

    let sessions = api.get(&format!("nodes/{NODE}/sessions")).await;
    let session =
        sessions["objects"].as_array().unwrap().iter().find(|s| s["client_id"] == "mqttjs_722b4d845f").unwrap();
    assert_eq!(
        keys(session),
        sorted(&[
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
            "created_at"
        ])
    );
    assert_eq!(session["subscriptions"], 1);
    for path in [format!("nodes/{NODE}/sessions/mqttjs_722b4d845f"), "sessions/mqttjs_722b4d845f".to_string()] {
        assert_eq!(api.get(&path).await["objects"][0]["client_id"], "mqttjs_722b4d845f", "{path}");
    }

    let subscription = json!({"client_id": "mqttjs_722b4d845f", "topic": "/World", "qos": 1});
    let subs = api.get(&format!("nodes/{NODE}/subscriptions")).await;
    assert!(subs["objects"].as_array().unwrap().contains(&subscription));
    for path in [format!("nodes/{NODE}/subscriptions/mqttjs_722b4d845f"), "subscriptions/mqttjs_722b4d845f".to_string()]
    {
        assert_eq!(api.get(&path).await, json!({"objects": [subscription]}), "{path}");
    }

    let route = json!({"topic": "/World", "node": NODE});
    assert!(api.get("routes").await["objects"].as_array().unwrap().contains(&route));
    assert_eq!(api.get("routes//World").await, json!({"objects": [route]}));
    assert_eq!(api.get("routes/%2FWorld").await, json!({"objects": [route]}));
    assert_eq!(api.get("routes/World").await, json!({"objects": []}));
}

#[tokio::test]
async fn paging_arithmetic_and_bad_paging() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let mut clients = Vec::new();
    for i in 0..24 {
        clients.push(Client::connect(stack.mqtt_port(), &format!("pager-{i:02}")).await);
    }
    // 24 clients (the sidecar's own connection is not listed).
    let page = api.get(&format!("nodes/{NODE}/clients?curr_page=2&page_size=10")).await;
    assert_eq!(
        (&page["current_page"], &page["page_size"], &page["total_num"], &page["total_page"]),
        (&json!(2), &json!(10), &json!(24), &json!(3))
    );
    let ids: Vec<&str> = page["objects"].as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (10..20).map(|i| format!("pager-{i:02}")).collect();
    assert_eq!(ids, expected, "ordered by client id");
    let last = api.get(&format!("nodes/{NODE}/clients?curr_page=3&page_size=10")).await;
    assert_eq!(last["objects"].as_array().unwrap().len(), 4);
    let past = api.get(&format!("nodes/{NODE}/clients?curr_page=9&page_size=10")).await;
    assert_eq!((past["objects"].clone(), past["total_num"].clone()), (json!([]), json!(24)));
    let default = api.get(&format!("nodes/{NODE}/sessions")).await;
    assert_eq!(
        (&default["current_page"], &default["page_size"], &default["total_page"]),
        (&json!(1), &json!(20), &json!(2))
    );

    for query in ["curr_page=0", "page_size=0", "curr_page=abc", "page_size=-1", "curr_page=1.5"] {
        for list in ["clients", "sessions", "subscriptions"] {
            assert_eq!(
                api.code(Method::GET, &format!("nodes/{NODE}/{list}?{query}"), None).await,
                108,
                "{list}?{query}"
            );
        }
        assert_eq!(api.code(Method::GET, &format!("routes?{query}"), None).await, 108, "routes?{query}");
    }
    let empty_routes = api.get("routes?curr_page=1&page_size=5").await;
    assert_eq!(empty_routes["total_num"], 0, "the sidecar's own subscriptions are no routes");
}

#[tokio::test]
async fn mqtt_publish_subscribe_unsubscribe() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let mut js = Client::connect(stack.mqtt_port(), "mqttjs_722b4d845f").await;
    let body = json!({"topic": "/World", "qos": 1, "client_id": "mqttjs_722b4d845f"});
    assert_eq!(api.ok(Method::POST, "mqtt/subscribe", Some(body)).await, json!([]));
    let publish =
        json!({"topic": "/World", "payload": "hello", "qos": 0, "retain": false, "client_id": "mqttjs_722b4d845f"});
    assert_eq!(api.ok(Method::POST, "mqtt/publish", Some(publish)).await, json!([]));
    let message = js.next_message().await;
    assert_eq!((message.topic.as_str(), &message.payload[..]), ("/World", &b"hello"[..]));
    // Defaults: payload "", qos 0, retain false, client_id "http".
    assert_eq!(api.ok(Method::POST, "mqtt/publish", Some(json!({"topic": "/World"}))).await, json!([]));
    assert!(js.next_message().await.payload.is_empty());

    let unsubscribe = json!({"topic": "/World", "client_id": "mqttjs_722b4d845f"});
    assert_eq!(api.ok(Method::POST, "mqtt/unsubscribe", Some(unsubscribe)).await, json!([]));
    assert_eq!(api.get("subscriptions/mqttjs_722b4d845f").await, json!({"objects": []}));

    let cases = [
        ("mqtt/publish", json!({"payload": "x"}), 107),
        ("mqtt/publish", json!({"topic": 5}), 108),
        ("mqtt/publish", json!({"topic": "a", "qos": "x"}), 108),
        ("mqtt/publish", json!({"topic": "a", "qos": 3}), 108),
        ("mqtt/publish", json!({"topic": "a", "retain": "yes"}), 108),
        ("mqtt/publish", json!({"topic": "a/+"}), 102),
        ("mqtt/subscribe", json!({"topic": "a"}), 107),
        ("mqtt/subscribe", json!({"client_id": "c"}), 107),
        ("mqtt/subscribe", json!({"topic": "a", "client_id": "nobody"}), 102),
        ("mqtt/subscribe", json!({"topic": "a/#/b", "client_id": "mqttjs_722b4d845f"}), 102),
        ("mqtt/unsubscribe", json!({"topic": "a"}), 107),
        ("mqtt/unsubscribe", json!({"topic": "a", "client_id": "nobody"}), 102),
    ];
    for (path, body, code) in cases {
        assert_eq!(api.code(Method::POST, path, Some(body.clone())).await, code, "{path} {body}");
    }
    for path in ["mqtt/publish", "mqtt/subscribe", "mqtt/unsubscribe"] {
        assert_eq!(api.code_raw(Method::POST, path, "{not json").await, 109, "{path}");
    }
}

#[tokio::test]
async fn kick_and_clean_acl_cache() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let mut client = Client::connect(stack.mqtt_port(), "kick/me").await;
    let body = json!({"topic": "test"});
    assert_eq!(api.ok(Method::PUT, "clients/kick/me/clean_acl_cache", Some(body.clone())).await, json!([]));
    assert_eq!(api.code(Method::PUT, "clients/kick/me/clean_acl_cache", Some(json!({}))).await, 107);
    assert_eq!(api.code_raw(Method::PUT, "clients/kick/me/clean_acl_cache", "nope").await, 109);
    assert_eq!(api.ok(Method::DELETE, "clients/kick/me", None).await, json!([]));
    client.wait_closed().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while api.get("clients/kick/me").await["objects"].as_array().unwrap().len() == 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.code(Method::DELETE, "clients/kick/me", None).await, 112);
    assert_eq!(api.code(Method::PUT, "clients/kick/me/clean_acl_cache", Some(body)).await, 112);
}

/// The sidecar's own connection is not among the clients a "kick everyone" script finds, and no client
/// can take its session over by reusing an id from its namespace: the API keeps answering.
#[tokio::test]
async fn kicking_every_client_or_stealing_the_sidecars_id_leaves_the_api_up() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Client::connect(stack.mqtt_port(), &format!("victim-{i}")).await);
    }
    let listed = api.get(&format!("nodes/{NODE}/clients?page_size=100")).await;
    let ids: Vec<String> =
        listed["objects"].as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec!["victim-0", "victim-1", "victim-2"]);
    for id in &ids {
        assert_eq!(api.ok(Method::DELETE, &format!("clients/{id}"), None).await, json!([]));
    }
    for client in &mut clients {
        client.wait_closed().await;
    }
    for attempt in 0..5 {
        let mut options =
            rumqttc::MqttOptions::new(format!("midge-mgmt-{attempt:08x}"), "127.0.0.1", stack.mqtt_port());
        options.set_clean_session(true);
        let (_client, mut events) = rumqttc::AsyncClient::new(options, 10);
        match events.poll().await {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, rumqttc::ConnectReturnCode::BadClientId)
            }
            other => panic!("an id in the management namespace was not refused: {other:?}"),
        }
    }
    assert_eq!(api.get("management/nodes").await[0]["name"], NODE, "the API still reaches the broker");
}

#[tokio::test]
async fn plugins_and_plugin_configs() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let plugins = api.get(&format!("nodes/{NODE}/plugins")).await;
    let retainer = plugins.as_array().unwrap().iter().find(|p| p["name"] == "emq_retainer").unwrap();
    assert_eq!(keys(retainer), sorted(&["name", "version", "description", "active"]));
    assert_eq!(retainer["active"], true);

    let path = format!("nodes/{NODE}/plugins/emq_retainer");
    assert_eq!(api.code(Method::PUT, &path, Some(json!({"active": true}))).await, 110);
    assert_eq!(api.ok(Method::PUT, &path, Some(json!({"active": false}))).await, json!([]));
    assert_eq!(api.code(Method::PUT, &path, Some(json!({"active": false}))).await, 111);
    assert_eq!(api.code(Method::PUT, &path, Some(json!({}))).await, 107);
    assert_eq!(api.code(Method::PUT, &path, Some(json!({"active": "yes"}))).await, 108);
    assert_eq!(api.code_raw(Method::PUT, &path, "active").await, 109);
    assert_eq!(api.code(Method::PUT, "nodes/nobody@x/plugins/emq_retainer", Some(json!({"active": true}))).await, 101);

    let config_path = format!("nodes/{NODE}/plugin_configs/emq_auth_username");
    let body = json!({"auth.user.1.username": "alice", "auth.user.1.password": "s3cret"});
    assert_eq!(api.ok(Method::PUT, &config_path, Some(body)).await, json!([]));
    let rows = api.get(&config_path).await;
    let row = rows.as_array().unwrap().iter().find(|r| r["key"] == "auth.user.1.password").unwrap();
    assert_eq!(keys(row), sorted(&["key", "value", "desc", "required"]));
    assert!(row["value"].as_str().unwrap().starts_with("$argon2id$"));
    assert_eq!(api.code(Method::PUT, &config_path, Some(json!({"auth.user.1.username": 5}))).await, 108);
    assert_eq!(api.code(Method::PUT, &config_path, Some(json!({"no.such.key": "x"}))).await, 102);
}

#[tokio::test]
async fn listeners_metrics_and_stats() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let _client = Client::connect(stack.mqtt_port(), "counted").await;
    let listeners = api.get("monitoring/listeners").await;
    let rows = listeners[NODE].as_array().unwrap();
    assert_eq!(
        keys(&rows[0]),
        sorted(&["protocol", "listen", "acceptors", "max_clients", "current_clients", "shutdown_count"])
    );
    assert_eq!(rows[0]["listen"], stack.broker.addr.to_string());
    assert_eq!(api.get(&format!("monitoring/listeners/{NODE}")).await, json!(rows));

    let metrics = api.get("monitoring/metrics").await;
    assert!(metrics["packets/connect"].as_u64().unwrap() >= 1);
    assert_eq!(metrics.as_object().unwrap().len(), 38);
    let node_metrics = api.get(&format!("monitoring/metrics/{NODE}")).await;
    assert_eq!(keys(&node_metrics), keys(&metrics));

    let stats = api.get("monitoring/stats").await;
    assert_eq!(stats[0][NODE]["clients/count"], 1);
    assert_eq!(stats[0][NODE].as_object().unwrap().len(), 14);
    assert_eq!(api.get(&format!("monitoring/stats/{NODE}")).await["sessions/count"], 1);
    assert_eq!(api.code(Method::GET, "monitoring/metrics/nobody@x", None).await, 101);
}

#[tokio::test]
async fn configs_read_and_change() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let all = api.get("configs").await;
    let rows = all[NODE].as_array().unwrap();
    assert_eq!(keys(&rows[0]), sorted(&["key", "value", "datatpye", "app"]));
    assert_eq!(api.get(&format!("nodes/{NODE}/configs")).await, json!(rows));

    let body = json!({"key": "mqtt.allow_anonymous", "value": "false"});
    assert_eq!(api.ok(Method::PUT, "configs/emqttd", Some(body)).await, json!([]));
    let node_configs = api.get(&format!("nodes/{NODE}/configs")).await;
    let anonymous = node_configs.as_array().unwrap().iter().find(|r| r["key"] == "mqtt.allow_anonymous").unwrap();
    assert_eq!(anonymous["value"], "false");
    // It took effect: an anonymous MQTT client is now refused.
    let mut options = rumqttc::MqttOptions::new("anon", "127.0.0.1", stack.mqtt_port());
    options.set_keep_alive(Duration::from_secs(5));
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    assert!(eventloop.poll().await.is_err(), "anonymous connect refused");

    let path = format!("nodes/{NODE}/configs/emqttd");
    assert_eq!(
        api.ok(Method::PUT, &path, Some(json!({"key": "mqtt.allow_anonymous", "value": "true"}))).await,
        json!([])
    );
    assert_eq!(api.code(Method::PUT, &path, Some(json!({"key": "mqtt.allow_anonymous", "value": "maybe"}))).await, 102);
    assert_eq!(api.code(Method::PUT, &path, Some(json!({"key": "mqtt.broker.sys_interval", "value": 5}))).await, 108);
    assert_eq!(api.code(Method::PUT, &path, Some(json!({"value": "x"}))).await, 107);
    assert_eq!(api.code_raw(Method::PUT, &path, "key=value").await, 109);
    assert_eq!(api.code(Method::PUT, "configs/emqttd", Some(json!({"key": "no.such.key", "value": "1"}))).await, 102);
    assert_eq!(
        api.code(Method::PUT, "nodes/nobody@x/configs/emqttd", Some(json!({"key": "k", "value": "v"}))).await,
        101
    );
}

#[tokio::test]
async fn users() {
    let stack = Stack::start().await;
    let api = &stack.api;
    assert_eq!(api.get("users").await, json!([{"username": "admin", "tags": "administrator"}]));
    let body = json!({"username": "test_user", "password": "password", "tags": "user"});
    assert_eq!(api.ok(Method::POST, "users", Some(body.clone())).await, json!([]));
    assert_eq!(api.code(Method::POST, "users", Some(body)).await, 113);
    assert_eq!(api.code(Method::POST, "users", Some(json!({"username": "", "password": "p"}))).await, 104);
    assert_eq!(api.code(Method::POST, "users", Some(json!({"username": "u", "password": ""}))).await, 104);
    assert_eq!(api.code(Method::POST, "users", Some(json!({"username": "u"}))).await, 107);
    assert_eq!(api.code(Method::POST, "users", Some(json!({"username": 1, "password": "p"}))).await, 108);
    assert_eq!(api.code_raw(Method::POST, "users", "username=u").await, 109);
    assert_eq!(api.get("users/test_user").await, json!({"username": "test_user", "tags": "user"}));
    assert_eq!(api.code(Method::GET, "users/nobody", None).await, 105);

    // The new user can use the API.
    let test_user = api.as_user("test_user", "password");
    assert_eq!(test_user.get("users").await.as_array().unwrap().len(), 2);

    assert_eq!(api.ok(Method::PUT, "users/test_user", Some(json!({"tags": "admin"}))).await, json!([]));
    assert_eq!(api.get("users/test_user").await["tags"], "admin");
    assert_eq!(api.code(Method::PUT, "users/nobody", Some(json!({"tags": "x"}))).await, 105);
    assert_eq!(api.code(Method::PUT, "users/test_user", Some(json!({}))).await, 107);

    let change = json!({"old_pwd": "password", "new_pwd": "newpassword"});
    assert_eq!(api.ok(Method::PUT, "change_pwd/test_user", Some(change.clone())).await, json!([]));
    assert_eq!(api.code(Method::PUT, "change_pwd/test_user", Some(change)).await, 114);
    assert_eq!(api.code(Method::PUT, "change_pwd/nobody", Some(json!({"old_pwd": "a", "new_pwd": "b"}))).await, 105);
    assert_eq!(
        api.code(Method::PUT, "change_pwd/test_user", Some(json!({"old_pwd": "newpassword", "new_pwd": ""}))).await,
        104
    );
    let (status, _) = test_user.send(Method::GET, "users", None, true).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old password no longer works");
    assert_eq!(api.as_user("test_user", "newpassword").get("users").await.as_array().unwrap().len(), 2);

    assert_eq!(api.code(Method::DELETE, "users/admin", None).await, 106);
    let renamed = api.as_user("test_user", "newpassword");
    assert_eq!(renamed.get("users").await.as_array().unwrap().len(), 2);
    assert_eq!(api.ok(Method::DELETE, "users/test_user", None).await, json!([]));
    let (status, _) = renamed.send(Method::GET, "users", None, true).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a deleted user is locked out at once");
    assert_eq!(api.code(Method::DELETE, "users/test_user", None).await, 105);
}

#[tokio::test]
async fn broker_down_answers_101_quickly_and_recovers() {
    let mut stack = Stack::start().await;
    let addr = stack.broker.addr;
    stack.broker.kill();
    let started = Instant::now();
    assert_eq!(stack.api.code(Method::GET, &format!("nodes/{NODE}/clients"), None).await, 101);
    assert!(started.elapsed() < Duration::from_millis(2600), "{:?}", started.elapsed());
    assert_eq!(stack.api.code(Method::GET, "management/nodes", None).await, 101);

    stack.broker = start_broker(&addr.to_string());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = stack.api.call(Method::GET, &format!("nodes/{NODE}/clients"), None).await;
        if reply["code"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn users_and_configs_survive_restarts() {
    let mut stack = Stack::start().await;
    let user = json!({"username": "ops", "password": "ops-pass", "tags": "viewer"});
    assert_eq!(stack.api.ok(Method::POST, "users", Some(user)).await, json!([]));
    let interval = json!({"key": "mqtt.broker.sys_interval", "value": "7"});
    assert_eq!(stack.api.ok(Method::PUT, "configs/emqttd", Some(interval)).await, json!([]));
    let nomatch = json!({"key": "mqtt.acl_nomatch", "value": "deny"});
    assert_eq!(stack.api.ok(Method::PUT, &format!("nodes/{NODE}/configs/emqttd"), Some(nomatch)).await, json!([]));
    let off = json!({"active": false});
    assert_eq!(stack.api.ok(Method::PUT, &format!("nodes/{NODE}/plugins/emq_retainer"), Some(off)).await, json!([]));

    // Sidecar restart: the user and the stored settings are still there.
    stack.restart_mgmt().await;
    assert_eq!(stack.api.as_user("ops", "ops-pass").get("users/ops").await["tags"], "viewer");

    // Broker restart: it starts with defaults, and the sidecar pushes the stored settings back.
    stack.restart_broker().await;
    let value = |configs: &Value, key: &str| {
        configs.as_array().unwrap().iter().find(|r| r["key"] == key).map(|r| r["value"].clone()).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = stack.api.call(Method::GET, &format!("nodes/{NODE}/configs"), None).await;
        if reply["code"] == 0
            && value(&reply["result"], "mqtt.broker.sys_interval") == "7"
            && value(&reply["result"], "mqtt.acl_nomatch") == "deny"
        {
            break;
        }
        assert!(Instant::now() < deadline, "settings never re-applied: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let plugins = stack.api.get(&format!("nodes/{NODE}/plugins")).await;
        let retainer = plugins.as_array().unwrap().iter().find(|p| p["name"] == "emq_retainer").unwrap().clone();
        if retainer["active"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "plugin state never re-applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sigterm_stops_both_cleanly() {
    let mut stack = Stack::start().await;
    let health = std::process::Command::new(bin("midge-mgmt"))
        .args(["--listen", &stack.mgmt.addr.to_string(), "healthcheck"])
        .status()
        .unwrap();
    assert!(health.success());
    assert!(stack.mgmt.terminate().success());
    assert!(stack.broker.terminate().success());
    let health = std::process::Command::new(bin("midge-mgmt"))
        .args(["--listen", &stack.mgmt.addr.to_string(), "healthcheck"])
        .status()
        .unwrap();
    assert!(!health.success(), "nothing answers once stopped");
}

#[tokio::test]
async fn admin_password_comes_from_the_environment_on_first_start() {
    let dir = tempdir();
    let broker = start_broker("127.0.0.1:0");
    let mgmt = start_mgmt_with(broker.addr, &dir.join("mgmt.db"), Some("from-env-42"), &[]);
    let api = Api::new(mgmt.addr).as_user("admin", "from-env-42");
    api.wait_for_node().await;
    let (status, _) = api.as_user("admin", "public").send(Method::GET, "users", None, true).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the default password is not set");
    drop(mgmt);
    // Only the first start seeds: a later variable does not reset a stored password.
    let mgmt = start_mgmt_with(broker.addr, &dir.join("mgmt.db"), Some("other"), &[]);
    let (status, _) = Api::new(mgmt.addr).as_user("admin", "from-env-42").send(Method::GET, "users", None, true).await;
    assert_eq!(status, StatusCode::OK);
}
