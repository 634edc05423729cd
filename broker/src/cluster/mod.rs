//! Several brokers as one, on NATS: a client on any node reaches subscribers on every node, and a
//! client id is held by one node at a time. The nodes are NATS clients, never a consensus group of
//! their own: NATS's interest graph is the route table (see `link.rs`), and JetStream's key-value
//! store the registry of client ids (`registry.rs`). A node configured without NATS servers is
//! [`Cluster::Standalone`], and none of this runs: the router's uplink is `None`.
//!
//! - `subject.rs`: topics and filters as NATS subjects; `wire.rs`: a message between nodes;
//! - `dedupe.rs`: each message once per node; `link.rs`: the connections and their tasks;
//! - `registry.rs`: which node holds which client id;
//! - `members.rs`: which nodes are alive; `wills.rs`: the wills a dead node leaves, fired once;
//! - `relay.rs`: control requests for other nodes; `retained.rs`: retained messages, kept in JetStream;
//! - `handover.rs`: a persistent session on its way to another node; `records.rs`: where the
//!   others find it when its node is gone; `sweep.rs`: what is left of dead nodes' sessions;
//! - `bucket.rs`: JetStream key-value buckets.

mod bucket;
mod dedupe;
mod handover;
mod link;
mod members;
mod records;
mod registry;
mod relay;
mod retained;
pub mod subject;
mod sweep;
mod wills;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use link::Link;
use members::Members;
use records::Records;
use registry::Registry;
pub use relay::Asked;
use sweep::Sweeper;
use wills::Wills;

use crate::metrics::Metrics;
use crate::router::{RouterHandle, Uplink};
use crate::session::{ClientId, Handover, Message};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster server {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("NATS: {0}")]
    Nats(String),
}

/// This node alone, or one of several.
#[derive(Clone)]
pub enum Cluster {
    Standalone,
    Nats(Arc<Clustered>),
}

/// A clustered node's side of the cluster, once it has joined.
pub struct Clustered {
    link: Arc<Link>,
    registry: Arc<Registry>,
    members: Arc<Members>,
    wills: Arc<Wills>,
    records: Arc<Records>,
    sweeping: tokio::task::AbortHandle,
    control: Client,
    data: Client,
}

/// A client id this node holds cluster-wide, as a connection keeps it to give it back (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claim(u64);

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

    /// Joins: from here on, other nodes' control requests for this one come through `asked`.
    pub async fn start(
        self,
        node: &str,
        router: RouterHandle,
        asked: mpsc::Sender<Asked>,
        shutdown: CancellationToken,
    ) -> Result<Cluster, ClusterError> {
        let joined = self.pending.start(node, router.clone(), shutdown.clone()).await?;
        let answering = relay::answer_asks(joined.control.clone(), node, asked).await?.abort_handle();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            answering.abort();
        });
        let data = joined.data.clone();
        let records = Records::start(joined.data.clone(), joined.sessions);
        let wills = Wills::start(joined.data, node, joined.incarnation, router.clone(), joined.wills);
        let control = joined.control.clone();
        let members = Members::start(joined.control, node, joined.incarnation, wills.clone(), joined.peers).await?;
        let sweeping = Sweeper::start(joined.registry.clone(), records.clone(), members.clone()).abort_handle();
        // Restarted under its old name, this node fires what its clients of before left behind, and
        // gives up the kept sessions that moved to other nodes while it was down.
        let own = wills.clone();
        tokio::spawn(async move { own.fire_own_left_behind().await });
        let (registry, restored) = (joined.registry.clone(), router.clone());
        tokio::spawn(async move {
            match registry.reconcile(&restored).await {
                Ok(0) => {}
                Ok(dropped) => tracing::info!(dropped, "kept sessions taken up by other nodes meanwhile dropped here"),
                Err(e) => tracing::warn!(error = %e, "kept sessions not checked against the cluster's registry"),
            }
        });
        Ok(Cluster::Nats(Arc::new(Clustered {
            link: self.link,
            registry: joined.registry,
            members,
            wills,
            records,
            sweeping,
            control,
            data,
        })))
    }
}

impl Cluster {
    pub fn is_clustered(&self) -> bool {
        matches!(self, Cluster::Nats(_))
    }

    /// Returns once the routes this node added so far are known cluster-wide, so that a message
    /// published on another node after a SUBACK reaches its subscriber. At once for a single node.
    pub async fn routes_known(&self) {
        if let Cluster::Nats(joined) = self {
            joined.link.routes_known().await;
        }
    }

    /// Takes `client_id` for a connecting client: any other node that held it ends its connection
    /// there (taken over). With `resume`, that node hands its kept session over, and it is parked in
    /// `router` for the client to resume. A single node has nothing to claim.
    pub async fn claim(
        &self,
        client_id: &ClientId,
        resume: bool,
        router: &RouterHandle,
    ) -> Result<Claim, ClusterError> {
        let Cluster::Nats(joined) = self else { return Ok(Claim::default()) };
        let Clustered { registry, records, link, .. } = &**joined;
        let claimed = registry.claim(client_id, resume).await?;
        if let Some(node) = &claimed.from_silent_node {
            // What its client left on the gone node: a will waiting out its delay is void if the
            // session resumes here; any other goes out now, once.
            joined.wills.settle_left_behind(node, client_id, resume).await;
        }
        match (claimed.session, claimed.from_silent_node, resume) {
            (Some(session), _, _) => match handover::decode(client_id, &session) {
                Ok((record, session)) => router.adopt(record, session),
                Err(e) => {
                    tracing::warn!(client_id = %client_id.escape_debug(), error = %e, "session handed over unreadable")
                }
            },
            // Its node is gone: the session comes back from its record, without what was queued there.
            (None, Some(node), true) => {
                if let Some(mut record) = records.find(client_id).await {
                    joined.members.left_with(&node, &mut record);
                    if record.expired() {
                        // Expired while its node was gone: the client starts afresh, and the record goes.
                        records.discard(client_id).await;
                    } else {
                        router.adopt(record, Handover::default());
                    }
                }
            }
            (None, Some(_), false) => records.discard(client_id).await,
            (None, None, _) => {}
        }
        // A session that came with routes has them known cluster-wide before its CONNACK, as a
        // SUBACK would.
        link.routes_known().await;
        Ok(Claim(claimed.revision))
    }

    /// A connection here ended as taken over by another node: its parked session goes there.
    pub fn taken_over(&self, router: &RouterHandle, client_id: &str) {
        if let Cluster::Nats(joined) = self {
            joined.registry.taken_over(router, client_id);
        }
    }

    /// Whether `claim` still stands: asked to let go while the connect was under way, this node lost it.
    pub fn holds(&self, client_id: &str, claim: Claim) -> bool {
        match self {
            Cluster::Nats(joined) if claim.0 > 0 => joined.registry.holds(client_id, claim.0),
            _ => true,
        }
    }

    /// The live nodes' names, as they change; `None` for a single node.
    pub fn nodes(&self) -> Option<watch::Receiver<Vec<String>>> {
        match self {
            Cluster::Standalone => None,
            Cluster::Nats(joined) => Some(joined.members.watch()),
        }
    }

    /// The other live nodes' names.
    pub fn others(&self) -> Vec<String> {
        match self {
            Cluster::Standalone => Vec::new(),
            Cluster::Nats(joined) => joined.members.others(),
        }
    }

    /// Sends a control request to `node`'s control service and returns its reply; at once an error
    /// for a node that is not alive.
    pub async fn ask(&self, node: &str, payload: Bytes) -> Result<Bytes, ClusterError> {
        match self {
            Cluster::Standalone => Err(ClusterError::Nats("this node is not clustered".into())),
            Cluster::Nats(joined) if !joined.members.is_alive(node) => {
                Err(ClusterError::Nats(format!("node {node} is not in the cluster")))
            }
            Cluster::Nats(joined) => relay::ask(&joined.control, node, payload).await,
        }
    }

    /// Keeps the will of a client connected on connection `conn` where the other nodes find it if
    /// this one dies.
    pub fn keep_will(&self, client_id: &ClientId, conn: u64, will: &Arc<Message>, delay: Duration) {
        if let Cluster::Nats(joined) = self {
            joined.wills.keep(client_id.clone(), conn, will.clone(), delay);
        }
    }

    /// The connection `conn` ended and its will waits out `delay` in the router: its copy on the other
    /// nodes stays, marked due then, should this node die meanwhile.
    pub fn defer_will(&self, client_id: &ClientId, conn: u64, will: &Arc<Message>, delay: Duration) {
        if let Cluster::Nats(joined) = self {
            joined.wills.defer(client_id.clone(), conn, will.clone(), delay);
        }
    }

    /// The connection `conn` ended, and with it its will's copy on the other nodes. The will to
    /// publish at once, if any, is handed back to publish on a single node; clustered, it is
    /// published once its copy is known not to have fired elsewhere.
    pub fn end_will(&self, client_id: &ClientId, conn: u64, will: Option<Arc<Message>>) -> Option<Arc<Message>> {
        match self {
            Cluster::Standalone => will,
            Cluster::Nats(joined) => {
                joined.wills.end(client_id.clone(), conn, will);
                None
            }
        }
    }

    /// Leaves the cluster in good order, once every connection is closed: the wills kept for this
    /// node's clients are cleared, and the others are told at once rather than left to notice.
    pub async fn leave(&self) {
        if let Cluster::Nats(joined) = self {
            joined.sweeping.abort();
            joined.wills.finish().await;
            joined.members.leave().await;
            // Its subscriptions go with it at once (the process may live on: in tests, or embedded).
            for client in [&joined.data, &joined.control] {
                let _ = client.drain().await;
            }
        }
    }

    /// Gives `client_id` up: its session has ended on this node.
    pub async fn release(&self, client_id: &str, claim: Claim) {
        if let (Cluster::Nats(joined), true) = (self, claim.0 > 0) {
            joined.registry.release(client_id, claim.0).await;
        }
    }
}
