//! The sidecar's own figures for `GET /metrics`: its requests by method, route and status, and how long
//! they took, as a Prometheus histogram by method and route. A fairing records every response.
//!
//! Routes are labelled by their template (`/api/v2/nodes/<node>/clients`), not the path asked for, so
//! the number of series stays that of the routes, whatever clients ask; a request no route matched is
//! `unmatched`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use midge_shared::prometheus::label_value;
use rocket::fairing::{Fairing, Info, Kind};
use rocket::{Data, Request, Response};

/// Upper bounds of the latency buckets, in seconds: from half a millisecond (a broker round trip) to the
/// request timeout.
const BOUNDS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    /// Per bucket, the requests at or under its bound (not cumulative; the exposition adds up).
    buckets: [u64; BOUNDS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Figures {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<(String, String), Histogram>,
}

/// Shared by the fairing that records and the route that reports.
#[derive(Default)]
pub struct RequestMetrics(Mutex<Figures>);

impl RequestMetrics {
    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut figures = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *figures.requests.entry((method.into(), route.into(), status)).or_default() += 1;
        let histogram = figures.durations.entry((method.into(), route.into())).or_default();
        if let Some(bucket) = BOUNDS.iter().position(|bound| seconds <= *bound) {
            histogram.buckets[bucket] += 1;
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }

    /// Appends the two families in the text exposition format.
    pub fn write_exposition(&self, text: &mut String) {
        let figures = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = writeln!(text, "# TYPE midge_mgmt_http_requests_total counter");
        for ((method, route, status), count) in &figures.requests {
            let _ = writeln!(
                text,
                "midge_mgmt_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {count}",
                label_value(route)
            );
        }
        let name = "midge_mgmt_http_request_duration_seconds";
        let _ = writeln!(text, "# TYPE {name} histogram");
        for ((method, route), histogram) in &figures.durations {
            let labels = format!("method=\"{method}\",route=\"{}\"", label_value(route));
            let mut cumulative = 0;
            for (bound, count) in BOUNDS.iter().zip(histogram.buckets) {
                cumulative += count;
                let _ = writeln!(text, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(text, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", histogram.count);
            let _ = writeln!(text, "{name}_sum{{{labels}}} {}", histogram.sum);
            let _ = writeln!(text, "{name}_count{{{labels}}} {}", histogram.count);
        }
    }
}

/// When a request arrived, in its local cache.
struct Arrived(Instant);

/// The fairing: notes when each request arrives and records it when its response leaves.
pub struct Recorder(pub Arc<RequestMetrics>);

#[rocket::async_trait]
impl Fairing for Recorder {
    fn info(&self) -> Info {
        Info { name: "request metrics", kind: Kind::Request | Kind::Response }
    }

    async fn on_request(&self, request: &mut Request<'_>, _: &mut Data<'_>) {
        request.local_cache(|| Arrived(Instant::now()));
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        let arrived = request.local_cache(|| Arrived(Instant::now())).0;
        let route = request.route().map_or("unmatched", |route| route.uri.path());
        let method = request.method().as_str();
        self.0.record(method, route, response.status().code, arrived.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_cumulative_buckets() {
        let metrics = RequestMetrics::default();
        metrics.record("GET", "/api/v2/users", 200, 0.0003);
        metrics.record("GET", "/api/v2/users", 200, 0.02);
        metrics.record("GET", "/api/v2/users", 401, 10.0);
        let mut text = String::new();
        metrics.write_exposition(&mut text);
        for line in [
            r#"midge_mgmt_http_requests_total{method="GET",route="/api/v2/users",status="200"} 2"#,
            r#"midge_mgmt_http_requests_total{method="GET",route="/api/v2/users",status="401"} 1"#,
            r#"midge_mgmt_http_request_duration_seconds_bucket{method="GET",route="/api/v2/users",le="0.0005"} 1"#,
            r#"midge_mgmt_http_request_duration_seconds_bucket{method="GET",route="/api/v2/users",le="0.025"} 2"#,
            r#"midge_mgmt_http_request_duration_seconds_bucket{method="GET",route="/api/v2/users",le="5"} 2"#,
            r#"midge_mgmt_http_request_duration_seconds_bucket{method="GET",route="/api/v2/users",le="+Inf"} 3"#,
            r#"midge_mgmt_http_request_duration_seconds_count{method="GET",route="/api/v2/users"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
