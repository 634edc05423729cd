//! The task that commits, alone on a thread of its own: it takes the changes that have gathered,
//! writes them in one batch, and then moves the durable mark past them, as the sync policy says.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use super::engine::Engine;
use super::{confirmed, Change, Entry, Progress, SyncPolicy};

/// Most changes in one batch: a huge backlog is committed in steps, and acknowledged as it goes.
const MAX_BATCH: usize = 10_000;

/// Under `sync = none`, how often the disk is synced anyway.
const LAZY_SYNC: Duration = Duration::from_secs(1);

pub struct Writer {
    pub engine: Engine,
    /// The confirmed mark beside the store.
    pub mark: confirmed::Mark,
    pub sync: SyncPolicy,
    pub interval: Duration,
    /// The kept deliveries past PUBREC, as on disk: their marks go with them.
    pub released: HashSet<u64>,
    /// Ends a gathering under `sync = interval` early (`Journal::hurry`).
    pub hurry: Arc<Notify>,
}

/// The store cannot write; nothing more may be acknowledged as kept.
struct Failed;

impl Writer {
    pub async fn run(mut self, mut entries: mpsc::UnboundedReceiver<Entry>, progress: watch::Sender<Progress>) {
        let sync = self.sync;
        let interval = self.interval;
        let mut released = std::mem::take(&mut self.released);
        let mut state = State { writer: self, written: progress.borrow().seq, unsynced_since: None };
        loop {
            let first = match state.unsynced_since {
                // Under `sync = none`: wait for more, but sync what is there within a second.
                Some(since) => {
                    match tokio::time::timeout(LAZY_SYNC.saturating_sub(since.elapsed()), entries.recv()).await {
                        Ok(first) => first,
                        Err(_) => {
                            if state.commit(Vec::new(), true, &progress).is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
                None => entries.recv().await,
            };
            let Some(first) = first else {
                // Every journal is gone: the broker is stopping.
                let _ = state.commit(Vec::new(), true, &progress);
                return;
            };
            if sync == SyncPolicy::Interval {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = state.writer.hurry.notified() => {}
                }
            }
            let mut changes = Vec::new();
            let mut flushes = Vec::new();
            // Groups begun and not yet ended (see `Journal::together`): the batch goes on until none is.
            let mut open = 0usize;
            let mut next = Some(first);
            while let Some(entry) = next {
                match entry {
                    Entry::Change(seq, change) => {
                        changes.push(change);
                        state.written = seq;
                    }
                    Entry::Flush(done) => flushes.push(done),
                    Entry::Begin => open += 1,
                    Entry::End => open = open.saturating_sub(1),
                }
                next = match open {
                    // The rest of a group is on its way: it was recorded by a task that does not wait.
                    1.. => entries.recv().await,
                    0 if changes.len() < MAX_BATCH => entries.try_recv().ok(),
                    0 => None,
                };
            }
            let durable = sync != SyncPolicy::None || !flushes.is_empty();
            cancel_out(&mut changes);
            settle_released(&mut changes, &mut released);
            if state.commit(changes, durable, &progress).is_err() {
                return;
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }
}

/// A delivery kept and acknowledged within one batch need not be written at all: the batch is one
/// atomic write, and its net effect on that delivery is nothing. With a subscriber that acknowledges
/// within a commit interval, that is most of them.
fn cancel_out(changes: &mut Vec<Change>) {
    let removed: std::collections::HashSet<u64> = changes
        .iter()
        .filter_map(|c| match c {
            Change::QueuedRemove(ids) => Some(ids.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    cancel_awaiting(changes);
    if removed.is_empty() {
        return;
    }
    let mut added = HashSet::new();
    changes.retain(|c| match c {
        Change::QueuedAdd { id, .. } if removed.contains(id) => {
            added.insert(*id);
            false
        }
        // Its removal takes it off the disk (it was kept in an earlier batch) or it never gets there.
        Change::Released(id) => !removed.contains(id),
        _ => true,
    });
    changes.retain_mut(|c| match c {
        Change::QueuedRemove(ids) => {
            ids.retain(|id| !added.contains(id));
            !ids.is_empty()
        }
        _ => true,
    });
}

/// An incoming QoS 2 packet id set and completed within one batch need not be written either. A packet
/// id alternates between awaiting and completed, so if its first change in the batch sets it, it was
/// free before the batch, and its last change says what it is after.
fn cancel_awaiting(changes: &mut Vec<Change>) {
    let key = |c: &Change| match c {
        Change::AwaitingRel { client_id, pkid } | Change::RelCompleted { client_id, pkid } => {
            Some((client_id.clone(), *pkid))
        }
        _ => None,
    };
    // Per packet id: whether its first change sets it, the index of its last change and whether that sets it.
    let mut seen: HashMap<(crate::session::ClientId, u16), (bool, usize, bool)> = HashMap::new();
    for (i, change) in changes.iter().enumerate() {
        if let Some(k) = key(change) {
            let sets = matches!(change, Change::AwaitingRel { .. });
            seen.entry(k).and_modify(|(_, last, last_sets)| (*last, *last_sets) = (i, sets)).or_insert((sets, i, sets));
        }
    }
    if seen.is_empty() {
        return;
    }
    let mut i = 0;
    changes.retain(|change| {
        let keep = key(change).is_none_or(|k| {
            let (first_sets, last, last_sets) = seen[&k];
            // Set and completed within the batch: nothing to write.
            let net_nothing = first_sets && !last_sets;
            i == last && !net_nothing
        });
        i += 1;
        keep
    });
}

/// Marks the deliveries released in this batch, and adds the removal of the marks of released ones it
/// lets go of.
fn settle_released(changes: &mut Vec<Change>, released: &mut HashSet<u64>) {
    let mut unreleased = Vec::new();
    for change in changes.iter() {
        match change {
            Change::Released(id) => {
                released.insert(*id);
            }
            Change::QueuedRemove(ids) => unreleased.extend(ids.iter().filter(|id| released.remove(id))),
            _ => {}
        }
    }
    if !unreleased.is_empty() {
        changes.push(Change::ReleasedRemove(unreleased));
    }
}

struct State {
    writer: Writer,
    /// The number of the last change handed to the engine.
    written: u64,
    /// Since when changes have been written without a sync (`sync = none`).
    unsynced_since: Option<Instant>,
}

impl State {
    /// Writes `changes` (up to `self.written`) and moves the mark; once synced, also the confirmed
    /// mark beside the store. On failure the store is marked failed (waiters are told) and the writer
    /// stops.
    fn commit(&mut self, changes: Vec<Change>, sync: bool, progress: &watch::Sender<Progress>) -> Result<(), Failed> {
        if changes.is_empty() && (!sync || self.unsynced_since.is_none()) {
            return Ok(());
        }
        let (writer, seq) = (&self.writer, self.written);
        // On the writer's own thread (see `Store::open`): blocking it blocks nothing else.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer.engine.apply(&changes, seq, sync)?;
            if sync {
                writer.mark.write(seq).map_err(|e| super::StoreError::Write(e.to_string()))?;
            }
            Ok::<_, super::StoreError>(())
        }));
        match written {
            Ok(Ok(())) => {
                progress.send_modify(|p| p.seq = p.seq.max(seq));
                self.unsynced_since = match (sync, self.unsynced_since) {
                    (true, _) => None,
                    (false, since) => Some(since.unwrap_or_else(Instant::now)),
                };
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the store cannot write: nothing more is acknowledged as kept");
                progress.send_modify(|p| p.failed = true);
                Err(Failed)
            }
            Err(_) => {
                tracing::error!("the store's writer panicked");
                progress.send_modify(|p| p.failed = true);
                Err(Failed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use crate::session::{Delivery, Message};
    use bytes::Bytes;

    fn add(id: u64) -> Change {
        let message =
            std::sync::Arc::new(Message::new(Bytes::from_static(b"t"), Bytes::new(), QoS::AtLeastOnce, false));
        Change::QueuedAdd { client_id: "c".into(), id, delivery: Delivery::new(message, QoS::AtLeastOnce, false) }
    }

    #[test]
    fn a_delivery_kept_and_acknowledged_in_one_batch_is_not_written() {
        let mut changes = vec![add(1), add(2), Change::QueuedRemove(vec![1, 7]), add(3), Change::QueuedRemove(vec![3])];
        cancel_out(&mut changes);
        let left: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::QueuedAdd { id, .. } => format!("add {id}"),
                Change::QueuedRemove(ids) => format!("remove {ids:?}"),
                _ => "other".into(),
            })
            .collect();
        // 2 stays kept; 7 was kept by an earlier batch, so its removal stays.
        assert_eq!(left, ["add 2", "remove [7]"]);
    }

    fn describe(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::AwaitingRel { client_id, pkid } => format!("await {client_id}/{pkid}"),
                Change::RelCompleted { client_id, pkid } => format!("complete {client_id}/{pkid}"),
                Change::Released(id) => format!("released {id}"),
                Change::ReleasedRemove(ids) => format!("unreleased {ids:?}"),
                Change::QueuedRemove(ids) => format!("remove {ids:?}"),
                Change::QueuedAdd { id, .. } => format!("add {id}"),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn an_incoming_id_awaited_and_completed_in_one_batch_is_not_written() {
        let awaiting = |c: &str, pkid| Change::AwaitingRel { client_id: c.into(), pkid };
        let completed = |c: &str, pkid| Change::RelCompleted { client_id: c.into(), pkid };
        let mut changes = vec![
            awaiting("a", 1),
            completed("a", 1),
            // Reused within the batch: awaiting after it.
            awaiting("b", 1),
            completed("b", 1),
            awaiting("b", 1),
            // Awaited since an earlier batch.
            completed("c", 1),
            awaiting("a", 2),
        ];
        cancel_out(&mut changes);
        assert_eq!(describe(&changes), ["await b/1", "complete c/1", "await a/2"]);
    }

    #[test]
    fn a_released_mark_goes_with_its_delivery() {
        let mut released = HashSet::from([5]);
        // 6 released and let go of in one batch: neither is written; 5's mark, from before, is removed.
        let mut changes = vec![add(6), Change::Released(6), Change::Released(8), Change::QueuedRemove(vec![5, 6])];
        cancel_out(&mut changes);
        settle_released(&mut changes, &mut released);
        assert_eq!(describe(&changes), ["released 8", "remove [5]", "unreleased [5]"]);
        assert_eq!(released, HashSet::from([8]));
    }
}
