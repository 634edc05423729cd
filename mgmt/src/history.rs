//! The last minutes of each node's headline figures, sampled by the sidecar, so that the dashboard's
//! charts have a past the moment the page opens rather than only from then on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use midge_shared::control::Request;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::link::Link;

/// Ten minutes at the default interval.
const KEPT: usize = 120;

/// One node's figures at one moment: counters as they stood (rates are their differences) and gauges.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub received: u64,
    pub sent: u64,
    pub connections: u64,
    pub subscriptions: u64,
    pub retained: u64,
}

pub struct History {
    interval: Duration,
    nodes: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl History {
    pub fn new(interval: Duration) -> History {
        History { interval, nodes: Mutex::new(BTreeMap::new()) }
    }

    /// Every node's samples, oldest first.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<Sample>> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.iter().map(|(node, samples)| (node.clone(), samples.iter().copied().collect())).collect()
    }

    fn push(&self, node: &str, sample: Sample) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let samples = nodes.entry(node.to_string()).or_default();
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
        // A node that has been gone for the whole window has nothing left to show.
        let window = i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX / 2).saturating_mul(KEPT as i64);
        let horizon = sample.ts.saturating_sub(window);
        nodes.retain(|_, samples| samples.back().is_some_and(|last| last.ts > horizon));
    }

    async fn sample(&self, link: &Link) {
        let Ok(nodes) = link.answering() else { return };
        for node in nodes {
            let (Ok(metrics), Ok(stats)) =
                (link.call(&node, Request::metrics()).await, link.call(&node, Request::stats()).await)
            else {
                continue;
            };
            let figure = |figures: &BTreeMap<String, u64>, key: &str| figures.get(key).copied().unwrap_or(0);
            let sample = Sample {
                ts: chrono::Utc::now().timestamp_millis(),
                received: figure(&metrics, "messages/received"),
                sent: figure(&metrics, "messages/sent"),
                connections: figure(&stats, "clients/count"),
                subscriptions: figure(&stats, "subscriptions/count"),
                retained: figure(&stats, "retained/count"),
            };
            self.push(&node, sample);
        }
    }
}

/// Samples every interval until the sidecar stops.
pub async fn record(history: std::sync::Arc<History>, link: Weak<Link>, shutdown: CancellationToken) {
    let period = history.interval;
    crate::link::every(link, period, shutdown, move |link| {
        let history = history.clone();
        Box::pin(async move { history.sample(&link).await })
    })
    .await;
}
