//! The store's files: one fjall database (an LSM tree with a write-ahead journal), chosen by
//! measurement over redb: four times the records per second in group commits of a few thousand, which
//! is what QoS 1 traffic to kept sessions asks of it (see BENCHMARKS.md, "Persistence"). Its journal is
//! checksummed: after a crash it replays up to the last whole commit; damage anywhere else is an
//! error at start, never an empty store.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::codec;
use super::{Change, HotSetting, Restored, StoreError};
use crate::session::Message;

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
    /// The numbers of kept QoS 2 deliveries past PUBREC (no value).
    released: Keyspace,
    /// Incoming QoS 2 packet ids awaiting PUBREL, keyed by [`incoming_key`] (no value).
    incoming: Keyspace,
    /// Hot settings and plugin states (see [`HotSetting`]).
    settings: Keyspace,
    path: PathBuf,
}

/// Reads kept deliveries by number.
pub struct QueuedReader {
    queued: Keyspace,
}

impl QueuedReader {
    /// The delivery kept under `id`, or `None` if it is not there (let go of) or its message expired.
    /// A record that cannot be read is logged and treated as gone: the rest of the queue goes on.
    pub fn load(&self, id: u64) -> Option<crate::session::Delivery> {
        let value = match self.queued.get(id.to_be_bytes()) {
            Ok(value) => value?,
            Err(e) => {
                tracing::error!(id, error = %e, "a queued message could not be read back from the store");
                return None;
            }
        };
        match codec::decode_queued(id, &value) {
            Ok((_, delivery)) => delivery,
            Err(reason) => {
                tracing::error!(id, %reason, "a queued message in the store cannot be read");
                None
            }
        }
    }
}

/// The messages read back so far, by a hash of their content, to share among the deliveries that
/// carry the same one.
#[derive(Default)]
struct Interned(std::collections::HashMap<u64, Vec<std::sync::Arc<Message>>>);

impl Interned {
    fn share(&mut self, message: std::sync::Arc<Message>) -> std::sync::Arc<Message> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&message.topic, &message.payload, message.qos, message.retain).hash(&mut hasher);
        let same = self.0.entry(hasher.finish()).or_default();
        let equal = |kept: &&std::sync::Arc<Message>| {
            kept.topic == message.topic
                && kept.payload == message.payload
                && (kept.qos, kept.retain) == (message.qos, message.retain)
                && kept.properties == message.properties
                && same_deadline(kept.expires_at, message.expires_at)
        };
        match same.iter().find(equal) {
            Some(kept) => kept.clone(),
            None => {
                same.push(message.clone());
                message
            }
        }
    }
}

/// Deadlines read back from one kept instant: each read takes its own clock, microseconds apart.
fn same_deadline(a: Option<std::time::Instant>, b: Option<std::time::Instant>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.max(b).duration_since(a.min(b)) < std::time::Duration::from_secs(1),
        _ => false,
    }
}

/// An incoming packet id's key: the client id, a byte no UTF-8 string holds, and the id, so that a
/// session's ids share a prefix and go with it.
fn incoming_key(client_id: &str, pkid: u16) -> Vec<u8> {
    let mut key = incoming_prefix(client_id);
    key.extend_from_slice(&pkid.to_be_bytes());
    key
}

fn incoming_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 3);
    key.extend_from_slice(client_id.as_bytes());
    key.push(0xFF);
    key
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
        let released = db.keyspace("released", KeyspaceCreateOptions::default).map_err(|e| failed(&e))?;
        let incoming = db.keyspace("incoming", KeyspaceCreateOptions::default).map_err(|e| failed(&e))?;
        let settings = db.keyspace("settings", KeyspaceCreateOptions::default).map_err(|e| failed(&e))?;
        let path = path.to_path_buf();
        Ok(Engine { db, meta, retained, sessions, queued, released, incoming, settings, path })
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
        // A message routed to many kept sessions is kept once per session; read back, they share it
        // again, as they did before the restart (a million queued copies of ten thousand messages
        // would otherwise take a million allocations).
        let mut interned = Interned::default();
        for entry in self.queued.iter() {
            let (key, value) = entry.into_inner().map_err(|e| corrupt("the queued messages".into(), e.to_string()))?;
            let id = <[u8; 8]>::try_from(&*key)
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt("the queued messages".into(), format!("a key of {} bytes", key.len())))?;
            match codec::decode_queued(id, &value) {
                Ok((client_id, Some(mut delivery))) => {
                    delivery.message = interned.share(delivery.message);
                    restored.queued.push((client_id, delivery));
                }
                Ok((_, None)) => restored.expired.push(id),
                Err(reason) => return Err(corrupt(format!("queued message {id}"), reason)),
            }
        }
        for entry in self.released.iter() {
            let key = entry.key().map_err(|e| corrupt("the released deliveries".into(), e.to_string()))?;
            let id = <[u8; 8]>::try_from(&*key)
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt("the released deliveries".into(), format!("a key of {} bytes", key.len())))?;
            restored.released.insert(id);
        }
        for entry in self.incoming.iter() {
            let key = entry.key().map_err(|e| corrupt("the incoming QoS 2 packet ids".into(), e.to_string()))?;
            let bad = || corrupt("the incoming QoS 2 packet ids".into(), format!("a key of {} bytes", key.len()));
            let (client_id, pkid) = match key.len().checked_sub(3).map(|n| key.split_at(n)) {
                Some((client_id, [0xFF, hi, lo])) => (client_id, u16::from_be_bytes([*hi, *lo])),
                _ => return Err(bad()),
            };
            let client_id = std::str::from_utf8(client_id).map_err(|_| bad())?;
            restored.awaiting_rel.push((client_id.into(), pkid));
        }
        for entry in self.settings.iter() {
            let (key, value) = entry.into_inner().map_err(|e| corrupt("the hot settings".into(), e.to_string()))?;
            let (key, value) = (String::from_utf8_lossy(&key), String::from_utf8_lossy(&value));
            match HotSetting::parse(&key, &value) {
                Some(setting) => restored.hot_settings.push(setting),
                None => tracing::warn!(%key, "a kept setting this broker does not know; left alone"),
            }
        }
        restored.hot_settings.sort_by_key(|setting| match setting {
            HotSetting::Config { .. } => 0,
            HotSetting::PluginConfig { .. } => 1,
            HotSetting::PluginActive { .. } => 2,
        });
        Ok((restored, seq))
    }

    /// What reads kept deliveries back, for sessions whose long queues wait in the store.
    pub fn queued_reader(&self) -> QueuedReader {
        QueuedReader { queued: self.queued.clone() }
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
        // Incoming ids set in this batch: a session dropped later in it takes them too, though a read
        // of the keyspace does not see them yet.
        let mut awaiting: Vec<Vec<u8>> = Vec::new();
        for change in changes {
            match change {
                Change::RetainedSet(message) => {
                    batch.insert(&self.retained, message.topic_str(), codec::encode_retained(message));
                }
                Change::RetainedCleared(topic) => batch.remove(&self.retained, &**topic),
                Change::SessionSaved(record) => {
                    batch.insert(&self.sessions, &*record.client_id, codec::encode_session(record));
                }
                Change::SessionDropped(client_id) => {
                    batch.remove(&self.sessions, &**client_id);
                    let prefix = incoming_prefix(client_id);
                    for key in self.incoming.prefix(&prefix) {
                        batch.remove(&self.incoming, key.key().map_err(failed)?);
                    }
                    for key in awaiting.iter().filter(|key| key.starts_with(&prefix)) {
                        batch.remove(&self.incoming, key.clone());
                    }
                }
                Change::QueuedAdd { client_id, id, delivery } => {
                    batch.insert(&self.queued, id.to_be_bytes(), codec::encode_queued(client_id, delivery));
                }
                Change::QueuedRemove(ids) => {
                    for id in ids {
                        batch.remove(&self.queued, id.to_be_bytes());
                    }
                }
                Change::Released(id) => batch.insert(&self.released, id.to_be_bytes(), []),
                Change::ReleasedRemove(ids) => {
                    for id in ids {
                        batch.remove(&self.released, id.to_be_bytes());
                    }
                }
                Change::AwaitingRel { client_id, pkid } => {
                    let key = incoming_key(client_id, *pkid);
                    batch.insert(&self.incoming, &key, []);
                    awaiting.push(key);
                }
                Change::RelCompleted { client_id, pkid } => {
                    batch.remove(&self.incoming, incoming_key(client_id, *pkid))
                }
                Change::HotSetting { key, value } => batch.insert(&self.settings, key.as_str(), value.as_str()),
            }
        }
        batch.commit().map_err(failed)
    }
}
