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
use tokio::sync::{mpsc, oneshot, OnceCell};

use super::bucket::{self, key};
use super::members::DEAD_AFTER;
use super::{wire, ClusterError};
use crate::router::RouterHandle;
use crate::session::{ClientId, Message};
use crate::store::now_wall_ms;

const BUCKET: &str = "midge-wills";
/// How long a node that is leaving waits for its wills to be cleared.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub enum Change {
    /// A client with a will connected (connection `conn`).
    Keep { client_id: ClientId, conn: u64, will: Arc<Message>, delay: Duration },
    /// Its connection ended: the will goes out (`Some`) or is dropped (`None`).
    End { client_id: ClientId, conn: u64, will: Option<Arc<Message>> },
    /// Its connection ended and the will waits out its delay (MQTT 5) in the router, due at `due_ms`
    /// (wall clock): its copy stays, marked due then, for a survivor should this node die meanwhile.
    Defer { client_id: ClientId, conn: u64, will: Arc<Message>, due_ms: u64 },
    /// The router published or dropped the will it held: its copy goes.
    Settled(ClientId),
    /// Answered once every change before it is applied.
    Flush(oneshot::Sender<()>),
}

/// The channel of changes: made with the link (the router tells it when a delayed will is settled),
/// read by the wills' task.
pub fn channel() -> (mpsc::UnboundedSender<Change>, mpsc::UnboundedReceiver<Change>) {
    mpsc::unbounded_channel()
}

pub struct Wills {
    changes: mpsc::UnboundedSender<Change>,
    shared: Arc<Shared>,
    /// The task that applies the changes: it holds the router, which holds the link, which holds a
    /// sender of its channel, so it is ended by `stop` rather than by its channel closing.
    applying: tokio::task::AbortHandle,
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
    pub fn start(
        data: Client,
        node: &str,
        incarnation: u64,
        router: RouterHandle,
        (changes, pending): (mpsc::UnboundedSender<Change>, mpsc::UnboundedReceiver<Change>),
    ) -> Arc<Wills> {
        let shared = Arc::new(Shared {
            js: jetstream::new(data.clone()),
            data,
            store: OnceCell::new(),
            node: node.to_string(),
            incarnation,
            router,
        });
        let applying = tokio::spawn(apply(shared.clone(), pending)).abort_handle();
        Arc::new(Wills { changes, shared, applying })
    }

    /// Keeps `will` of the client connected on connection `conn`, for a survivor to fire if this node dies.
    pub fn keep(&self, client_id: ClientId, conn: u64, will: Arc<Message>, delay: Duration) {
        let _ = self.changes.send(Change::Keep { client_id, conn, will, delay });
    }

    /// The client's connection ended: its will, if it goes out, goes out unless a survivor fired it
    /// already (this node was taken for dead).
    pub fn end(&self, client_id: ClientId, conn: u64, will: Option<Arc<Message>>) {
        let _ = self.changes.send(Change::End { client_id, conn, will });
    }

    /// The client's connection ended and its will waits `delay` in the router.
    pub fn defer(&self, client_id: ClientId, conn: u64, will: Arc<Message>, delay: Duration) {
        let due_ms = now_wall_ms().saturating_add(delay.as_millis() as u64);
        let _ = self.changes.send(Change::Defer { client_id, conn, will, due_ms });
    }

    /// The will `node` (gone) kept for `client_id`, whose client connects here now: voided if the
    /// client resumes its session and the will was waiting out a delay, else published (once).
    pub async fn settle_left_behind(&self, node: &str, client_id: &str, resumed: bool) {
        if let Err(e) = self.shared.settle_left_behind(node, client_id, resumed).await {
            tracing::debug!(node, error = %e, "a will left behind not settled");
        }
    }

    /// Returns once the changes made so far are applied (or after a short wait), and stops.
    pub async fn finish(&self) {
        let (done, applied) = oneshot::channel();
        if self.changes.send(Change::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, applied).await;
        }
        self.applying.abort();
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
        will_key(&self.node, client_id)
    }

    async fn fire_left_behind(&self, node: &str, alive: Option<u64>) -> Result<(), ClusterError> {
        if !self.connected() {
            return Ok(());
        }
        let store = self.store().await?;
        // The gone node's wills only, by their keys' prefix, in one pass.
        let left = bucket::entries(store, &format!("{}.>", key(node)), |_| true).await?;
        let mut fired = 0;
        for entry in left {
            let key = entry.key;
            let Some((incarnation, due, will)) = decode(&entry.value) else {
                tracing::warn!(key, "a kept will could not be read");
                continue;
            };
            if Some(incarnation) == alive {
                continue;
            }
            let wait = due.wait();
            if wait.is_zero() {
                fired += usize::from(fire(store, &self.router, &key, entry.revision, will).await);
            } else {
                // Waiting out its delay: fired then, unless its client resumed elsewhere meanwhile
                // (the node it connected to voided it).
                let (store, router) = (store.clone(), self.router.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    fire(&store, &router, &key, entry.revision, will).await;
                });
            }
        }
        if fired > 0 {
            tracing::info!(node, fired, "wills of clients of a node that is gone fired");
        }
        Ok(())
    }

    async fn settle_left_behind(&self, node: &str, client_id: &str, resumed: bool) -> Result<(), ClusterError> {
        if !self.connected() {
            return Ok(());
        }
        let store = self.store().await?;
        let key = will_key(node, client_id);
        let Some(entry) = store.entry(&key).await.map_err(bucket::nats)? else { return Ok(()) };
        let Some((_, due, will)) = decode(&entry.value).filter(|_| entry.operation == Operation::Put) else {
            return Ok(());
        };
        if resumed && !due.wait().is_zero() {
            let _ = store.delete_expect_revision(&key, Some(entry.revision)).await;
        } else {
            fire(store, &self.router, &key, entry.revision, will).await;
        }
        Ok(())
    }
}

/// The key of the will `node` keeps for `client_id`: all of a node's share the prefix `<node>.`.
fn will_key(node: &str, client_id: &str) -> String {
    format!("{}.{}", key(node), key(client_id))
}

/// Whoever deletes the copy at this revision publishes the will; the others find it gone.
async fn fire(store: &kv::Store, router: &RouterHandle, key: &str, revision: u64, will: Message) -> bool {
    let won = store.delete_expect_revision(key, Some(revision)).await.is_ok();
    if won {
        router.publish(Arc::new(will));
    }
    won
}

/// Applies the changes in order. Keeps the revision of each will it kept, by client id, with the
/// connection it came from: a connection's end touches the copy only if it is still its own.
async fn apply(shared: Arc<Shared>, mut changes: mpsc::UnboundedReceiver<Change>) {
    let mut kept: HashMap<ClientId, (u64, u64)> = HashMap::new();
    while let Some(change) = changes.recv().await {
        match change {
            Change::Keep { client_id, conn, will, delay } => {
                if !shared.connected() {
                    continue;
                }
                let value = encode(shared.incarnation, Due::AfterLoss(delay), &will);
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
            Change::Defer { client_id, conn, will, due_ms } => {
                let Some(&(owner, revision)) = kept.get(&client_id) else { continue };
                if owner != conn || !shared.connected() {
                    continue;
                }
                let Ok(store) = shared.store().await else { continue };
                let value = encode(shared.incarnation, Due::At(due_ms), &will);
                match store.update(shared.key(&client_id), value, revision).await {
                    Ok(revision) => {
                        kept.insert(client_id, (conn, revision));
                    }
                    Err(e) => tracing::debug!(error = %e, "delayed will not kept cluster-wide"),
                }
            }
            Change::Settled(client_id) => {
                let Some((_, revision)) = kept.remove(&client_id) else { continue };
                if let (true, Ok(store)) = (shared.connected(), shared.store().await) {
                    let _ = store.delete_expect_revision(shared.key(&client_id), Some(revision)).await;
                }
            }
            Change::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// When a kept will is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Its client is connected: its delay (MQTT 5; zero for 3.1.1) after the connection is lost.
    AfterLoss(Duration),
    /// Its connection ended: at this wall-clock time (ms).
    At(u64),
}

impl Due {
    /// How long a survivor waits before it fires the will. A node that died is noticed
    /// `DEAD_AFTER` after its connections were lost: that much of a delay has passed already.
    fn wait(self) -> Duration {
        match self {
            Due::AfterLoss(delay) => delay.saturating_sub(DEAD_AFTER),
            Due::At(ms) => Duration::from_millis(ms.saturating_sub(now_wall_ms())),
        }
    }
}

/// A kept will: the incarnation of the node that kept it, when it is due (a tag, then the delay or the
/// time, in ms), and the message.
fn encode(incarnation: u64, due: Due, will: &Arc<Message>) -> Bytes {
    let message = wire::encode_message(will);
    let mut value = BytesMut::with_capacity(17 + message.len());
    value.put_u64(incarnation);
    match due {
        Due::AfterLoss(delay) => {
            value.put_u8(0);
            value.put_u64(delay.as_millis() as u64);
        }
        Due::At(ms) => {
            value.put_u8(1);
            value.put_u64(ms);
        }
    }
    value.put_slice(&message);
    value.freeze()
}

fn decode(value: &[u8]) -> Option<(u64, Due, Message)> {
    let incarnation = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let ms = u64::from_be_bytes(value.get(9..17)?.try_into().ok()?);
    let due = match value.get(8)? {
        0 => Due::AfterLoss(Duration::from_millis(ms)),
        _ => Due::At(ms),
    };
    Some((incarnation, due, wire::decode_message(&value[17..]).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    #[test]
    fn a_kept_will_reads_back_with_its_incarnation() {
        let will = Arc::new(Message::new("w/t".into(), "gone".into(), QoS::AtLeastOnce, true));
        let (incarnation, due, back) = decode(&encode(0xfeed, Due::At(77), &will)).unwrap();
        assert_eq!((incarnation, due), (0xfeed, Due::At(77)));
        let (_, due, _) = decode(&encode(1, Due::AfterLoss(Duration::from_secs(5)), &will)).unwrap();
        assert_eq!(due, Due::AfterLoss(Duration::from_secs(5)));
        assert_eq!(due.wait(), Duration::from_secs(3), "two of its seconds passed before the node was found dead");
        assert_eq!(
            (&back.topic[..], &back.payload[..], back.qos, back.retain),
            (&b"w/t"[..], &b"gone"[..], QoS::AtLeastOnce, true)
        );
        assert!(decode(b"short").is_none());
    }
}
