//! `emq_reloader`, as Midge means it: while the plugin is on, the ACL file, the users file and the TLS
//! listeners' certificates are read again when they change on disk, so an operator edits a file and
//! need not send SIGHUP or call the API. A file that does not load (half-written, a typo) leaves the
//! running one in place and is tried again at its next change.
//!
//! Changes are seen by polling each file's modification time and length every second: a handful of
//! `stat` calls, with no dependence on the platform's file events (which miss files replaced by a
//! rename or living on network mounts).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use super::Node;
use crate::auth::Users;

const EVERY: Duration = Duration::from_secs(1);

/// What a file looked like when last seen; `None` if it could not be read.
type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: &PathBuf) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The files to watch, and what to do when one changes.
pub struct Reloader {
    pub node: Arc<Node>,
    pub switch: Arc<AtomicBool>,
    pub users_file: Option<PathBuf>,
    pub users: Arc<ArcSwapOption<Users>>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Watched {
    Acl,
    Users,
    Certificates,
}

impl Reloader {
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The files as they were when the plugin was last switched on: changes count from there.
        let mut seen: Option<BTreeMap<(Watched, PathBuf), Fingerprint>> = None;
        loop {
            tokio::select! {
                _ = self.node.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if !self.switch.load(Ordering::Relaxed) {
                seen = None;
                continue;
            }
            let now = self.fingerprints();
            let Some(before) = seen.replace(now.clone()) else { continue };
            let mut changed: Vec<Watched> = now
                .iter()
                .filter(|(key, print)| before.get(*key) != Some(*print))
                .map(|((what, _), _)| *what)
                .collect();
            changed.dedup();
            for what in changed {
                self.reload(what);
            }
        }
    }

    fn fingerprints(&self) -> BTreeMap<(Watched, PathBuf), Fingerprint> {
        let mut files: Vec<(Watched, PathBuf)> = Vec::new();
        files.extend(self.node.settings.acl_file().map(|f| (Watched::Acl, f)));
        files.extend(self.users_file.clone().map(|f| (Watched::Users, f)));
        files.extend(self.node.certificates.files().into_iter().map(|f| (Watched::Certificates, f)));
        files.into_iter().map(|key| (key.clone(), fingerprint(&key.1))).collect()
    }

    fn reload(&self, what: Watched) {
        match what {
            Watched::Acl => match self.node.settings.reload_acl() {
                Ok(()) => tracing::info!("ACL file changed: reloaded"),
                Err(e) => tracing::error!(error = %e, "ACL file changed but does not load; the running ACL stays"),
            },
            Watched::Users => {
                let Some(path) = &self.users_file else { return };
                match Users::load(path) {
                    Ok(users) => {
                        self.users.store(Some(Arc::new(users)));
                        tracing::info!(file = %path.display(), "users file changed: reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "users file changed but does not load; the running users stay")
                    }
                }
            }
            Watched::Certificates => {
                if let Err(e) = self.node.certificates.reload() {
                    tracing::error!(error = %e, "certificates changed but some do not load");
                }
            }
        }
    }
}
