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

    // A request of the API's own, to be counted in the sidecar's figures.
    api.get("users").await;
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
    let node_samples = || parsed.samples.iter().filter(|s| s.labels.get("node").is_some());
    let counters = node_samples().filter(|s| matches!(s.value, Value::Counter(_))).count();
    let gauges = node_samples().filter(|s| matches!(s.value, Value::Gauge(_))).count();
    // As many as monitoring/metrics and monitoring/stats list, each once for the one node.
    assert_eq!((counters, gauges), (38, 14), "{text}");

    // The sidecar's own requests: counted by route template and status, timed in a histogram.
    let requests = |route: &str, status: &str| {
        let found = parsed.samples.iter().find(|s| {
            s.metric == "midge_mgmt_http_requests_total"
                && s.labels.get("method") == Some("GET")
                && s.labels.get("route") == Some(route)
                && s.labels.get("status") == Some(status)
        });
        match found.map(|s| &s.value) {
            Some(Value::Counter(n)) => *n,
            other => panic!("no request counter for {route} {status}: {other:?}\n{text}"),
        }
    };
    assert_eq!(requests("/api/v2/users", "200"), 1.0);
    // The unauthenticated scrape above.
    assert_eq!(requests("/metrics", "401"), 1.0);
    let histogram = parsed.samples.iter().find(|s| {
        s.metric == "midge_mgmt_http_request_duration_seconds" && s.labels.get("route") == Some("/api/v2/users")
    });
    match histogram.map(|s| &s.value) {
        Some(Value::Histogram(buckets)) => {
            let last = buckets.last().expect("buckets");
            assert!(last.less_than.is_infinite() && last.count >= 1.0, "{buckets:?}");
        }
        other => panic!("no latency histogram: {other:?}\n{text}"),
    }
}
