//! Where the other nodes find a persistent session when its node is gone: each node writes the store's
//! record of each of its persistent sessions (subscriptions, expiry, who) to the key-value bucket
//! `midge-session-records` as it changes, through one task, in order. The node a client connects to
//! takes the record from there when the node that held the session does not answer; the messages
//! that were queued there come back only with that node.
//!
//! A node deletes a record only at the revision it wrote last, so that it never deletes the record
//! of the node its session moved to.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::connection::State;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::{jetstream, Client};
use bytes::Bytes;
use tokio::sync::{mpsc, OnceCell};

use super::bucket::{self, key};
use super::ClusterError;
use crate::session::ClientId;
use crate::store::{decode_session, encode_session, SessionRecord};

const BUCKET: &str = "midge-session-records";

/// A record written (`Some`) or gone (`None`), as the router tells the link.
pub type Change = (ClientId, Option<Bytes>);

pub fn encode(record: Option<&SessionRecord>) -> Option<Bytes> {
    record.map(|record| Bytes::from(encode_session(record)))
}

pub struct Records {
    data: Client,
    js: jetstream::Context,
    store: OnceCell<kv::Store>,
}

impl Records {
    /// Starts writing the changes the router makes.
    pub fn start(data: Client, changes: mpsc::UnboundedReceiver<Change>) -> Arc<Records> {
        let records = Arc::new(Records { js: jetstream::new(data.clone()), data, store: OnceCell::new() });
        tokio::spawn(records.clone().write(changes));
        records
    }

    async fn store(&self) -> Result<&kv::Store, ClusterError> {
        self.store.get_or_try_init(|| bucket::open(&self.js, BUCKET)).await
    }

    /// The record another node kept of `client_id`'s session, if any.
    pub async fn find(&self, client_id: &str) -> Option<SessionRecord> {
        if self.data.connection_state() != State::Connected {
            return None;
        }
        let store = self.store().await.ok()?;
        let entry = store.entry(key(client_id)).await.ok()??;
        if entry.operation != Operation::Put {
            return None;
        }
        match decode_session(client_id, &entry.value) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(client_id = %client_id.escape_debug(), error = %e, "a session's record unreadable");
                None
            }
        }
    }

    /// Deletes the record of `client_id`'s session, whoever wrote it: its client started afresh.
    pub async fn discard(&self, client_id: &str) {
        if let Ok(store) = self.store().await {
            let _ = store.delete(key(client_id)).await;
        }
    }

    /// The records of the sessions `wanted` picks by client id, each with its revision.
    pub async fn of(&self, wanted: impl Fn(&str) -> bool) -> Result<Vec<(SessionRecord, u64)>, ClusterError> {
        let store = self.store().await?;
        let entries =
            bucket::entries(store, ">", |entry| bucket::text(&entry.key).is_some_and(|id| wanted(&id))).await?;
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(client_id) = bucket::text(&entry.key) else { continue };
            match decode_session(&client_id, &entry.value) {
                Ok(record) => records.push((record, entry.revision)),
                Err(e) => {
                    tracing::warn!(client_id = %client_id.escape_debug(), error = %e, "a session's record unreadable")
                }
            }
        }
        Ok(records)
    }

    /// Writes `record` over the revision it was read at; the new revision, or `None` if it changed
    /// meanwhile.
    pub async fn rewrite(&self, record: &SessionRecord, revision: u64) -> Option<u64> {
        let store = self.store().await.ok()?;
        let value = Bytes::from(encode_session(record));
        store.update(key(&record.client_id), value, revision).await.ok()
    }

    /// Deletes the record of `client_id` at `revision`; whether it was still that one.
    pub async fn remove(&self, client_id: &str, revision: u64) -> bool {
        let Ok(store) = self.store().await else { return false };
        store.delete_expect_revision(key(client_id), Some(revision)).await.is_ok()
    }

    async fn write(self: Arc<Self>, mut changes: mpsc::UnboundedReceiver<Change>) {
        // The revision this node wrote last, by client id.
        let mut written: HashMap<ClientId, u64> = HashMap::new();
        while let Some((client_id, record)) = changes.recv().await {
            if self.data.connection_state() != State::Connected {
                continue;
            }
            let store = match self.store().await {
                Ok(store) => store,
                Err(e) => {
                    tracing::debug!(error = %e, "session record not written");
                    continue;
                }
            };
            let result = match record {
                Some(record) => store.put(key(&client_id), record).await.map_err(|e| e.to_string()).map(|revision| {
                    written.insert(client_id, revision);
                }),
                None => match written.remove(&client_id) {
                    Some(revision) => {
                        let deleted = store.delete_expect_revision(key(&client_id), Some(revision)).await;
                        deleted.map_err(|e| e.to_string())
                    }
                    None => Ok(()),
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "session record not written");
            }
        }
    }
}
