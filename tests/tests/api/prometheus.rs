//! `GET /metrics` as a real Prometheus parser reads it.

use prometheus_parse::{Scrape, Value};
use reqwest::StatusCode;

use crate::helpers::*;

async fn scrape(api: &Api, auth: bool) -> (StatusCode, String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", api.base));
    if auth {
        request = request.basic_auth(&api.user, Some(&api.password));
    }
    let response = request.send().await.unwrap();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    (response.status(), content_type.unwrap_or_default(), response.text().await.unwrap())
}

fn sample(scrape: &Scrape, metric: &str) -> Value {
    let found = scrape.samples.iter().find(|s| s.metric == metric && s.labels.get("node") == Some(NODE));
    found.unwrap_or_else(|| panic!("no {metric} for {NODE}")).value.clone()
}

/// Every node's metrics are counters and its stats gauges, labelled with the node; a scraper needs the
/// API's Basic auth like any other client.
#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let _client = Client::connect(stack.mqtt_port(), "scraped").await;

    let (status, _, _) = scrape(api, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, content_type, text) = scrape(api, true).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let parsed = Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("the text format");
    let connects = api.get("monitoring/metrics").await["packets/connect"].as_f64().unwrap();
    match sample(&parsed, "midge_packets_connect_total") {
        Value::Counter(value) => assert!(value >= 1.0 && value <= connects, "{value} against {connects}"),
        other => panic!("not a counter: {other:?}"),
    }
    match sample(&parsed, "midge_clients_count") {
        Value::Gauge(value) => assert_eq!(value, 1.0),
        other => panic!("not a gauge: {other:?}"),
    }
    let counters = parsed.samples.iter().filter(|s| matches!(s.value, Value::Counter(_))).count();
    let gauges = parsed.samples.iter().filter(|s| matches!(s.value, Value::Gauge(_))).count();
    // As many as monitoring/metrics and monitoring/stats list, each once for the one node.
    assert_eq!((counters, gauges), (38, 14), "{text}");
}
