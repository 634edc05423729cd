//! The store's files: one fjall database (an LSM tree with a write-ahead journal), chosen by
//! measurement over redb: four times the records per second in group commits of a few thousand, which
//! is what QoS 1 traffic to kept sessions asks of it (see BENCHMARKS.md, "Persistence"). Its journal is
//! checksummed: after a crash it replays up to the last whole commit; damage anywhere else is an
//! error at start, never an empty store.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::codec;
use super::{Change, Restored, StoreError};

/// The directory under `data_dir` that holds the database.
pub const DIR: &str = "store";

/// The layout's version, kept in the `meta` keyspace.
const FORMAT: &[u8] = b"1";

pub struct Engine {
    db: Database,
    /// The layout's version, and the number of the last change written (`seq`).
    meta: Keyspace,
    /// Retained messages by topic.
    retained: Keyspace,
    /// Persistent sessions by client id.
    sessions: Keyspace,
    /// Deliveries kept for persistent sessions, by number (big-endian, so in the order kept).
    queued: Keyspace,
    path: PathBuf,
}

impl Engine {
    pub fn open(path: &Path) -> Result<Engine, StoreError> {
        let failed = |e: &dyn std::fmt::Display| StoreError::Open { path: path.to_path_buf(), reason: e.to_string() };
        let db = Database::builder(path).open().map_err(|e| failed(&e))?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(|e| failed(&e))?;
        match meta.get("format").map_err(|e| failed(&e))? {
            None => {
                meta.insert("format", FORMAT).map_err(|e| failed(&e))?;
                db.persist(PersistMode::SyncAll).map_err(|e| failed(&e))?;
            }
            Some(format) if &*format == FORMAT => {}
            Some(other) => {
                let other = String::from_utf8_lossy(&other).into_owned();
                return Err(failed(&format!("layout version {other}; this broker reads version 1")));
            }
        }
        let retained = db.keyspace("retained", KeyspaceCreateOptions::default).map_err(|e| failed(&e))?;
        let sessions = db.keyspace("sessions", KeyspaceCreateOptions::default).map_err(|e| failed(&e))?;
        let queued = db.keyspace("queued", KeyspaceCreateOptions::default).map_err(|e| failed(&e))?;
        Ok(Engine { db, meta, retained, sessions, queued, path: path.to_path_buf() })
    }

    /// Everything kept, read back, and the number of the last change in it.
    pub fn restore(&self) -> Result<(Restored, u64), StoreError> {
        let corrupt = |what: String, reason: String| StoreError::Corrupt { path: self.path.clone(), what, reason };
        let seq = match self.meta.get("seq").map_err(|e| corrupt("the change count".into(), e.to_string()))? {
            None => 0,
            Some(bytes) => <[u8; 8]>::try_from(&*bytes)
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt("the change count".into(), format!("{} bytes", bytes.len())))?,
        };
        let mut restored = Restored::default();
        for entry in self.retained.iter() {
            let (topic, value) =
                entry.into_inner().map_err(|e| corrupt("the retained messages".into(), e.to_string()))?;
            let topic = std::str::from_utf8(&topic)
                .map_err(|_| corrupt("the retained messages".into(), "a topic that is not UTF-8".into()))?;
            match codec::decode_retained(topic, &value) {
                Ok(Some(message)) => restored.retained.push(message),
                // Expired while the broker was down.
                Ok(None) => {}
                Err(reason) => return Err(corrupt(format!("the retained message on {topic:?}"), reason)),
            }
        }
        for entry in self.sessions.iter() {
            let (client_id, value) = entry.into_inner().map_err(|e| corrupt("the sessions".into(), e.to_string()))?;
            let client_id = std::str::from_utf8(&client_id)
                .map_err(|_| corrupt("the sessions".into(), "a client id that is not UTF-8".into()))?;
            let record = codec::decode_session(client_id, &value)
                .map_err(|reason| corrupt(format!("the session of {client_id:?}"), reason))?;
            restored.sessions.push(record);
        }
        for entry in self.queued.iter() {
            let (key, value) = entry.into_inner().map_err(|e| corrupt("the queued messages".into(), e.to_string()))?;
            let id = <[u8; 8]>::try_from(&*key)
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt("the queued messages".into(), format!("a key of {} bytes", key.len())))?;
            match codec::decode_queued(id, &value) {
                Ok((client_id, Some(delivery))) => restored.queued.push((client_id, delivery)),
                Ok((_, None)) => restored.expired.push(id),
                Err(reason) => return Err(corrupt(format!("queued message {id}"), reason)),
            }
        }
        Ok((restored, seq))
    }

    /// Writes `changes`, the last of which is numbered `seq`, as one atomic batch: synced to disk if
    /// `sync`, else handed to the OS (which keeps it through a crash of the broker, not of the machine).
    pub fn apply(&self, changes: &[Change], seq: u64, sync: bool) -> Result<(), StoreError> {
        let failed = |e: fjall::Error| StoreError::Write(format!("{}: {e}", self.path.display()));
        let mode = if sync { PersistMode::SyncAll } else { PersistMode::Buffer };
        if changes.is_empty() {
            return self.db.persist(mode).map_err(failed);
        }
        let mut batch = self.db.batch().durability(Some(mode));
        batch.insert(&self.meta, "seq", seq.to_be_bytes());
        for change in changes {
            match change {
                Change::RetainedSet(message) => {
                    batch.insert(&self.retained, message.topic_str(), codec::encode_retained(message));
                }
                Change::RetainedCleared(topic) => batch.remove(&self.retained, &**topic),
                Change::SessionSaved(record) => {
                    batch.insert(&self.sessions, &*record.client_id, codec::encode_session(record));
                }
                Change::SessionDropped(client_id) => batch.remove(&self.sessions, &**client_id),
                Change::QueuedAdd { client_id, id, delivery } => {
                    batch.insert(&self.queued, id.to_be_bytes(), codec::encode_queued(client_id, delivery));
                }
                Change::QueuedRemove(ids) => {
                    for id in ids {
                        batch.remove(&self.queued, id.to_be_bytes());
                    }
                }
            }
        }
        batch.commit().map_err(failed)
    }
}
