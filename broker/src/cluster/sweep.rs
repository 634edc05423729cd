//! What a dead node leaves in the buckets that no client may come back for. A session that was
//! online there has its record marked as left when the node was last heard, so that its expiry runs;
//! a record past its expiry goes, and its client id's claim with it; so do the claims of the node's
//! clients that kept no session. A record without expiry stays, as its session would on its node.
//!
//! Each node sweeps once it is settled in the cluster, whenever a node dies, and every
//! [`FULL_SWEEP`]; in between it removes each record it found waiting when its expiry comes. Every
//! change is a compare-and-set on the revision read, so that nodes sweeping at once, or a client
//! coming back meanwhile, lose nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::members::Members;
use super::records::Records;
use super::registry::Registry;
use super::ClusterError;
use crate::session::ClientId;
use crate::store::now_wall_ms;

/// How often every node reads the buckets through, deaths or not: what an earlier sweep could not
/// finish (NATS away, a node that died before this one started and was not settled yet) is done then.
const FULL_SWEEP: Duration = Duration::from_secs(600);
/// How soon a sweep that could not run is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// A session of a dead node waiting out its expiry.
#[derive(Debug)]
struct Orphan {
    client_id: ClientId,
    /// When it expires (ms since the epoch).
    due_ms: u64,
    /// The revisions of its record and of its client id's claim, as read.
    record: u64,
    claim: u64,
}

pub struct Sweeper {
    registry: Arc<Registry>,
    records: Arc<Records>,
    members: Arc<Members>,
}

impl Sweeper {
    pub fn start(registry: Arc<Registry>, records: Arc<Records>, members: Arc<Members>) -> JoinHandle<()> {
        tokio::spawn(Sweeper { registry, records, members }.run())
    }

    async fn run(self) {
        let mut live = self.members.watch();
        let mut known = live.borrow_and_update().clone();
        loop {
            let (mut orphans, next_sweep) = match self.sweep().await {
                Ok(orphans) => (orphans, FULL_SWEEP),
                Err(e) => {
                    tracing::debug!(error = %e, "dead nodes' sessions not swept yet");
                    (Vec::new(), RETRY)
                }
            };
            let full = tokio::time::sleep(next_sweep);
            tokio::pin!(full);
            loop {
                let due_in =
                    orphans.last().map(|orphan| Duration::from_millis(orphan.due_ms.saturating_sub(now_wall_ms())));
                tokio::select! {
                    _ = &mut full => break,
                    lost = lost_a_node(&mut live, &mut known) => {
                        if !lost {
                            return;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(due_in.unwrap_or_default()), if due_in.is_some() => {
                        if let Some(orphan) = orphans.pop() {
                            self.expire(orphan).await;
                        }
                    }
                }
            }
        }
    }

    /// Reads both buckets through: marks the sessions that were online on dead nodes as left, removes
    /// what expired and the claims with no session, and returns the sessions still waiting, the
    /// soonest due last.
    async fn sweep(&self) -> Result<Vec<Orphan>, ClusterError> {
        if !self.members.settled() {
            return Err(ClusterError::Nats("not settled in the cluster yet".into()));
        }
        let held = self.registry.held_by_gone(|node| !self.members.is_alive(node)).await?;
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut orphans = Vec::new();
        let mut with_session = HashSet::new();
        for (mut record, revision) in self.records.of(|client_id| held.contains_key(client_id)).await? {
            let Some((node, claim)) = held.get(&record.client_id) else { continue };
            with_session.insert(record.client_id.clone());
            let revision = if record.parked_at_ms.is_none() {
                self.members.left_with(node, &mut record);
                // Changed meanwhile: its client is back, or another sweep marked it.
                let Some(revision) = self.records.rewrite(&record, revision).await else { continue };
                revision
            } else {
                revision
            };
            let (Some(expiry), Some(parked_at)) = (record.expiry, record.parked_at_ms) else { continue };
            let due_ms = parked_at.saturating_add(expiry.as_millis().try_into().unwrap_or(u64::MAX));
            orphans.push(Orphan { client_id: record.client_id, due_ms, record: revision, claim: *claim });
        }
        for (client_id, (_, claim)) in &held {
            if !with_session.contains(client_id) {
                self.registry.forget(client_id, *claim).await;
            }
        }
        orphans.sort_by_key(|orphan| std::cmp::Reverse(orphan.due_ms));
        Ok(orphans)
    }

    async fn expire(&self, orphan: Orphan) {
        if self.records.remove(&orphan.client_id, orphan.record).await {
            self.registry.forget(&orphan.client_id, orphan.claim).await;
            tracing::debug!(client_id = %orphan.client_id.escape_debug(), "a dead node's session expired");
        }
    }
}

/// Waits until a node in `known` leaves the live nodes; `false` once there is no one left to tell.
async fn lost_a_node(live: &mut watch::Receiver<Vec<String>>, known: &mut Vec<String>) -> bool {
    loop {
        if live.changed().await.is_err() {
            return false;
        }
        let now = live.borrow_and_update().clone();
        let lost = known.iter().any(|node| !now.contains(node));
        *known = now;
        if lost {
            return true;
        }
    }
}
