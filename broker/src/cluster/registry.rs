//! Who has which client id, cluster-wide: a JetStream key-value bucket, `midge-sessions`, from client
//! id to the node that holds its connection or parked session. A connect claims its id by
//! compare-and-set; when another node has it, that node is asked to let go (its client is told the
//! session was taken over) before the claim takes the key from the revision it saw. Two connects of one
//! id on two nodes at once race on that revision, and the loser tries again against the winner: in the
//! end one holds it, as with two connects on one node. A dead node answers nothing (NATS says "no
//! responders" at once) and loses its keys to whoever asks.
//!
//! A node remembers the revision of each id it claimed. Asked to let go, it forgets the claim before it
//! looks for the client, and a connect checks its claim again once its client is registered: so a
//! request that comes while a connect is half-way is not missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{oneshot, OnceCell};

use super::bucket::{self, key, nats};
use super::{handover, subject, ClusterError};
use crate::router::RouterHandle;
use crate::session::ClientId;

const BUCKET: &str = "midge-sessions";
/// How long a claim may take in all before the connect is told the cluster cannot answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the holder of an id has to let it go.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the holder waits for its client's connection to end before it hands the session over.
/// Shorter than `RELEASE_TIMEOUT`, so that the answer is still awaited.
const HANDOVER_WAIT: Duration = Duration::from_millis(800);
/// Claims that lose the race for a revision try again, this many times in all.
const ATTEMPTS: usize = 5;

pub struct Registry {
    /// The data connection, and JetStream through it.
    data: Client,
    js: jetstream::Context,
    store: OnceCell<kv::Store>,
    /// The node's name, the value of its keys.
    node: String,
    /// The control connection, which asks other nodes to let go.
    control: Client,
    /// The revision of each key this node claimed.
    claims: Mutex<HashMap<ClientId, u64>>,
    /// Sessions another node asked for whose connection is ending here: each is handed over once it
    /// has parked.
    handing: Mutex<HashMap<ClientId, oneshot::Sender<Option<Bytes>>>>,
}

/// What a claim brings: its revision, and the session the previous holder handed over, if it was
/// asked for and there was one.
pub struct Claimed {
    pub revision: u64,
    pub session: Option<Bytes>,
    /// The id was this node's, which did not answer (it is gone).
    pub from_silent_node: Option<String>,
}

/// The subject on which `node` is asked to let client ids go.
fn release_subject(node: &str) -> String {
    format!("midge.release.{}", subject::token(node))
}

impl Registry {
    pub fn new(data: Client, control: Client, node: &str) -> Registry {
        Registry {
            js: jetstream::new(data.clone()),
            data,
            store: OnceCell::new(),
            node: node.to_string(),
            control,
            claims: Mutex::new(HashMap::new()),
            handing: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket, made on first use (NATS may not have been there when the node started).
    async fn store(&self) -> Result<&kv::Store, ClusterError> {
        self.store.get_or_try_init(|| bucket::open(&self.js, BUCKET)).await
    }

    /// Makes this node the holder of `client_id`, asking the node that had it to let go; the
    /// revision of the claim.
    pub async fn claim(&self, client_id: &ClientId, session: bool) -> Result<Claimed, ClusterError> {
        // Away from NATS, say so at once rather than make every connect wait out the timeout.
        if self.data.connection_state() != State::Connected {
            return Err(ClusterError::Nats("not connected".into()));
        }
        let claimed = tokio::time::timeout(CLAIM_TIMEOUT, self.try_claim(client_id, session)).await;
        let claimed =
            claimed.map_err(|_| ClusterError::Nats("the session registry did not answer in time".into()))??;
        self.lock().insert(client_id.clone(), claimed.revision);
        Ok(claimed)
    }

    async fn try_claim(&self, client_id: &ClientId, want: bool) -> Result<Claimed, ClusterError> {
        let store = self.store().await?;
        let key = key(client_id);
        for _ in 0..ATTEMPTS {
            match store.create(&key, Bytes::from(self.node.clone())).await {
                Ok(revision) => return Ok(Claimed { revision, session: None, from_silent_node: None }),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(nats(e)),
            }
            let Some(entry) = store.entry(&key).await.map_err(nats)? else { continue };
            let holder = String::from_utf8_lossy(&entry.value);
            if entry.operation != Operation::Put {
                // Deleted meanwhile: `create` takes it next time round.
                continue;
            }
            if holder == self.node {
                return Ok(Claimed { revision: entry.revision, session: None, from_silent_node: None });
            }
            let answer = self.ask_release(&holder, client_id, entry.revision, want).await;
            match store.update(&key, Bytes::from(self.node.clone()), entry.revision).await {
                Ok(revision) => {
                    let from_silent_node = answer.is_none().then(|| holder.to_string());
                    let session = answer.filter(|session| !session.is_empty());
                    return Ok(Claimed { revision, session, from_silent_node });
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(nats(e)),
            }
        }
        Err(ClusterError::Nats(format!("client id still contended after {ATTEMPTS} claims")))
    }

    /// Asks `holder` to let the id go, and for its session if `want`: its answer (the session, or
    /// empty), or `None` if it did not answer. A dead or silent holder loses the id anyway.
    async fn ask_release(&self, holder: &str, client_id: &str, revision: u64, want: bool) -> Option<Bytes> {
        let body = Bytes::from(format!("{revision}\n{}\n{client_id}", u8::from(want)));
        let asked = tokio::time::timeout(RELEASE_TIMEOUT, self.control.request(release_subject(holder), body)).await;
        match asked {
            Ok(Ok(answer)) => Some(answer.payload),
            _ => {
                tracing::info!(holder, client_id = %client_id.escape_debug(), "holder of a client id did not answer: taking it");
                None
            }
        }
    }

    /// Whether the claim of `revision` still stands (no other node took the id since).
    pub fn holds(&self, client_id: &str, revision: u64) -> bool {
        self.lock().get(client_id) == Some(&revision)
    }

    /// Gives the id up (its session ended here), unless another node took it meanwhile.
    pub async fn release(&self, client_id: &str, revision: u64) {
        {
            let mut claims = self.lock();
            if claims.get(client_id) != Some(&revision) {
                return;
            }
            claims.remove(client_id);
        }
        if let Ok(store) = self.store().await {
            if let Err(e) = store.delete_expect_revision(key(client_id), Some(revision)).await {
                tracing::debug!(client_id = %client_id.escape_debug(), error = %e, "client id not released");
            }
        }
    }

    /// The client ids held by nodes that `gone` says are gone: each with its holder and the revision
    /// of its claim.
    pub async fn held_by_gone(
        &self,
        gone: impl Fn(&str) -> bool,
    ) -> Result<HashMap<ClientId, (String, u64)>, ClusterError> {
        let store = self.store().await?;
        let entries = bucket::entries(store, ">", |entry| std::str::from_utf8(&entry.value).is_ok_and(&gone)).await?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| {
                let client_id = bucket::text(&entry.key)?;
                let holder = String::from_utf8(entry.value.to_vec()).ok()?;
                Some((ClientId::from(client_id.as_str()), (holder, entry.revision)))
            })
            .collect())
    }

    /// Drops the claim of `revision` on `client_id`, unless a node claimed it since.
    pub async fn forget(&self, client_id: &str, revision: u64) {
        if let Ok(store) = self.store().await {
            if let Err(e) = store.delete_expect_revision(key(client_id), Some(revision)).await {
                tracing::debug!(client_id = %client_id.escape_debug(), error = %e, "claim not forgotten");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, u64>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers other nodes' requests to let ids go: forgets the claim, then tells the client, if it is
    /// here, that its session was taken over.
    pub async fn answer_releases(
        self: Arc<Self>,
        router: RouterHandle,
    ) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
        let mut requests = self.control.subscribe(release_subject(&self.node)).await.map_err(nats)?;
        let registry = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let text = String::from_utf8_lossy(&request.payload);
                let mut parts = text.splitn(3, '\n');
                let (Some(revision), Some(want), Some(client_id)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let Ok(revision) = revision.parse::<u64>() else { continue };
                // A claim newer than the one the asker saw is this node's again: its client stays.
                let newer = {
                    let mut claims = registry.lock();
                    match claims.get(client_id) {
                        Some(held) if *held > revision => true,
                        Some(_) => claims.remove(client_id).is_none(),
                        None => false,
                    }
                };
                let (registry, router, client_id) = (registry.clone(), router.clone(), client_id.to_string());
                let want = want == "1";
                // Each in its own task: a handover waits for its connection to end.
                tokio::spawn(async move {
                    let session = match (newer, want) {
                        (true, _) => None,
                        (false, true) => registry.hand_over(&router, &client_id).await,
                        (false, false) => {
                            router.taken_over_elsewhere(&client_id);
                            None
                        }
                    };
                    if let Some(reply) = request.reply {
                        let _ = registry.control.publish(reply, session.unwrap_or_default()).await;
                    }
                });
            }
        }))
    }

    /// After a restart: the sessions this node kept on disk are its own only where the registry still
    /// says so (or says nothing: they are claimed again). One another node took while this one was down
    /// goes on there, and is dropped here. Returns how many were dropped.
    pub async fn reconcile(&self, router: &RouterHandle) -> Result<usize, ClusterError> {
        let store = self.store().await?;
        let mut dropped = 0;
        for client_id in router.parked_ids() {
            let key = key(&client_id);
            let holder = match store.entry(&key).await.map_err(nats)? {
                Some(entry) if entry.operation == Operation::Put => Some((entry.value, entry.revision)),
                _ => None,
            };
            match holder {
                Some((holder, revision)) if holder == self.node.as_bytes() => {
                    self.lock().insert(client_id, revision);
                }
                Some(_) => {
                    router.taken_over_elsewhere(&client_id);
                    dropped += 1;
                }
                None => match store.create(&key, Bytes::from(self.node.clone())).await {
                    Ok(revision) => {
                        self.lock().insert(client_id, revision);
                    }
                    // Taken meanwhile by a connect elsewhere: its node has it now.
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                        router.taken_over_elsewhere(&client_id);
                        dropped += 1;
                    }
                    Err(e) => return Err(nats(e)),
                },
            }
        }
        Ok(dropped)
    }

    /// Ends the client's connection here, if it is online, and gives up its kept session, encoded
    /// for the node that asked.
    async fn hand_over(&self, router: &RouterHandle, client_id: &str) -> Option<Bytes> {
        let (waiter, handed) = oneshot::channel();
        self.handing().insert(client_id.into(), waiter);
        if router.end_taken_over(client_id) {
            // Its connection parks the session as it ends, then calls `taken_over`.
            let handed = tokio::time::timeout(HANDOVER_WAIT, handed).await;
            self.handing().remove(client_id);
            return handed.ok().and_then(Result::ok).flatten();
        }
        self.handing().remove(client_id);
        handed_over(router, client_id)
    }

    /// A connection here ended as taken over by another node: its session, parked, goes to that node
    /// if it asked for it, else it is dropped.
    pub fn taken_over(&self, router: &RouterHandle, client_id: &str) {
        match self.handing().remove(client_id) {
            Some(waiter) => {
                let session = handed_over(router, client_id);
                if let Err(Some(_)) = waiter.send(session) {
                    // Asked too late: the session is dropped rather than left here.
                    tracing::info!(client_id = %client_id.escape_debug(), "session not handed over in time");
                }
            }
            None => {
                router.taken_over_elsewhere(client_id);
            }
        }
    }

    fn handing(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, oneshot::Sender<Option<Bytes>>>> {
        self.handing.lock().unwrap_or_else(|e| e.into_inner())
    }
}
/// The session parked here for `client_id`, taken out of the router and encoded for another node.
fn handed_over(router: &RouterHandle, client_id: &str) -> Option<Bytes> {
    router.hand_over(client_id).map(|(record, session)| handover::encode(&record, &session))
}
