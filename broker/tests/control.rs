//! The control channel over the real socket: sealing, every request, plugins and hot config.

mod helpers;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use helpers::*;
use midge_broker::protocol::*;
use midge_shared::control::*;

const NODE: &str = "midge@127.0.0.1";

fn page(page: u64, size: u64) -> PageRequest {
    PageRequest { page, size }
}

#[tokio::test]
async fn control_topics_are_sealed() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;

    // Wrong secret: refused.
    let mut c = connect_packet("impostor", true);
    c.username = Some("midge-mgmt".into());
    c.password = Some(Bytes::from_static(b"guess"));
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(c)).await;
    assert_eq!(raw.recv().await, Some(Packet::Connack(Connack::refused(ConnectReturnCode::BadUsernameOrPassword))));

    // An ordinary client can neither subscribe to nor publish on control topics.
    let mut eve = Raw::connected(broker.addr, "eve").await;
    let codes = eve
        .subscribe(
            1,
            &[
                ("$midge/#", QoS::AtMostOnce),
                (&reply_topic("midge-mgmt-test"), QoS::AtMostOnce),
                ("ok", QoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(codes, vec![None, None, Some(QoS::AtMostOnce)]);
    let before: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    let forged = RequestEnvelope {
        v: VERSION,
        id: "forged".into(),
        reply_to: reply_topic("midge-mgmt-test"),
        request: Request::Kick { client_id: "midge-mgmt-test".into() },
    };
    eve.send(&publish(&request_topic(NODE), &serde_json::to_vec(&forged).unwrap(), QoS::AtLeastOnce, 5)).await;
    assert_eq!(eve.recv().await, Some(Packet::Puback(Ack::new(5))));
    mgmt.expect_no_reply().await;
    let after: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    assert_eq!(after["messages/dropped"], before["messages/dropped"] + 1, "the forged request is counted");
    // The management client is still connected and answering.
    let info: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert_eq!(info.name, NODE);
    broker.stop().await;
}

/// The sidecar finds nodes by asking on the discovery topic, which every node answers for itself; an
/// ordinary client asking there gets nothing.
#[tokio::test]
async fn every_node_answers_on_the_discovery_topic() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let ask = |id: &str| {
        let envelope = RequestEnvelope {
            v: VERSION,
            id: id.into(),
            reply_to: reply_topic("midge-mgmt-test"),
            request: Request::NodeInfo,
        };
        serde_json::to_vec(&envelope).unwrap()
    };
    match mgmt.call_on(DISCOVERY_TOPIC, ask("discover-1"), "discover-1").await {
        Outcome::Ok(info) => assert_eq!(serde_json::from_value::<NodeInfo>(info).unwrap().name, NODE),
        Outcome::Err(e) => panic!("{e:?}"),
    }
    let mut eve = Raw::connected(broker.addr, "eve").await;
    eve.send(&publish(DISCOVERY_TOPIC, &ask("discover-2"), QoS::AtLeastOnce, 1)).await;
    assert_eq!(eve.recv().await, Some(Packet::Puback(Ack::new(1))));
    mgmt.expect_no_reply().await;
    broker.stop().await;
}

#[tokio::test]
async fn without_a_usable_secret_nobody_is_the_management_principal() {
    // No secret, an empty one, one byte short of the minimum: each closes the control channel.
    for secret in [None, Some(""), Some("fifteen-bytes!!")] {
        let broker = start(Config { mgmt_secret: secret.map(midge_broker::config::Secret::new), ..config() }).await;
        let mut c = connect_packet("m", true);
        c.username = Some("midge-mgmt".into());
        c.password = Some(Bytes::copy_from_slice(secret.unwrap_or_default().as_bytes()));
        assert_eq!(
            connack_code(broker.addr, Packet::Connect(c)).await,
            ConnectReturnCode::BadUsernameOrPassword,
            "secret {secret:?}"
        );
        broker.stop().await;
    }
}

/// The sidecar's own connection is not the users' business: it is in no listing, statistic or metric,
/// raises no presence event, cannot be kicked, and nobody else can take its client id.
#[tokio::test]
async fn the_management_connection_is_invisible_and_its_client_id_is_its_own() {
    let broker = start(mgmt_config()).await;
    let mut watcher = Raw::connected(broker.addr, "watcher").await;
    watcher.subscribe(1, &[(&format!("$SYS/brokers/{NODE}/clients/#"), QoS::AtMostOnce)]).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut user = Raw::connected(broker.addr, "user-1").await;
    user.subscribe(1, &[("a/b", QoS::AtLeastOnce)]).await;
    // The first presence event is the user's: none was raised for the management connection.
    let event = watcher.recv_publish().await;
    assert_eq!(event.topic_str(), format!("$SYS/brokers/{NODE}/clients/user-1/connected"));

    let before: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    let clients: Page<ClientRow> = mgmt.ok(Request::ListClients(page(1, 20))).await;
    let ids: Vec<&str> = clients.objects.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, vec!["user-1", "watcher"]);
    let sessions: Page<SessionRow> = mgmt.ok(Request::ListSessions(page(1, 20))).await;
    assert_eq!(sessions.total_num, 2);
    let subscriptions: Page<SubscriptionRow> = mgmt.ok(Request::ListSubscriptions(page(1, 20))).await;
    assert!(subscriptions.objects.iter().all(|s| s.client_id != "midge-mgmt-test"), "{subscriptions:?}");
    assert_eq!(subscriptions.total_num, 2);
    let routes: Page<RouteRow> = mgmt.ok(Request::ListRoutes(page(1, 20))).await;
    let topics: Vec<&str> = routes.objects.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, vec!["$SYS/brokers/midge@127.0.0.1/clients/#", "a/b"]);
    let stats: BTreeMap<String, u64> = mgmt.ok(Request::Stats).await;
    for (stat, count) in [("clients", 2), ("sessions", 2), ("subscriptions", 2), ("subscribers", 2), ("routes", 2)] {
        assert_eq!(stats[&format!("{stat}/count")], count, "{stat}");
    }
    let listeners: Vec<ListenerRow> = mgmt.ok(Request::ListListeners).await;
    assert_eq!(listeners[0].current_clients, 2);
    let info: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert_eq!(info.clients, 2);
    let me = || "midge-mgmt-test".to_string();
    assert!(mgmt.ok::<Vec<ClientRow>>(Request::GetClient { client_id: me() }).await.is_empty());
    assert!(mgmt.ok::<Vec<SessionRow>>(Request::GetSession { client_id: me() }).await.is_empty());
    assert!(mgmt.ok::<Vec<SubscriptionRow>>(Request::GetSubscriptions { client_id: me() }).await.is_empty());
    assert_eq!(mgmt.err(Request::Kick { client_id: me() }).await, code::CLIENT_OFFLINE);
    // A reply that nobody is subscribed to is not a user's message dropped either.
    let unheard = RequestEnvelope {
        v: VERSION,
        id: "unheard".into(),
        reply_to: reply_topic("midge-mgmt-gone"),
        request: Request::NodeInfo,
    };
    mgmt.raw.send(&publish(&request_topic(NODE), &serde_json::to_vec(&unheard).unwrap(), QoS::AtLeastOnce, 77)).await;
    assert_eq!(mgmt.raw.recv().await, Some(Packet::Puback(Ack::new(77))));
    // A dozen requests and replies later, the traffic figures have not moved.
    let after: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    assert_eq!(after, before, "the management connection's traffic counts in no metric");

    // Nobody but the management principal may use an id in its namespace, to take it over or at all;
    // and the management principal keeps to it.
    for id in ["midge-mgmt-test", "midge-mgmt-other"] {
        let code = connack_code(broker.addr, Packet::Connect(connect_packet(id, true))).await;
        assert_eq!(code, ConnectReturnCode::IdentifierRejected, "{id}");
    }
    let code = connack_code(broker.addr, Packet::Connect(Mgmt::connect_packet("not-namespaced"))).await;
    assert_eq!(code, ConnectReturnCode::IdentifierRejected);
    let info: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert_eq!(info.name, NODE, "the management connection survived every attempt");
    // Another management connection may take the id over (the sidecar reconnecting).
    let mut again = Mgmt::connect(broker.addr, NODE).await;
    mgmt.raw.expect_closed().await;
    assert_eq!(again.ok::<NodeInfo>(Request::NodeInfo).await.clients, 2);
    user.ping().await;
    broker.stop().await;
}

#[tokio::test]
async fn listings_round_trip_with_the_seed_example() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut c = connect_packet("mqttjs_722b4d845f", true);
    c.keep_alive = 60;
    let (mut js, _) = Raw::connect(broker.addr, c).await;
    js.subscribe(1, &[("/World", QoS::AtMostOnce)]).await;
    let (offline, _) = Raw::connect(broker.addr, connect_packet("zz-offline", false)).await;
    offline.disconnect().await;
    let online = Raw::connected(broker.addr, "zz-online").await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let clients: Page<ClientRow> = mgmt.ok(Request::ListClients(page(1, 20))).await;
    let ids: Vec<&str> = clients.objects.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, vec!["mqttjs_722b4d845f", "zz-online"], "online clients, ordered by id");
    let js_row = &clients.objects[0];
    assert_eq!(
        (js_row.username.as_str(), js_row.ipaddress.as_str(), js_row.clean_sess, js_row.proto_ver, js_row.keepalive),
        ("undefined", "127.0.0.1", true, 4, 60)
    );
    assert_eq!(js_row.connected_at.len(), "2018-06-29 09:15:25".len());
    assert_eq!((clients.total_num, clients.total_page, clients.current_page, clients.page_size), (2, 1, 1, 20));
    let second: Page<ClientRow> = mgmt.ok(Request::ListClients(page(2, 1))).await;
    assert_eq!((second.objects[0].client_id.as_str(), second.total_page), ("zz-online", 2));
    let one: Vec<ClientRow> = mgmt.ok(Request::GetClient { client_id: "mqttjs_722b4d845f".into() }).await;
    assert_eq!(one, vec![js_row.clone()]);
    let none: Vec<ClientRow> = mgmt.ok(Request::GetClient { client_id: "zz-offline".into() }).await;
    assert!(none.is_empty(), "offline clients are not listed as clients");

    let sessions: Page<SessionRow> = mgmt.ok(Request::ListSessions(page(1, 20))).await;
    let ids: Vec<&str> = sessions.objects.iter().map(|s| s.client_id.as_str()).collect();
    assert_eq!(ids, vec!["mqttjs_722b4d845f", "zz-offline", "zz-online"]);
    let js_session = &sessions.objects[0];
    assert_eq!((js_session.subscriptions, js_session.max_inflight, js_session.clean_sess), (1, 32, true));
    let offline_session: Vec<SessionRow> = mgmt.ok(Request::GetSession { client_id: "zz-offline".into() }).await;
    assert!(!offline_session[0].clean_sess);

    let subs: Page<SubscriptionRow> = mgmt.ok(Request::ListSubscriptions(page(1, 20))).await;
    assert!(subs.objects.contains(&SubscriptionRow {
        client_id: "mqttjs_722b4d845f".into(),
        topic: "/World".into(),
        qos: 0
    }));
    let js_subs: Vec<SubscriptionRow> =
        mgmt.ok(Request::GetSubscriptions { client_id: "mqttjs_722b4d845f".into() }).await;
    assert_eq!(js_subs.len(), 1);

    let routes: Page<RouteRow> = mgmt.ok(Request::ListRoutes(page(1, 20))).await;
    assert!(routes.objects.contains(&RouteRow { topic: "/World".into(), node: NODE.into() }));
    let route: Vec<RouteRow> = mgmt.ok(Request::GetRoute { topic: "/World".into() }).await;
    assert_eq!(route, vec![RouteRow { topic: "/World".into(), node: NODE.into() }]);
    let no_route: Vec<RouteRow> = mgmt.ok(Request::GetRoute { topic: "/Nowhere".into() }).await;
    assert!(no_route.is_empty());
    js.ping().await;
    online.disconnect().await;
    broker.stop().await;
}

/// Deliveries held back by a full inflight window count in the session's queue length wherever they
/// wait inside the broker.
#[tokio::test]
async fn a_stalled_sessions_queue_length_counts_everything_behind_its_window() {
    let broker = start(Config { max_inflight: 1, ..mgmt_config() }).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut sub = Raw::connected(broker.addr, "stalled").await;
    sub.subscribe(1, &[("w", QoS::AtLeastOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.publish_acked("w", 1..=5).await;
    let first = sub.recv_publish().await;
    let session: Vec<SessionRow> = mgmt.ok(Request::GetSession { client_id: "stalled".into() }).await;
    assert_eq!((session[0].inflight_len, session[0].mqueue_len), (1, 4));
    sub.send(&Packet::Puback(Ack::new(first.pkid))).await;
    assert_eq!(&sub.recv_publish().await.payload[..], &[2]);
    let session: Vec<SessionRow> = mgmt.ok(Request::GetSession { client_id: "stalled".into() }).await;
    assert_eq!((session[0].inflight_len, session[0].mqueue_len), (1, 3));
    broker.stop().await;
}

#[tokio::test]
async fn publish_subscribe_kick_and_acl_cache() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut js = Raw::connected(broker.addr, "mqttjs_722b4d845f").await;

    // Subscribe on the client's behalf, then publish through the API.
    let _: serde_json::Value =
        mgmt.ok(Request::Subscribe { client_id: "mqttjs_722b4d845f".into(), topic: "/World".into(), qos: 1 }).await;
    let _: serde_json::Value = mgmt
        .ok(Request::Publish {
            topic: "/World".into(),
            payload: "hello".into(),
            qos: 1,
            retain: false,
            client_id: "http".into(),
        })
        .await;
    let p = js.recv_publish().await;
    assert_eq!((&p.topic[..], &p.payload[..], p.qos), (&b"/World"[..], &b"hello"[..], QoS::AtLeastOnce));
    js.send(&Packet::Puback(Ack::new(p.pkid))).await;

    let bad_topic = Request::Publish {
        topic: "a/+".into(),
        payload: String::new(),
        qos: 0,
        retain: false,
        client_id: "http".into(),
    };
    assert_eq!(mgmt.err(bad_topic).await, 102);
    assert_eq!(mgmt.err(Request::Subscribe { client_id: "nobody".into(), topic: "x".into(), qos: 0 }).await, 102);
    assert_eq!(
        mgmt.err(Request::Subscribe { client_id: "mqttjs_722b4d845f".into(), topic: "a/#/b".into(), qos: 0 }).await,
        102
    );

    let _: serde_json::Value =
        mgmt.ok(Request::Unsubscribe { client_id: "mqttjs_722b4d845f".into(), topic: "/World".into() }).await;
    let _: serde_json::Value = mgmt
        .ok(Request::Publish {
            topic: "/World".into(),
            payload: "gone".into(),
            qos: 0,
            retain: false,
            client_id: "http".into(),
        })
        .await;
    js.expect_silence(Duration::from_millis(300)).await;

    let _: serde_json::Value =
        mgmt.ok(Request::CleanAclCache { client_id: "mqttjs_722b4d845f".into(), topic: "/World".into() }).await;
    let _: serde_json::Value = mgmt.ok(Request::Kick { client_id: "mqttjs_722b4d845f".into() }).await;
    js.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mgmt.err(Request::Kick { client_id: "mqttjs_722b4d845f".into() }).await, 112);
    assert_eq!(
        mgmt.err(Request::CleanAclCache { client_id: "mqttjs_722b4d845f".into(), topic: "t".into() }).await,
        112
    );
    broker.stop().await;
}

#[tokio::test]
async fn clean_acl_cache_makes_a_changed_acl_apply_at_once() {
    let dir = tempdir();
    let acl = dir.join("acl.conf");
    std::fs::write(&acl, "{allow, all}.").unwrap();
    let broker = start(Config { acl_file: Some(acl.clone()), ..mgmt_config() }).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("cached", QoS::AtMostOnce)]).await;
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&publish("cached", b"1", QoS::AtMostOnce, 0)).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"1");

    // The ACL now denies, but the publisher's cached decision still allows...
    std::fs::write(&acl, "{deny, {client, \"pub\"}, publish, [\"cached\"]}.\n{allow, all}.").unwrap();
    let _: serde_json::Value = mgmt
        .ok(Request::SetConfig { app: "emqttd".into(), key: "mqtt.acl_file".into(), value: acl.display().to_string() })
        .await;
    publisher.send(&publish("cached", b"2", QoS::AtMostOnce, 0)).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"2");
    // ...until that entry is cleared.
    let _: serde_json::Value =
        mgmt.ok(Request::CleanAclCache { client_id: "pub".into(), topic: "cached".into() }).await;
    publisher.send(&publish("cached", b"3", QoS::AtMostOnce, 0)).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test]
async fn malformed_and_unknown_requests_get_error_replies() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let reply_to = reply_topic("midge-mgmt-test");
    let unknown = serde_json::json!({"v": 1, "id": "u1", "reply_to": reply_to, "cmd": "make_coffee"});
    match mgmt.call_raw(serde_json::to_vec(&unknown).unwrap(), "u1").await {
        Outcome::Err(e) => assert!(e.code == 108 || e.code == 102, "{e:?}"),
        other => panic!("{other:?}"),
    }
    let wrong_type =
        serde_json::json!({"v": 1, "id": "u2", "reply_to": reply_to, "cmd": "kick", "args": {"client_id": 5}});
    assert!(matches!(mgmt.call_raw(serde_json::to_vec(&wrong_type).unwrap(), "u2").await, Outcome::Err(_)));
    let future = serde_json::json!({"v": VERSION + 1, "id": "u3", "reply_to": reply_to, "cmd": "node_info"});
    match mgmt.call_raw(serde_json::to_vec(&future).unwrap(), "u3").await {
        Outcome::Err(e) => {
            assert_eq!(e.code, 101);
            assert!(e.message.contains(&format!("speaks v{OLDEST_VERSION} to v{VERSION}")), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // Not JSON at all, and a reply topic outside the control prefix: no answer, no crash.
    let topic = request_topic(NODE);
    mgmt.raw.send(&publish(&topic, b"not json", QoS::AtMostOnce, 0)).await;
    let elsewhere = serde_json::json!({"v": 1, "id": "u4", "reply_to": "public/leak", "cmd": "node_info"});
    mgmt.raw.send(&publish(&topic, &serde_json::to_vec(&elsewhere).unwrap(), QoS::AtMostOnce, 0)).await;
    mgmt.expect_no_reply().await;
    let info: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert_eq!(info.node_status, "Running");
    broker.stop().await;
}

#[tokio::test]
async fn node_info_listeners_metrics_and_stats() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut client = Raw::connected(broker.addr, "c").await;
    client.subscribe(1, &[("t", QoS::AtMostOnce)]).await;
    let info: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert_eq!((info.version.as_str(), info.clients), (env!("CARGO_PKG_VERSION"), 1));
    assert_eq!(info.control_version, VERSION, "the node says which control protocol it speaks");
    assert!(info.memory_used.ends_with('M') && info.memory_total.ends_with('M'), "{info:?}");
    assert!(info.max_fds > 0);
    assert!(info.load1.parse::<f64>().is_ok());
    assert!(info.uptime.ends_with("seconds"));

    let listeners: Vec<ListenerRow> = mgmt.ok(Request::ListListeners).await;
    assert_eq!(listeners.len(), 1);
    assert_eq!((listeners[0].protocol.as_str(), listeners[0].current_clients), ("mqtt:tcp", 1));
    assert_eq!(listeners[0].listen, broker.addr.to_string());

    let metrics: BTreeMap<String, u64> = mgmt.ok(Request::Metrics).await;
    for metric in midge_shared::sys::Metric::ALL {
        assert!(metrics.contains_key(metric.name()), "{}", metric.name());
    }
    let stats: BTreeMap<String, u64> = mgmt.ok(Request::Stats).await;
    assert_eq!(stats.len(), 14);
    assert_eq!((stats["clients/count"], stats["subscriptions/count"], stats["sessions/count"]), (1, 1, 1));
    broker.stop().await;
}

fn megabytes(text: &str) -> f64 {
    text.strip_suffix('M').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not EMQ's memory text: {text}"))
}

/// `memory_used` and `memory_total` are the broker's own heap (not the host's RAM): 32 MB of retained
/// messages show in both, and their removal in the used figure. The process figures count tasks.
#[tokio::test]
async fn node_memory_and_process_figures_are_the_brokers_own() {
    let broker = start(Config { max_connections: 5000, ..mgmt_config() }).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let before: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    let (used, total) = (megabytes(&before.memory_used), megabytes(&before.memory_total));
    assert!(0.0 < used && used <= total, "{before:?}");
    let host: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1024.0;
    assert!(total < host / 8.0, "memory_total is the broker's, not the host's {host} MB: {before:?}");
    assert_eq!(before.process_available, 5000);

    let mut publisher = Raw::connected(broker.addr, "heavy").await;
    let half_megabyte = vec![7u8; 512 * 1024];
    for n in 0..64u16 {
        publisher.send(&retained(&format!("big/{n}"), &half_megabyte, QoS::AtLeastOnce, n + 1)).await;
        assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(n + 1))));
    }
    let mut idle = Vec::new();
    for n in 0..50 {
        idle.push(Raw::connected(broker.addr, &format!("idle-{n}")).await);
    }
    let loaded: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert!(megabytes(&loaded.memory_used) >= used + 32.0, "{before:?} then {loaded:?}");
    assert!(megabytes(&loaded.memory_total) >= megabytes(&loaded.memory_used));
    assert!(loaded.process_used >= before.process_used + 50, "a task per connection: {loaded:?}");

    for n in 0..64u16 {
        publisher.send(&retained(&format!("big/{n}"), b"", QoS::AtLeastOnce, n + 1)).await;
        assert_eq!(publisher.recv().await, Some(Packet::Puback(Ack::new(n + 1))));
    }
    let cleared: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert!(megabytes(&cleared.memory_used) <= megabytes(&loaded.memory_used) - 30.0, "{loaded:?} then {cleared:?}");
    broker.stop().await;
}

#[tokio::test]
async fn plugins_switch_off_and_on() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let plugins: Vec<PluginRow> = mgmt.ok(Request::ListPlugins).await;
    let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
    let expected = [
        "emq_auth_clientid",
        "emq_auth_username",
        "emq_modules",
        "emq_retainer",
        "emq_reloader",
        "emq_recon",
        "emq_dashboard",
    ];
    assert_eq!(names, expected);
    assert!(plugins.iter().all(|p| !p.description.is_empty() && !p.version.is_empty()));

    let set = |name: &str, active: bool| Request::SetPlugin { name: name.into(), active };
    assert_eq!(mgmt.err(set("emq_retainer", true)).await, 110);
    let _: serde_json::Value = mgmt.ok(set("emq_retainer", false)).await;
    assert_eq!(mgmt.err(set("emq_retainer", false)).await, 111);

    // Retainer off: a retained publish is not kept.
    let mut publisher = Raw::connected(broker.addr, "pub").await;
    publisher.send(&retained("keep/me", b"off", QoS::AtMostOnce, 0)).await;
    publisher.ping().await;
    let mut sub = Raw::connected(broker.addr, "sub").await;
    sub.subscribe(1, &[("keep/#", QoS::AtMostOnce)]).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    // On again: it works.
    let _: serde_json::Value = mgmt.ok(set("emq_retainer", true)).await;
    publisher.send(&retained("keep/me", b"on", QoS::AtMostOnce, 0)).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"on");
    let mut late = Raw::connected(broker.addr, "late").await;
    late.subscribe(1, &[("keep/#", QoS::AtMostOnce)]).await;
    assert!(late.recv_publish().await.retain);

    // Modules off: no presence events; on: they come back.
    let presence = "$SYS/brokers/+/clients/+/connected";
    // Through the API a client cannot be subscribed to $SYS; on its own (from localhost) it can.
    assert_eq!(mgmt.err(Request::Subscribe { client_id: "sub".into(), topic: presence.into(), qos: 0 }).await, 102);
    assert_eq!(sub.subscribe(9, &[(presence, QoS::AtMostOnce)]).await, vec![Some(QoS::AtMostOnce)]);
    let _: serde_json::Value = mgmt.ok(set("emq_modules", false)).await;
    Raw::connected(broker.addr, "quiet").await.disconnect().await;
    sub.expect_silence(Duration::from_millis(300)).await;
    let _: serde_json::Value = mgmt.ok(set("emq_modules", true)).await;
    Raw::connected(broker.addr, "loud").await.disconnect().await;
    let event = sub.recv_publish().await;
    assert_eq!(&event.topic[..], format!("$SYS/brokers/{NODE}/clients/loud/connected").as_bytes());
    broker.stop().await;
}

#[tokio::test]
async fn auth_plugins_take_their_users_from_plugin_config() {
    let broker = start(Config { allow_anonymous: false, ..mgmt_config() }).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let values = BTreeMap::from([
        ("auth.user.1.username".to_string(), "alice".to_string()),
        ("auth.user.1.password".to_string(), "s3cret".to_string()),
    ]);
    let _: serde_json::Value = mgmt.ok(Request::SetPluginConfig { name: "emq_auth_username".into(), values }).await;
    let rows: Vec<PluginConfigRow> = mgmt.ok(Request::GetPluginConfig { name: "emq_auth_username".into() }).await;
    let password = rows.iter().find(|r| r.key == "auth.user.1.password").unwrap();
    assert!(password.value.starts_with("$argon2id$"), "passwords are stored hashed");
    let unknown = BTreeMap::from([("auth.nope".to_string(), "x".to_string())]);
    assert_eq!(mgmt.err(Request::SetPluginConfig { name: "emq_auth_username".into(), values: unknown }).await, 102);

    let login = |user: &str, password: &str| {
        let mut c = connect_packet(&format!("c-{user}"), true);
        c.username = Some(user.into());
        c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        Packet::Connect(c)
    };
    // Inactive plugin: alice is unknown, and anonymous is off.
    assert_eq!(connack_code(broker.addr, login("alice", "s3cret")).await, ConnectReturnCode::NotAuthorized);
    let _: serde_json::Value = mgmt.ok(Request::SetPlugin { name: "emq_auth_username".into(), active: true }).await;
    assert_eq!(connack_code(broker.addr, login("alice", "s3cret")).await, ConnectReturnCode::Accepted);
    assert_eq!(connack_code(broker.addr, login("alice", "nope")).await, ConnectReturnCode::BadUsernameOrPassword);

    let values = BTreeMap::from([
        ("auth.client.1.clientid".to_string(), "device-7".to_string()),
        ("auth.client.1.password".to_string(), "pin".to_string()),
    ]);
    let _: serde_json::Value = mgmt.ok(Request::SetPluginConfig { name: "emq_auth_clientid".into(), values }).await;
    let _: serde_json::Value = mgmt.ok(Request::SetPlugin { name: "emq_auth_clientid".into(), active: true }).await;
    let device = || {
        let mut c = connect_packet("device-7", true);
        c.username = Some("any".into());
        c.password = Some(Bytes::from_static(b"pin"));
        Packet::Connect(c)
    };
    // The client id source knows device-7, so it decides, whatever the username.
    assert_eq!(connack_code(broker.addr, device()).await, ConnectReturnCode::Accepted);
    // A username no source knows is refused while emq_auth_username is active...
    assert_eq!(connack_code(broker.addr, login("mallory", "x")).await, ConnectReturnCode::BadUsernameOrPassword);
    // ...and falls to allow_anonymous once no username source is left.
    let _: serde_json::Value = mgmt.ok(Request::SetPlugin { name: "emq_auth_username".into(), active: false }).await;
    assert_eq!(connack_code(broker.addr, login("mallory", "x")).await, ConnectReturnCode::NotAuthorized);
    assert_eq!(connack_code(broker.addr, device()).await, ConnectReturnCode::Accepted);
    broker.stop().await;
}

#[tokio::test]
async fn hot_config_takes_effect_at_once() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let configs: Vec<ConfigRow> = mgmt.ok(Request::ListConfigs).await;
    let keys: Vec<&str> = configs.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "log.console.level",
            "mqtt.acl_file",
            "mqtt.acl_nomatch",
            "mqtt.allow_anonymous",
            "mqtt.broker.sys_interval",
            "mqtt.cache_acl"
        ]
    );
    assert!(configs.iter().all(|c| c.app == "emqttd"));
    let set =
        |key: &str, value: &str| Request::SetConfig { app: "emqttd".into(), key: key.into(), value: value.into() };

    // allow_anonymous off: anonymous clients are refused at once.
    let _: serde_json::Value = mgmt.ok(set("mqtt.allow_anonymous", "false")).await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(connect_packet("anon", true))).await;
    assert!(matches!(raw.recv().await, Some(Packet::Connack(Connack { reason: ReasonCode::NotAuthorized, .. }))));
    assert_eq!(mgmt.err(set("mqtt.allow_anonymous", "perhaps")).await, 102);
    let _: serde_json::Value = mgmt.ok(set("mqtt.allow_anonymous", "true")).await;

    // acl_nomatch deny with an ACL that matches nothing: subscriptions are refused.
    let dir = tempdir();
    let acl = dir.join("acl.conf");
    std::fs::write(&acl, "{allow, {user, \"nobody\"}, pubsub, [\"#\"]}.").unwrap();
    let _: serde_json::Value = mgmt.ok(set("mqtt.acl_file", acl.to_str().unwrap())).await;
    let _: serde_json::Value = mgmt.ok(set("mqtt.acl_nomatch", "deny")).await;
    let mut c = Raw::connected(broker.addr, "c").await;
    assert_eq!(c.subscribe(1, &[("a", QoS::AtMostOnce)]).await, vec![None]);
    let _: serde_json::Value = mgmt.ok(set("mqtt.acl_nomatch", "allow")).await;
    assert_eq!(c.subscribe(2, &[("a", QoS::AtMostOnce)]).await, vec![Some(QoS::AtMostOnce)]);
    assert_eq!(mgmt.err(set("mqtt.acl_file", "/nonexistent/acl.conf")).await, 102);

    // sys_interval from 0 to 1: uptime starts arriving.
    c.subscribe(3, &[("$SYS/brokers/+/uptime", QoS::AtMostOnce)]).await;
    c.expect_silence(Duration::from_millis(1500)).await;
    let _: serde_json::Value = mgmt.ok(set("mqtt.broker.sys_interval", "1")).await;
    let uptime = c.recv_publish().await;
    assert!(std::str::from_utf8(&uptime.payload).unwrap().ends_with("seconds"));
    assert_eq!(mgmt.err(set("mqtt.broker.sys_interval", "-3")).await, 102);

    let _: serde_json::Value = mgmt.ok(set("mqtt.cache_acl", "false")).await;
    let _: serde_json::Value = mgmt.ok(set("log.console.level", "debug")).await;
    assert_eq!(mgmt.err(set("log.console.level", "loud")).await, 102);
    assert_eq!(mgmt.err(set("mqtt.max_packet_size", "1")).await, 102);
    let configs: Vec<ConfigRow> = mgmt.ok(Request::ListConfigs).await;
    let value = |k: &str| configs.iter().find(|c| c.key == k).unwrap().value.clone();
    assert_eq!((value("mqtt.cache_acl"), value("log.console.level")), ("false".into(), "debug".into()));
    broker.stop().await;
}

#[tokio::test]
async fn clients_cannot_write_to_sys_or_control_topics_by_publish_or_will() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let mut watcher = Raw::connected(broker.addr, "watcher").await;
    watcher.subscribe(1, &[("$SYS/brokers/+/version", QoS::AtMostOnce)]).await;
    // The retained version of this node arrives first.
    assert_eq!(&watcher.recv_publish().await.topic[..], format!("$SYS/brokers/{NODE}/version").as_bytes());

    // A spoofed node in $SYS goes nowhere.
    let mut spoofer = Raw::connected(broker.addr, "spoofer").await;
    spoofer.send(&retained("$SYS/brokers/evil@nowhere/version", b"6.6.6", QoS::AtLeastOnce, 3)).await;
    assert_eq!(spoofer.recv().await, Some(Packet::Puback(Ack::new(3))));
    watcher.expect_silence(Duration::from_millis(300)).await;
    let mut late = Raw::connected(broker.addr, "late").await;
    late.subscribe(1, &[("$SYS/brokers/evil@nowhere/#", QoS::AtMostOnce)]).await;
    late.expect_silence(Duration::from_millis(300)).await;

    // Wills on broker-owned topics are refused at CONNECT.
    for topic in [reply_topic("midge-mgmt-test"), format!("$SYS/brokers/{NODE}/version")] {
        let mut c = connect_packet("willful", true);
        c.will = Some(LastWill::new(topic.clone(), Bytes::from_static(b"x"), QoS::AtMostOnce, false));
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&Packet::Connect(c)).await;
        assert_eq!(
            raw.recv().await,
            Some(Packet::Connack(Connack::refused(ConnectReturnCode::NotAuthorized))),
            "{topic}"
        );
    }
    // The management client is undisturbed.
    let info: NodeInfo = mgmt.ok(Request::NodeInfo).await;
    assert_eq!(info.name, NODE);
    broker.stop().await;
}

/// `emq_reloader`: while on, an edited users file or ACL file takes effect without a request; a file
/// that does not load leaves the running one; switched off, edits wait.
#[tokio::test]
async fn the_reloader_follows_the_files() {
    use midge_passwords::hash_now;

    let dir = tempdir();
    let (users, acl) = (dir.join("users"), dir.join("acl.conf"));
    std::fs::write(&users, format!("alice:{}\n", hash_now(b"a-pass").unwrap())).unwrap();
    std::fs::write(&acl, "{allow, all}.\n").unwrap();
    let config = Config { users_file: Some(users.clone()), acl_file: Some(acl.clone()), ..mgmt_config() };
    let broker = start(config).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;
    let login = |user: &str, password: &str| {
        let mut c = connect_packet(user, true);
        c.username = Some(user.into());
        c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
        Packet::Connect(c)
    };
    // Polls until `check` holds, within a few of the reloader's one-second rounds.
    async fn eventually<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
        for _ in 0..40 {
            if check().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
    let bob_line = format!("bob:{}\n", hash_now(b"b-pass").unwrap());

    // Off (the default): an edit waits.
    std::fs::write(&users, format!("alice:{}\n{bob_line}", hash_now(b"a-pass").unwrap())).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(connack_code(broker.addr, login("bob", "b-pass")).await, ConnectReturnCode::BadUsernameOrPassword);

    // On: changes from now on are followed.
    let _: serde_json::Value = mgmt.ok(Request::SetPlugin { name: "emq_reloader".into(), active: true }).await;
    // Past the reloader's next round, which takes the files as they are now as its starting point.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    std::fs::write(&users, bob_line.clone()).unwrap();
    let bob_in =
        eventually(|| async { connack_code(broker.addr, login("bob", "b-pass")).await == ConnectReturnCode::Accepted });
    assert!(bob_in.await, "bob can log in once the users file is read again");
    assert_eq!(connack_code(broker.addr, login("alice", "a-pass")).await, ConnectReturnCode::BadUsernameOrPassword);

    // A broken users file leaves the running users.
    std::fs::write(&users, "bob:not-a-hash\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(connack_code(broker.addr, login("bob", "b-pass")).await, ConnectReturnCode::Accepted);

    // The ACL file likewise: bob may no longer subscribe to secret/#.
    let (mut client, _) = Raw::connect(
        broker.addr,
        match login("bob", "b-pass") {
            Packet::Connect(c) => c,
            _ => unreachable!(),
        },
    )
    .await;
    assert_eq!(client.subscribe(1, &[("secret/#", QoS::AtMostOnce)]).await, vec![Some(QoS::AtMostOnce)]);
    std::fs::write(&acl, "{deny, {user, \"bob\"}, subscribe, [\"secret/#\"]}.\n{allow, all}.\n").unwrap();
    let mut denied = false;
    for pkid in 2..42 {
        if client.subscribe(pkid, &[("secret/#", QoS::AtMostOnce)]).await == vec![None] {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(denied, "the edited ACL applies");
    broker.stop().await;
}
