//! Password checks for Midge's broker (users file, auth plugins) and sidecar (admin users).
//!
//! argon2 is expensive on purpose: about 19 MiB and tens of milliseconds per check. Run on tokio's
//! blocking pool, every check allocated that memory afresh in whichever of up to 512 threads ran it, and
//! the allocator kept it per thread, so a burst of wrong logins left the process gigabytes larger. Here
//! a fixed set of workers (about one per core) each keep their argon2 memory for good, a bounded queue
//! feeds them (a full queue is an immediate refusal, never a pile-up), and [`Throttle`] stops repeated
//! failures from reaching them at all.

mod hash;
mod throttle;

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::Block;
use tokio::sync::oneshot;

pub use hash::{is_password_hash, MAX_MEMORY_KIB};
pub use throttle::{Limits, Throttle, Throttled};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("invalid password hash: {0}")]
    Invalid(String),
    #[error("password hash asks for {0} KiB of memory, more than the {MAX_MEMORY_KIB} KiB allowed")]
    TooCostly(u32),
    #[error("too many password checks waiting")]
    Busy,
}

impl HashError {
    fn invalid(e: impl std::fmt::Display) -> HashError {
        HashError::Invalid(e.to_string())
    }
}

/// A new argon2id hash of `password`, computed on the calling thread in memory of its own: for command
/// line tools and tests, not for servers (which use a [`Hasher`]).
pub fn hash_now(password: &[u8]) -> Result<String, HashError> {
    hash::hash(password, &mut Vec::new())
}

/// Checks waiting for a worker beyond this many are refused at once.
pub const QUEUE: usize = 64;

enum Job {
    /// `None`: a user that does not exist, checked against a dummy hash so that it costs the same.
    Verify {
        hash: Option<String>,
        password: Vec<u8>,
        reply: oneshot::Sender<bool>,
    },
    Hash {
        password: Vec<u8>,
        reply: oneshot::Sender<Result<String, HashError>>,
    },
}

/// The workers' front door; cheap to clone. The workers stop once every clone is dropped.
#[derive(Clone)]
pub struct Hasher {
    jobs: SyncSender<Job>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Default for Hasher {
    /// One worker per core, and [`QUEUE`] checks waiting at most.
    fn default() -> Hasher {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hasher::new(cores, QUEUE)
    }
}

impl Hasher {
    pub fn new(workers: usize, queue: usize) -> Hasher {
        let (jobs, waiting) = mpsc::sync_channel(queue);
        let waiting = Arc::new(Mutex::new(waiting));
        let dummy = Arc::new(OnceLock::new());
        for n in 0..workers.max(1) {
            let (waiting, dummy) = (waiting.clone(), dummy.clone());
            let spawned =
                std::thread::Builder::new().name(format!("midge-hasher-{n}")).spawn(move || work(&waiting, &dummy));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password worker");
            }
        }
        Hasher { jobs }
    }

    /// Whether `password` matches `hash`; `None` for an unknown user, which is checked against a dummy
    /// hash (the same work) and never matches. `Busy` when too many checks are waiting already.
    pub async fn verify(&self, hash: Option<&str>, password: &[u8]) -> Result<bool, HashError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify { hash: hash.map(str::to_string), password: password.to_vec(), reply })?;
        answer.await.map_err(|_| HashError::Busy)
    }

    /// A new argon2id hash of `password`.
    pub async fn hash(&self, password: &[u8]) -> Result<String, HashError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password: password.to_vec(), reply })?;
        answer.await.map_err(|_| HashError::Busy)?
    }

    fn submit(&self, job: Job) -> Result<(), HashError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => HashError::Busy,
        })
    }
}

fn work(waiting: &Mutex<Receiver<Job>>, dummy: &OnceLock<String>) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = match waiting.lock() {
            Ok(waiting) => waiting.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        match job {
            Job::Verify { hash: Some(hash), password, reply } => {
                let _ = reply.send(hash::verify(&hash, &password, &mut memory));
            }
            Job::Verify { hash: None, password, reply } => {
                let dummy = dummy.get_or_init(|| hash::hash(b"midge-dummy-password", &mut memory).unwrap_or_default());
                hash::verify(dummy, &password, &mut memory);
                let _ = reply.send(false);
            }
            Job::Hash { password, reply } => {
                let _ = reply.send(hash::hash(&password, &mut memory));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_hashes_and_unknown_users() {
        let hasher = Hasher::new(2, 8);
        let hash = hasher.hash(b"s3cret").await.unwrap();
        assert!(hasher.verify(Some(&hash), b"s3cret").await.unwrap());
        assert!(!hasher.verify(Some(&hash), b"wrong").await.unwrap());
        assert!(!hasher.verify(None, b"s3cret").await.unwrap());
    }

    /// More checks than workers and queue together: the excess is refused at once, not queued.
    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let hasher = Hasher::new(1, 2);
        let hash = hasher.hash(b"pw").await.unwrap();
        let checks: Vec<_> = (0..12)
            .map(|_| {
                let (hasher, hash) = (hasher.clone(), hash.clone());
                tokio::spawn(async move { hasher.verify(Some(&hash), b"pw").await })
            })
            .collect();
        let mut busy = 0;
        for check in checks {
            match check.await.unwrap() {
                Ok(matched) => assert!(matched),
                Err(HashError::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(busy >= 12 - 3, "{busy} of 12 refused");
    }
}
