//! Persistence: what the broker keeps on its own disk, so that a restart, or a crash, loses nothing
//! it has acknowledged: the retained messages, and the persistent sessions with their subscriptions,
//! expiry and every QoS 1/2 message routed to them until their client acknowledges it, with what
//! exactly once needs of their QoS 2 flows: which deliveries are past PUBREC (their PUBREL is sent
//! again, not their PUBLISH) and which incoming packet ids await a PUBREL (a resent PUBLISH is not
//! routed twice). A kept delivery's packet id follows from its store number, so it is the same after a
//! restart without being written. And what the management API changed ([`HotSetting`]).
//!
//! The router records each change in a [`Journal`] as it makes it, under its lock and without waiting:
//! a numbered entry into a channel. The [`writer`] task takes what has gathered, writes it in one
//! transaction and commits it (group commit), then says how far the store is durable. A connection
//! whose publishes made changes holds their acknowledgements until the store is durable that far
//! ([`Durable::reached`]): after a crash, whatever a publisher was told is kept, is.
//!
//! - `engine.rs`: the files (fjall) and what is in them; `codec.rs`: how a record is written as bytes;
//! - `writer.rs`: the task that commits, as the sync policy says.

mod codec;
mod confirmed;
mod engine;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::session::{ClientId, Delivery, Message};

pub use codec::{
    decode_queued, decode_retained_message, decode_session, encode_queued, encode_retained, encode_session, get_bytes,
    now_wall_ms, put_bytes, SessionRecord,
};

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// Each change is committed and synced before it is acknowledged, as soon as the previous
    /// commit is done (changes that arrive meanwhile share the next one).
    EveryMessage,
    /// Changes are gathered for `sync_interval_ms` and committed and synced together; they are
    /// acknowledged after that commit. A commit that a full QoS 2 window waits for is not put off,
    /// nor one that a silent client waits for beyond a fifth of the interval (see [`Journal::hurry`]).
    Interval,
    /// Committed without waiting for the disk; synced once a second and at shutdown. Acknowledged at
    /// once: a crash loses up to the last second.
    None,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub sync: SyncPolicy,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot open the store {path}: {reason}. Midge does not start on a store it cannot read; move \
         the file away to start with an empty one"
    )]
    Open { path: PathBuf, reason: String },
    #[error("the store {path} holds a record it cannot read ({what}): {reason}")]
    Corrupt { path: PathBuf, what: String, reason: String },
    #[error(
        "the store {path} ends at change {found}, but change {confirmed} was confirmed on disk: it was \
         damaged or cut short. Midge does not start without writes it acknowledged; restore the data \
         directory from a backup, or move it away to start with an empty one"
    )]
    Short { path: PathBuf, found: u64, confirmed: u64 },
    #[error("cannot read or write {path}: {source}")]
    Confirmed { path: PathBuf, source: std::io::Error },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("cannot start the store's writer thread: {0}")]
    Thread(std::io::Error),
}

/// A change to what is kept, in the order the router made it.
#[derive(Debug)]
pub enum Change {
    RetainedSet(Arc<Message>),
    RetainedCleared(Box<str>),
    /// A persistent session as it now is (created, subscribed, parked, resumed).
    SessionSaved(Box<SessionRecord>),
    /// A persistent session ended (expired, discarded by a clean start, or no longer persistent).
    SessionDropped(ClientId),
    /// A delivery kept for a persistent session, under its number `id`, until acknowledged.
    QueuedAdd {
        client_id: ClientId,
        id: u64,
        delivery: Delivery,
    },
    /// Kept deliveries done with.
    QueuedRemove(Vec<u64>),
    /// A kept QoS 2 delivery past PUBREC, under its number: after a restart its PUBREL is sent again.
    Released(u64),
    /// Released deliveries since done with (the writer adds this, knowing which were released).
    ReleasedRemove(Vec<u64>),
    /// An incoming QoS 2 message of a kept session, routed, awaiting its PUBREL: should its PUBLISH
    /// come again, even after a restart, it is acknowledged and not routed twice.
    AwaitingRel {
        client_id: ClientId,
        pkid: u16,
    },
    /// Its PUBREL came (or it was given up): the packet id is free for a new message.
    RelCompleted {
        client_id: ClientId,
        pkid: u16,
    },
    /// A hot setting or plugin state changed through the management API, as [`HotSetting`] names it,
    /// so that a broker restarted without its sidecar comes back as it was.
    HotSetting {
        key: String,
        value: String,
    },
}

/// What the broker keeps of what the management API changed, by key in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HotSetting {
    /// A key of `configs` (`app`, `key`) and its value.
    Config { app: String, key: String, value: String },
    /// A plugin's configuration, whole (passwords hashed), as JSON.
    PluginConfig { name: String, config: std::collections::BTreeMap<String, String> },
    /// Whether a plugin is on.
    PluginActive { name: String, active: bool },
}

impl HotSetting {
    /// As a change to record.
    pub fn change(&self) -> Change {
        let (key, value) = match self {
            HotSetting::Config { app, key, value } => (format!("config/{app}/{key}"), value.clone()),
            HotSetting::PluginConfig { name, config } => {
                (format!("plugin_config/{name}"), serde_json::to_string(config).unwrap_or_default())
            }
            HotSetting::PluginActive { name, active } => (format!("plugin/{name}"), active.to_string()),
        };
        Change::HotSetting { key, value }
    }

    /// Read back from the store: `None` for a key this broker does not know.
    pub(super) fn parse(key: &str, value: &str) -> Option<HotSetting> {
        let (kind, rest) = key.split_once('/')?;
        match kind {
            "config" => {
                let (app, key) = rest.split_once('/')?;
                Some(HotSetting::Config { app: app.into(), key: key.into(), value: value.into() })
            }
            "plugin_config" => {
                Some(HotSetting::PluginConfig { name: rest.into(), config: serde_json::from_str(value).ok()? })
            }
            "plugin" => Some(HotSetting::PluginActive { name: rest.into(), active: value.parse().ok()? }),
            _ => None,
        }
    }
}

enum Entry {
    Change(u64, Change),
    /// Commit and sync everything before this, then answer.
    Flush(oneshot::Sender<()>),
    /// What comes until the matching `End` is committed in one batch (see [`Journal::together`]).
    Begin,
    End,
}

/// What the store held when the broker started.
#[derive(Debug, Default)]
pub struct Restored {
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<SessionRecord>,
    /// Kept deliveries by session, in the order they were kept.
    pub queued: Vec<(ClientId, Delivery)>,
    /// Kept deliveries that expired while the broker was down.
    pub expired: Vec<u64>,
    /// Kept QoS 2 deliveries past PUBREC.
    pub released: std::collections::HashSet<u64>,
    /// Incoming QoS 2 packet ids awaiting PUBREL, by session.
    pub awaiting_rel: Vec<(ClientId, u16)>,
    /// What the management API changed: configs first, then plugin configs, then plugin switches (so
    /// an auth plugin comes on with its users).
    pub hot_settings: Vec<HotSetting>,
}

/// The store, open: the router's journal, the connections' view of durability, and the writer's end.
pub struct Store {
    journal: Journal,
    durable: Durable,
    spill: Arc<SpillReader>,
    path: PathBuf,
}

/// Where kept sessions' long queues wait: deliveries are read back by number once committed.
struct SpillReader {
    reader: engine::QueuedReader,
    durable: Durable,
}

impl std::fmt::Debug for SpillReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpillReader")
    }
}

impl crate::session::Spill for SpillReader {
    fn committed(&self) -> u64 {
        self.durable.progress.borrow().seq
    }

    fn load(&self, ids: &[u64]) -> Vec<Option<Delivery>> {
        ids.iter().map(|id| self.reader.load(*id)).collect()
    }
}

/// Where the writer has got to: every change numbered up to `seq` is on disk, unless the store has
/// failed, in which case nothing after `seq` will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Progress {
    seq: u64,
    failed: bool,
}

impl Store {
    /// Opens (or creates) the store in `config.dir`, reads everything in it and starts the writer.
    pub fn open(config: &StoreConfig) -> Result<(Store, Restored), StoreError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| StoreError::Dir { path: config.dir.clone(), source })?;
        let path = config.dir.join(engine::DIR);
        let engine = engine::Engine::open(&path)?;
        let (restored, seq) = engine.restore()?;
        let confirmed = confirmed::read(&config.dir)
            .map_err(|source| StoreError::Confirmed { path: confirmed::path(&config.dir), source })?;
        if let Some(confirmed) = confirmed.filter(|confirmed| *confirmed > seq) {
            return Err(StoreError::Short { path, found: seq, confirmed });
        }
        let mark = confirmed::Mark::open(&config.dir)
            .map_err(|source| StoreError::Confirmed { path: confirmed::path(&config.dir), source })?;
        let reader = engine.queued_reader();
        let (sender, receiver) = mpsc::unbounded_channel();
        let (progress, watched) = watch::channel(Progress { seq, failed: false });
        let hurry = Arc::new(Notify::new());
        let writer = writer::Writer {
            hurry: hurry.clone(),
            engine,
            mark,
            sync: config.sync,
            interval: config.interval,
            released: restored.released.clone(),
        };
        // A thread of its own: each commit is a blocking write and sync, and handing it to tokio's
        // blocking pool and back cost two thread wake-ups per commit (26-35 µs of ~350).
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(StoreError::Thread)?;
        std::thread::Builder::new()
            .name("midge-store".into())
            .spawn(move || runtime.block_on(writer.run(receiver, progress)))
            .map_err(StoreError::Thread)?;
        let recorded = Arc::new(AtomicU64::new(seq));
        let waits = config.sync != SyncPolicy::None;
        // Numbers go on from where the store left off.
        let journal = Journal {
            inner: Arc::new(std::sync::Mutex::new(Numbering { sender, next: seq })),
            recorded: recorded.clone(),
            waits,
            hurry,
            quiet_before_hurry: (config.sync == SyncPolicy::Interval).then(|| config.interval / 5),
        };
        let durable = Durable { progress: watched, recorded };
        let spill = Arc::new(SpillReader { reader, durable: durable.clone() });
        tracing::info!(
            path = %path.display(),
            retained = restored.retained.len(),
            sessions = restored.sessions.len(),
            queued = restored.queued.len(),
            awaiting_rel = restored.awaiting_rel.len(),
            "store opened"
        );
        Ok((Store { journal, durable, spill, path }, restored))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The router's end, to record changes with.
    pub fn journal(&self) -> Journal {
        self.journal.clone()
    }

    pub fn durable(&self) -> Durable {
        self.durable.clone()
    }

    /// Where kept sessions' long queues wait.
    pub fn spill(&self) -> Arc<dyn crate::session::Spill> {
        self.spill.clone()
    }
}

/// Records changes for the writer, in order; never waits. Shared by the router (under its lock) and
/// the connections (which tell the store what their clients acknowledged): a short lock of its own
/// keeps the numbers in the order the writer receives them, which the durable mark relies on.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<std::sync::Mutex<Numbering>>,
    recorded: Arc<AtomicU64>,
    /// Whether an acknowledgement waits for the commit (not under `sync = none`).
    waits: bool,
    /// Ends the writer's gathering under `sync = interval`: see `hurry`.
    hurry: Arc<Notify>,
    /// Under `sync = interval`, a fifth of the interval: see `quiet_before_hurry`.
    quiet_before_hurry: Option<Duration>,
}

struct Numbering {
    sender: mpsc::UnboundedSender<Entry>,
    next: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("recorded", &self.recorded).finish()
    }
}

impl Journal {
    /// Numbers `change` and hands it to the writer. What to wait for before acknowledging what caused
    /// it: its number, or 0 for nothing.
    pub fn record(&self, change: Change) -> u64 {
        self.record_with(|_| change)
    }

    /// Like `record`, for a change that carries its own number (a kept delivery's key).
    pub fn record_with(&self, change: impl FnOnce(u64) -> Change) -> u64 {
        let mut numbering = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        numbering.next += 1;
        let seq = numbering.next;
        self.recorded.store(seq, Ordering::Release);
        // The writer only ends when every journal is gone, or when the store failed (and then the
        // waiters are told).
        let _ = numbering.sender.send(Entry::Change(seq, change(seq)));
        if self.waits {
            seq
        } else {
            0
        }
    }

    /// Runs `f`, whose records the writer then commits in one batch: all of them, or none should the
    /// broker crash. Records of other tasks made meanwhile join the batch; `f` must not wait.
    pub fn together<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Ends the group however `f` ends, so that the writer never waits for an end that never comes.
        struct End<'a>(&'a Journal);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                let _ = self.0.send(Entry::End);
            }
        }
        let _ = self.send(Entry::Begin);
        let _end = End(self);
        f()
    }

    /// Hands the writer an entry without a number; `false` if the writer is gone.
    fn send(&self, entry: Entry) -> bool {
        let numbering = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        numbering.sender.send(entry).is_ok()
    }

    /// Keeps `delivery` for the session of `client_id`: its number (the key it is kept under, and
    /// what an acknowledgement of the publish that caused it waits for).
    pub fn record_delivery(&self, client_id: &ClientId, delivery: &Delivery) -> (u64, u64) {
        let mut id = 0;
        let wait = self.record_with(|seq| {
            id = seq;
            Change::QueuedAdd { client_id: client_id.clone(), id: seq, delivery: delivery.clone() }
        });
        (id, wait)
    }

    /// Whether what a change causes waits for it to be on disk (every policy but `sync = none`).
    pub fn waits(&self) -> bool {
        self.waits
    }

    /// Asks for what is recorded to be committed now rather than at the end of the interval: a
    /// persistent session's QoS 2 window is full and its packets wait for the store, so waiting
    /// longer would gather nothing more from it, only keep its window shut. (A request made while
    /// the writer is busy ends its next gathering at once.)
    pub fn hurry(&self) {
        self.hurry.notify_one();
    }

    /// Under `sync = interval`, how long a client whose acknowledgements wait for the store may be
    /// silent before the store is asked to commit: a client that stopped is most likely at its window
    /// of unacknowledged messages, and waiting out the interval would only keep it there. A fifth of
    /// the interval (2 ms by default: longer than a paced publisher's gap between sends), so that
    /// commits stay at most five times as frequent as the interval says, however many clients wait.
    pub fn quiet_before_hurry(&self) -> Option<Duration> {
        self.quiet_before_hurry
    }

    /// The kept deliveries `ids` are done with: acknowledged, dropped or expired.
    pub fn forget(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.record(Change::QueuedRemove(ids));
        }
    }
}

/// The connections' view: how far the store is durable.
#[derive(Debug, Clone)]
pub struct Durable {
    progress: watch::Receiver<Progress>,
    recorded: Arc<AtomicU64>,
}

/// The store could not write what an acknowledgement was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store could not write")]
pub struct NotDurable;

impl Durable {
    /// Waits until every change numbered up to `seq` is on disk; how far the store is by then.
    pub async fn reached(&self, seq: u64) -> Result<u64, NotDurable> {
        let mut progress = self.progress.clone();
        let reached = progress.wait_for(|p| p.seq >= seq || p.failed).await.map_err(|_| NotDurable)?;
        if reached.seq >= seq {
            Ok(reached.seq)
        } else {
            Err(NotDurable)
        }
    }

    /// How far the store is on disk now.
    pub fn now(&self) -> u64 {
        self.progress.borrow().seq
    }

    /// Whether the store has failed (a full disk, an I/O error): nothing more will be kept until the
    /// broker restarts.
    pub fn failed(&self) -> bool {
        self.progress.borrow().failed
    }

    /// Waits until everything recorded so far is on disk (at shutdown).
    pub async fn flush(&self) -> Result<(), NotDurable> {
        self.reached(self.recorded.load(Ordering::Acquire)).await.map(|_| ())
    }
}

impl Store {
    /// Commits and syncs everything recorded, whatever the policy (at shutdown).
    pub async fn flush(&self) -> Result<(), NotDurable> {
        let (done, flushed) = oneshot::channel();
        if !self.journal.send(Entry::Flush(done)) {
            return Err(NotDurable);
        }
        flushed.await.map_err(|_| NotDurable)?;
        self.durable.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is recorded together is committed together: the durable mark does not pass the first record
    /// of a group while the group is open, though the writer is idle and would commit it at once, and
    /// a record another task makes meanwhile goes in the same commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_made_together_are_committed_together() {
        let dir = std::env::temp_dir().join(format!("midge-together-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = StoreConfig { dir: dir.clone(), sync: SyncPolicy::EveryMessage, interval: Duration::ZERO };
        let (store, _) = Store::open(&config).unwrap();
        let (journal, durable) = (store.journal(), store.durable());
        let awaiting = |pkid| Change::AwaitingRel { client_id: "publisher".into(), pkid };
        let before = journal.record(awaiting(1));
        durable.reached(before).await.unwrap();

        let (first_tx, first) = std::sync::mpsc::channel();
        let grouped = journal.clone();
        let group = std::thread::spawn(move || {
            grouped.together(|| {
                first_tx.send(grouped.record(awaiting(2))).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                grouped.record(awaiting(3))
            })
        });
        let first = first.recv().unwrap();
        let other = journal.record(awaiting(4));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(durable.now() < first, "committed {} of a group still open (from {first})", durable.now());
        let last = group.join().unwrap();
        assert!(other > first && last > other);
        assert_eq!(
            durable.reached(last).await.unwrap(),
            last,
            "the group, with the record made meanwhile, in one commit"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
