//! `GET /metrics`: every live node's metrics and stats in Prometheus's text exposition format, for a
//! scraper (with the same Basic auth as the API: `basic_auth` in Prometheus's scrape config), and the
//! sidecar's own requests (see `request_metrics.rs`).
//!
//! The broker's names become Prometheus's as `midge_shared::prometheus` says; a broker scraped directly
//! (`--metrics-listen`) writes the same.

use std::sync::Arc;

use midge_shared::control::Request;
use midge_shared::prometheus::exposition;
use rocket::http::ContentType;
use rocket::{get, State};

use crate::api::per_node;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::request_metrics::RequestMetrics;
use crate::App;

/// The text format's media type, version 0.0.4.
fn text_format() -> ContentType {
    ContentType::new("text", "plain").with_params([("version", "0.0.4"), ("charset", "utf-8")])
}

#[get("/metrics")]
pub async fn metrics(
    _admin: Admin,
    app: &State<App>,
    requests: &State<Arc<RequestMetrics>>,
) -> Result<(ContentType, String), ApiError> {
    let metrics = per_node(app, Request::metrics).await?;
    let stats = per_node(app, Request::stats).await?;
    let mut text = exposition(&metrics, &stats);
    requests.write_exposition(&mut text);
    Ok((text_format(), text))
}
