//! Wills that fire once, cluster-wide. A node keeps a copy of each of its clients' wills in the
//! JetStream key-value bucket `midge-wills` (key: node, then client id), and a will fires only by
//! deleting that copy at the revision the node wrote: when its client's connection ends badly, the node
//! itself does so; when the node dies (silent, see `members.rs`) or restarts under a new incarnation,
//! every survivor tries, and the one whose delete succeeds publishes it. Copies whose node left in
//! good order are gone already: it cleared them as its connections closed.
//!
//! One task applies the changes in the order the connections made them, so that a will cleared right
//! after it was kept is not kept after all. Away from NATS, wills are not kept and fire locally.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::{jetstream, Client};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, OnceCell};

use super::bucket::{self, key};
use super::{wire, ClusterError};
use crate::router::RouterHandle;
use crate::session::{ClientId, Message};

const BUCKET: &str = "midge-wills";
/// How long a node that is leaving waits for its wills to be cleared.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

enum Change {
    /// A client with a will connected (connection `conn`).
    Keep { client_id: ClientId, conn: u64, will: Arc<Message> },
    /// Its connection ended: the will goes out (`Some`) or is dropped (`None`).
    End { client_id: ClientId, conn: u64, will: Option<Arc<Message>> },
    /// Answered once every change before it is applied.
    Flush(oneshot::Sender<()>),
}

pub struct Wills {
    changes: mpsc::UnboundedSender<Change>,
    shared: Arc<Shared>,
}

/// What the task and the survivors' sweeps share.
struct Shared {
    data: Client,
    js: jetstream::Context,
    store: OnceCell<kv::Store>,
    node: String,
    incarnation: u64,
    router: RouterHandle,
}

impl Wills {
    pub fn start(data: Client, node: &str, incarnation: u64, router: RouterHandle) -> Arc<Wills> {
        let shared = Arc::new(Shared {
            js: jetstream::new(data.clone()),
            data,
            store: OnceCell::new(),
            node: node.to_string(),
            incarnation,
            router,
        });
        let (changes, pending) = mpsc::unbounded_channel();
        tokio::spawn(apply(shared.clone(), pending));
        Arc::new(Wills { changes, shared })
    }

    /// Keeps `will` of the client connected on connection `conn`, for a survivor to fire if this node dies.
    pub fn keep(&self, client_id: ClientId, conn: u64, will: Arc<Message>) {
        let _ = self.changes.send(Change::Keep { client_id, conn, will });
    }

    /// The client's connection ended: its will, if it goes out, goes out unless a survivor fired it
    /// already (this node was taken for dead).
    pub fn end(&self, client_id: ClientId, conn: u64, will: Option<Arc<Message>>) {
        let _ = self.changes.send(Change::End { client_id, conn, will });
    }

    /// Returns once the changes made so far are applied (or after a short wait).
    pub async fn flush(&self) {
        let (done, applied) = oneshot::channel();
        if self.changes.send(Change::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, applied).await;
        }
    }

    /// Fires the wills that `node` kept, but those of its incarnation `alive` (it restarted), once
    /// cluster-wide: each by whichever node deletes its copy first.
    pub async fn fire_left_behind(&self, node: &str, alive: Option<u64>) {
        if let Err(e) = self.shared.fire_left_behind(node, alive).await {
            tracing::warn!(node, error = %e, "wills of a node that is gone not fired");
        }
    }

    /// This node's own wills from before it restarted.
    pub async fn fire_own_left_behind(&self) {
        self.fire_left_behind(&self.shared.node.clone(), Some(self.shared.incarnation)).await;
    }
}

impl Shared {
    async fn store(&self) -> Result<&kv::Store, ClusterError> {
        self.store.get_or_try_init(|| bucket::open(&self.js, BUCKET)).await
    }

    fn connected(&self) -> bool {
        self.data.connection_state() == State::Connected
    }

    fn key(&self, client_id: &str) -> String {
        format!("{}.{}", key(&self.node), key(client_id))
    }

    async fn fire_left_behind(&self, node: &str, alive: Option<u64>) -> Result<(), ClusterError> {
        if !self.connected() {
            return Ok(());
        }
        let store = self.store().await?;
        let prefix = format!("{}.", key(node));
        let mut keys = store.keys().await.map_err(bucket::nats)?;
        let mut fired = 0;
        while let Some(key) = keys.next().await {
            let key = key.map_err(bucket::nats)?;
            if !key.starts_with(&prefix) {
                continue;
            }
            let Some(entry) = store.entry(&key).await.map_err(bucket::nats)? else { continue };
            if entry.operation != Operation::Put {
                continue;
            }
            let Some((incarnation, will)) = decode(&entry.value) else {
                tracing::warn!(key, "a kept will could not be read");
                continue;
            };
            if Some(incarnation) == alive {
                continue;
            }
            // Whoever deletes it at this revision fires it; the others find it gone.
            if store.delete_expect_revision(&key, Some(entry.revision)).await.is_ok() {
                self.router.publish(Arc::new(will));
                fired += 1;
            }
        }
        if fired > 0 {
            tracing::info!(node, fired, "wills of clients of a node that is gone fired");
        }
        Ok(())
    }
}

/// Applies the changes in order. Keeps the revision of each will it kept, by client id, with the
/// connection it came from: a connection's end touches the copy only if it is still its own.
async fn apply(shared: Arc<Shared>, mut changes: mpsc::UnboundedReceiver<Change>) {
    let mut kept: HashMap<ClientId, (u64, u64)> = HashMap::new();
    while let Some(change) = changes.recv().await {
        match change {
            Change::Keep { client_id, conn, will } => {
                if !shared.connected() {
                    continue;
                }
                let value = encode(shared.incarnation, &will);
                match shared.store().await {
                    Ok(store) => match store.put(shared.key(&client_id), value).await {
                        Ok(revision) => {
                            kept.insert(client_id, (conn, revision));
                        }
                        Err(e) => tracing::debug!(error = %e, "will not kept cluster-wide"),
                    },
                    Err(e) => tracing::debug!(error = %e, "will not kept cluster-wide"),
                }
            }
            Change::End { client_id, conn, will } => {
                let revision = match kept.get(&client_id) {
                    Some((owner, revision)) if *owner == conn => Some(*revision),
                    _ => None,
                };
                let mut fire = will.is_some();
                if let Some(revision) = revision {
                    kept.remove(&client_id);
                    if let (true, Ok(store)) = (shared.connected(), shared.store().await) {
                        match store.delete_expect_revision(shared.key(&client_id), Some(revision)).await {
                            Ok(_) => {}
                            // Not at that revision: a survivor took this node for dead and fired it.
                            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => fire = false,
                            Err(e) => tracing::debug!(error = %e, "kept will not cleared"),
                        }
                    }
                }
                if let (true, Some(will)) = (fire, will) {
                    shared.router.publish(will);
                }
            }
            Change::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn encode(incarnation: u64, will: &Arc<Message>) -> Bytes {
    let message = wire::encode_message(will);
    let mut value = BytesMut::with_capacity(8 + message.len());
    value.put_u64(incarnation);
    value.put_slice(&message);
    value.freeze()
}

fn decode(value: &[u8]) -> Option<(u64, Message)> {
    let incarnation = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    Some((incarnation, wire::decode_message(&value[8..]).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    #[test]
    fn a_kept_will_reads_back_with_its_incarnation() {
        let will = Arc::new(Message::new("w/t".into(), "gone".into(), QoS::AtLeastOnce, true));
        let (incarnation, back) = decode(&encode(0xfeed, &will)).unwrap();
        assert_eq!(incarnation, 0xfeed);
        assert_eq!(
            (&back.topic[..], &back.payload[..], back.qos, back.retain),
            (&b"w/t"[..], &b"gone"[..], QoS::AtLeastOnce, true)
        );
        assert!(decode(b"short").is_none());
    }
}
