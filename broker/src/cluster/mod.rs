//! Several brokers as one, on NATS: a client on any node reaches subscribers on every node. The nodes
//! are NATS clients, never a consensus group of their own; NATS's interest graph is the route table
//! (see `link.rs`). A node configured without NATS servers is [`Cluster::Standalone`], and none of
//! this runs: the router's uplink is `None`.
//!
//! - `subject.rs`: topics and filters as NATS subjects; `wire.rs`: a message between nodes;
//! - `dedupe.rs`: each message once per node; `link.rs`: the connections and their tasks.

mod dedupe;
mod link;
pub mod subject;
mod wire;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use link::Link;

use crate::metrics::Metrics;
use crate::router::{RouterHandle, Uplink};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster server {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("NATS: {0}")]
    Nats(String),
}

/// This node alone, or one of several.
pub enum Cluster {
    Standalone,
    Nats(Arc<Link>),
}

/// A cluster being set up: the router is built with its uplink, then the link starts with the router.
pub struct Joining {
    link: Arc<Link>,
    pending: link::Pending,
}

impl Joining {
    /// `None` for a single node (no servers given).
    pub fn new(servers: &[String], metrics: Arc<Metrics>) -> Result<Option<Joining>, ClusterError> {
        if servers.is_empty() {
            return Ok(None);
        }
        let (link, pending) = Link::new(servers, metrics)?;
        Ok(Some(Joining { link, pending }))
    }

    /// What the router hands its messages and route changes to.
    pub fn uplink(&self) -> Arc<dyn Uplink> {
        self.link.clone()
    }

    pub async fn start(
        self,
        node: &str,
        router: RouterHandle,
        shutdown: CancellationToken,
    ) -> Result<Cluster, ClusterError> {
        self.pending.start(node, router, shutdown).await?;
        Ok(Cluster::Nats(self.link))
    }
}

impl Cluster {
    pub fn is_clustered(&self) -> bool {
        matches!(self, Cluster::Nats(_))
    }

    /// Returns once the routes this node added so far are known cluster-wide, so that a message
    /// published on another node after a SUBACK reaches its subscriber. At once for a single node.
    pub async fn routes_known(&self) {
        if let Cluster::Nats(link) = self {
            link.routes_known().await;
        }
    }
}
