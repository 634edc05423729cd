//! The dashboard (`emq_dashboard`): driven in headless Chromium as an operator would use it, and its
//! serving, switching and history checked over HTTP.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::browser::Browser;
use crate::helpers::*;

/// The node's clients, by id.
async fn client_port(api: &Api, id: &str) -> Option<u64> {
    let found = api.get(&format!("nodes/{NODE}/clients/{id}")).await;
    found["objects"].as_array().and_then(|o| o.first()).and_then(|c| c["port"].as_u64())
}

async fn plugin_active(api: &Api, name: &str) -> bool {
    let plugins = api.get(&format!("nodes/{NODE}/plugins")).await;
    plugins.as_array().unwrap().iter().find(|p| p["name"] == name).and_then(|p| p["active"].as_bool()).unwrap()
}

/// Log in (after a wrong password), see a mosquitto_sub client and kick it, start a plugin, add a user,
/// publish and receive over the broker's WebSocket listener, look at it on a phone; no console errors.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_uses_the_dashboard_in_a_browser() {
    let stack = Stack::start_full(&["--ws-listen", "127.0.0.1:0"], &["--history-interval-ms", "200"]).await;
    let dashboard = format!("http://{}/", stack.dashboard_addr());
    let browser = Browser::start().await;

    // A wrong password is refused, and the app stays hidden.
    browser.goto(&dashboard).await;
    browser.fill("#username", "admin").await;
    browser.fill("#password", "not-the-password").await;
    browser.click("#login-button").await;
    browser.until("the login is refused", "document.querySelector('#login-error').textContent.includes('Wrong')").await;
    assert!(!browser.is_visible("#app").await, "the app shows after a wrong password");
    browser.screenshot("01-login-refused").await;

    // The right one opens the overview, with the node and its charts.
    browser.fill("#password", "public").await;
    browser.click("#login-button").await;
    browser.find(&format!("#nodes section[data-node='{NODE}']")).await;
    let card = browser.text(&format!("#nodes section[data-node='{NODE}']")).await;
    assert!(card.contains("Running") || card.contains("running"), "{card}");
    browser.until("three charts", "document.querySelectorAll('#charts canvas').length === 3").await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // a few samples on the charts
    browser.screenshot("02-overview").await;

    // A client connected by mosquitto_sub is listed, and kicked.
    let port = stack.mqtt_port().to_string();
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-i", "dash-sub", "-t", "dash/#", "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub starts; .ci/run installs it");
    let before = wait_for_client(&stack.api, "dash-sub").await;
    browser.click("a[data-view='clients']").await;
    browser.click("button[data-kick='dash-sub']").await;
    browser.until("the confirmation", "document.querySelector('#confirm').open").await;
    browser.screenshot("03-kick-confirm").await;
    browser.click("#confirm-yes").await;
    browser
        .until("the kick is reported", "document.querySelector('#toast').textContent.includes('dash-sub disconnected')")
        .await;
    // mosquitto_sub reconnects by itself, from another port: either way the kicked connection is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client_port(&stack.api, "dash-sub").await == Some(before) {
        assert!(Instant::now() < deadline, "dash-sub was not disconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A plugin is started from its page.
    assert!(!plugin_active(&stack.api, "emq_reloader").await);
    browser.click("a[data-view='plugins']").await;
    browser.click("button[data-plugin='emq_reloader']").await;
    browser
        .until(
            "the plugin shows as running",
            "document.querySelector(\"button[data-plugin='emq_reloader']\").textContent === 'Stop'",
        )
        .await;
    assert!(plugin_active(&stack.api, "emq_reloader").await, "the click did not start emq_reloader");
    browser.screenshot("04-plugins").await;

    // A user is added, and can log in to the API.
    browser.click("a[data-view='users']").await;
    browser.fill("#user-username", "operator").await;
    browser.fill("#user-password", "operator-pass-1").await;
    browser.fill("#user-tags", "viewer").await;
    browser.click("#user-add").await;
    browser.find("tr[data-key='operator']").await;
    let users = stack.api.get("users").await;
    assert!(users.as_array().unwrap().iter().any(|u| u["username"] == "operator" && u["tags"] == "viewer"), "{users}");
    assert_eq!(login_code(&stack.api, "operator", "operator-pass-1").await, 0);
    browser.screenshot("05-users").await;

    // Its password is changed, and then it is deleted.
    browser.find("#pw-user option[value='operator']").await;
    browser.client.execute("document.querySelector('#pw-user').value = 'operator';", vec![]).await.unwrap();
    browser.fill("#pw-old", "operator-pass-1").await;
    browser.fill("#pw-new", "operator-pass-2").await;
    browser.click("#pw-change").await;
    browser
        .until(
            "the change is reported",
            "document.querySelector('#toast').textContent.includes('Password of operator')",
        )
        .await;
    assert_eq!(login_code(&stack.api, "operator", "operator-pass-2").await, 0);
    assert_eq!(login_code(&stack.api, "operator", "operator-pass-1").await, 103);
    browser.click("button[data-delete-user='operator']").await;
    browser.click("#confirm-yes").await;
    browser.until("the row goes", "!document.querySelector(\"tr[data-key='operator']\")").await;
    assert_eq!(login_code(&stack.api, "operator", "operator-pass-2").await, 103);

    // A plugin's config and a broker config are edited.
    browser.click("a[data-view='plugins']").await;
    browser.click("button[data-plugin-config='emq_modules']").await;
    browser.fill("#plugin-config input[aria-label='module.presence']", "off").await;
    browser.click("#plugin-config button[type='submit']").await;
    browser
        .until("the save is reported", "document.querySelector('#toast').textContent.includes('config saved')")
        .await;
    let config = stack.api.get(&format!("nodes/{NODE}/plugin_configs/emq_modules")).await;
    assert!(
        config.as_array().unwrap().iter().any(|r| r["key"] == "module.presence" && r["value"] == "off"),
        "{config}"
    );
    browser.click("a[data-view='configs']").await;
    browser.fill("input[data-config='mqtt.broker.sys_interval']", "42").await;
    browser.click("tr[data-key='mqtt.broker.sys_interval'] button").await;
    browser
        .until(
            "the save is reported",
            "document.querySelector('#toast').textContent.includes('mqtt.broker.sys_interval = 42')",
        )
        .await;
    let configs = stack.api.get(&format!("nodes/{NODE}/configs")).await;
    assert!(
        configs.as_array().unwrap().iter().any(|r| r["key"] == "mqtt.broker.sys_interval" && r["value"] == "42"),
        "{configs}"
    );
    browser.screenshot("06-configs").await;

    // The WebSocket page reaches the broker's WS listener: what it publishes, it and mosquitto_sub get.
    browser.click("a[data-view='websocket']").await;
    browser.until("the WS URL from the listeners", "document.querySelector('#ws-url').value.endsWith('/mqtt')").await;
    browser.click("#ws-connect").await;
    browser.until("connected", "document.querySelector('#ws-status').textContent === 'connected'").await;
    browser.fill("#ws-sub-topic", "dash/#").await;
    browser.click("#ws-subscribe").await;
    browser.until("subscribed", "document.querySelector('#ws-subscriptions').textContent.includes('dash/#')").await;
    browser.fill("#ws-pub-topic", "dash/hello").await;
    browser.fill("#ws-payload", "hi from the browser").await;
    browser.click("#ws-publish").await;
    browser
        .until(
            "the message comes back",
            "document.querySelector('#ws-messages').textContent.includes('hi from the browser')",
        )
        .await;
    browser.screenshot("07-websocket").await;
    let line = read_line(&mut sub).await;
    assert_eq!(line, "hi from the browser");
    let _ = sub.kill();

    // On a phone: the menu folds into the top bar.
    browser.client.set_window_size(390, 844).await.expect("a phone-sized window");
    browser.click("#menu").await;
    browser.click("a[data-view='overview']").await;
    browser.find(&format!("#nodes section[data-node='{NODE}']")).await;
    assert!(!browser.is_visible("#nav").await, "the menu closes after a choice");
    browser.screenshot("08-phone").await;

    let errors: Vec<_> = browser.console().await.into_iter().filter(|(level, _)| level == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // The API's own documentation renders too, with its operations, under the same strict policy.
    browser.client.set_window_size(1280, 900).await.expect("a desktop-sized window");
    browser.goto(&format!("http://{}/api-docs", stack.mgmt.addr)).await;
    browser.until("Swagger UI shows the document", "document.querySelectorAll('.opblock').length >= 40").await;
    browser.screenshot("09-api-docs").await;
    let errors: Vec<_> = browser.console().await.into_iter().filter(|(level, _)| level == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors on /api-docs: {errors:?}");
    browser.close().await;
}

/// The code `POST auth` answers for these credentials.
async fn login_code(api: &Api, username: &str, password: &str) -> u64 {
    let body = json!({ "username": username, "password": password }).to_string();
    let (status, reply) = api.send(Method::POST, "auth", Some(&body), false).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_str::<Value>(&reply).unwrap()["code"].as_u64().unwrap()
}

async fn wait_for_client(api: &Api, id: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(port) = client_port(api, id).await {
            return port;
        }
        assert!(Instant::now() < deadline, "{id} never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next line mosquitto_sub prints, within a few seconds.
async fn read_line(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("mosquitto_sub's stdout");
    let line = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next());
    match tokio::time::timeout(Duration::from_secs(10), line).await {
        Ok(Ok(Some(Ok(line)))) => line,
        other => panic!("mosquitto_sub printed nothing: {other:?}"),
    }
}

/// The page and its files on both ports, with headers that keep it to itself; switching
/// `emq_dashboard` off closes its port and hides it on the API's, and on again brings both back.
#[tokio::test]
async fn the_dashboard_follows_its_plugin() {
    let stack = Stack::start().await;
    let dashboard = stack.dashboard_addr();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for base in [dashboard.to_string(), stack.mgmt.addr.to_string()] {
        let page = http.get(format!("http://{base}/")).send().await.expect("the page");
        assert_eq!(page.status(), StatusCode::OK);
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(page.text().await.unwrap().contains("dashboard/app.js"));
        for (file, kind) in
            [("app.js", "javascript"), ("mqtt.js", "javascript"), ("app.css", "text/css"), ("favicon.svg", "svg")]
        {
            let asset = http.get(format!("http://{base}/dashboard/{file}")).send().await.unwrap();
            assert_eq!(asset.status(), StatusCode::OK, "{file}");
            assert!(asset.headers()["content-type"].to_str().unwrap().contains(kind), "{file}");
        }
        assert_eq!(
            http.get(format!("http://{base}/dashboard/nope.js")).send().await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
    }
    // The dashboard's port serves the API too: the page calls it where it came from.
    let nodes = http.get(format!("http://{dashboard}/api/v2/management/nodes")).basic_auth("admin", Some("public"));
    assert_eq!(nodes.send().await.unwrap().status(), StatusCode::OK);

    let switch = |active: bool| json!({ "active": active });
    stack.api.ok(Method::PUT, &format!("nodes/{NODE}/plugins/emq_dashboard"), Some(switch(false))).await;
    assert!(!plugin_active(&stack.api, "emq_dashboard").await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(dashboard).is_ok() {
        assert!(Instant::now() < deadline, "the dashboard's port stayed open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hidden = http.get(format!("http://{}/", stack.mgmt.addr)).send().await.unwrap();
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
    // The API itself is not the dashboard: it stays.
    stack.api.get("management/nodes").await;

    stack.api.ok(Method::PUT, &format!("nodes/{NODE}/plugins/emq_dashboard"), Some(switch(true))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(page) = http.get(format!("http://{dashboard}/")).send().await {
            assert_eq!(page.status(), StatusCode::OK);
            break;
        }
        assert!(Instant::now() < deadline, "the dashboard's port did not open again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http.get(format!("http://{}/", stack.mgmt.addr)).send().await.unwrap().status(), StatusCode::OK);
}

/// The sidecar samples each node's figures for the charts: counters and gauges, oldest first, and they
/// move with the traffic.
#[tokio::test]
async fn history_samples_the_nodes() {
    let stack = Stack::start_with(&["--history-interval-ms", "100"]).await;
    let publisher = Client::connect(stack.mqtt_port(), "history-pub").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        publisher.client.publish("history/t", rumqttc::QoS::AtMostOnce, false, "x").await.unwrap();
        let history = stack.api.get("monitoring/history").await;
        let samples = history[NODE].as_array().cloned().unwrap_or_default();
        if samples.len() >= 3 && samples.last().unwrap()["received"].as_u64() > samples[0]["received"].as_u64() {
            break samples;
        }
        assert!(Instant::now() < deadline, "no moving samples: {history}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for pair in samples.windows(2) {
        assert!(pair[0]["ts"].as_i64() < pair[1]["ts"].as_i64(), "{pair:?}");
        assert!(pair[0]["received"].as_u64() <= pair[1]["received"].as_u64(), "{pair:?}");
    }
    let last = samples.last().unwrap();
    assert!(last["connections"].as_u64().unwrap() >= 1, "{last}");
    for field in ["sent", "subscriptions", "retained"] {
        assert!(last[field].is_u64(), "{field} in {last}");
    }
}
