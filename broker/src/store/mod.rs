//! Persistence: what the broker keeps on its own disk, so that a restart, or a crash, loses nothing
//! it has acknowledged. Today that is the retained messages and the persistent sessions with their
//! subscriptions and expiry (not yet their queued messages).
//!
//! The router records each change in a [`Journal`] as it makes it, under its lock and without waiting:
//! a numbered entry into a channel. The [`writer`] task takes what has gathered, writes it in one
//! transaction and commits it (group commit), then says how far the store is durable. A connection
//! whose publishes made changes holds their acknowledgements until the store is durable that far
//! ([`Durable::wait`]): after a crash, whatever a publisher was told is kept, is.
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
use tokio::sync::{mpsc, oneshot, watch};

use crate::session::{ClientId, Message};

pub use codec::{now_wall_ms, SessionRecord};

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// Each change is committed and synced before it is acknowledged, as soon as the previous
    /// commit is done (changes that arrive meanwhile share the next one).
    EveryMessage,
    /// Changes are gathered for `sync_interval_ms` and committed and synced together; they are
    /// acknowledged after that commit.
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
    #[error("cannot read {path}: {source}")]
    Confirmed { path: PathBuf, source: std::io::Error },
    #[error("store write failed: {0}")]
    Write(String),
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
}

enum Entry {
    Change(u64, Change),
    /// Commit and sync everything before this, then answer.
    Flush(oneshot::Sender<()>),
}

/// What the store held when the broker started.
#[derive(Debug, Default)]
pub struct Restored {
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<SessionRecord>,
}

/// The store, open: the router's journal, the connections' view of durability, and the writer's end.
pub struct Store {
    journal: Journal,
    durable: Durable,
    path: PathBuf,
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
        let (sender, receiver) = mpsc::unbounded_channel();
        let (progress, watched) = watch::channel(Progress { seq, failed: false });
        let writer = writer::Writer { engine, dir: config.dir.clone(), sync: config.sync, interval: config.interval };
        tokio::spawn(writer.run(receiver, progress));
        let recorded = Arc::new(AtomicU64::new(seq));
        let waits = config.sync != SyncPolicy::None;
        // Numbers go on from where the store left off.
        let journal = Journal { sender, next: seq, recorded: recorded.clone(), waits };
        let durable = Durable { progress: watched, recorded };
        tracing::info!(
            path = %path.display(),
            retained = restored.retained.len(),
            sessions = restored.sessions.len(),
            "store opened"
        );
        Ok((Store { journal, durable, path }, restored))
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
}

/// Records changes for the writer, in order; never waits.
#[derive(Clone)]
pub struct Journal {
    sender: mpsc::UnboundedSender<Entry>,
    next: u64,
    recorded: Arc<AtomicU64>,
    /// Whether an acknowledgement waits for the commit (not under `sync = none`).
    waits: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("next", &self.next).finish()
    }
}

impl Journal {
    /// Numbers `change` and hands it to the writer. What to wait for before acknowledging what caused
    /// it: its number, or 0 for nothing.
    pub fn record(&mut self, change: Change) -> u64 {
        self.next += 1;
        self.recorded.store(self.next, Ordering::Release);
        // The writer only ends when every journal is gone, or when the store failed (and then the
        // waiters are told).
        let _ = self.sender.send(Entry::Change(self.next, change));
        if self.waits {
            self.next
        } else {
            0
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
    /// Waits until every change numbered up to `seq` is on disk.
    pub async fn wait(&self, seq: u64) -> Result<(), NotDurable> {
        if seq == 0 {
            return Ok(());
        }
        let mut progress = self.progress.clone();
        let reached = progress.wait_for(|p| p.seq >= seq || p.failed).await.map_err(|_| NotDurable)?;
        if reached.seq >= seq {
            Ok(())
        } else {
            Err(NotDurable)
        }
    }

    /// Waits until everything recorded so far is on disk (at shutdown).
    pub async fn flush(&self) -> Result<(), NotDurable> {
        self.wait(self.recorded.load(Ordering::Acquire)).await
    }
}

impl Store {
    /// Commits and syncs everything recorded, whatever the policy (at shutdown).
    pub async fn flush(&self) -> Result<(), NotDurable> {
        let (done, flushed) = oneshot::channel();
        self.journal.sender.send(Entry::Flush(done)).map_err(|_| NotDurable)?;
        flushed.await.map_err(|_| NotDurable)?;
        self.durable.flush().await
    }
}
