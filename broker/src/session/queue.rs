//! A session's queue: the messages waiting behind its inflight window, in order. With a store, a long
//! queue is not held in memory: beyond a threshold, deliveries the store has committed are let go of
//! and only their numbers kept, to be read back as the front of the queue comes near them.
//!
//! The queue is three runs, in order: `hot` (in memory, sent next), `cold` (numbers only, in the
//! store), `tail` (in memory: the newest, not yet committed, or that the store does not keep).
//! Something is only ever moved from the front of `tail` to the back of `cold` and from the front of
//! `cold` to the back of `hot`, so the order is the order they came in.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Delivery;

/// Where a session's long queue goes: the store, which has every delivery of a kept session.
pub trait Spill: Send + Sync + std::fmt::Debug {
    /// The number up to which everything recorded is committed: those deliveries can be read back.
    fn committed(&self) -> u64;
    /// Reads kept deliveries back, in the order asked: `None` for one whose message expired meanwhile
    /// or that is gone.
    fn load(&self, ids: &[u64]) -> Vec<Option<Delivery>>;
}

/// The store and how many deliveries a session holds in memory before spilling to it; shared by every
/// session (in their limits).
pub type SpillTo = Option<(Arc<dyn Spill>, usize)>;

#[derive(Debug, Default)]
pub struct Queue {
    hot: VecDeque<Delivery>,
    /// Allocated only while something waits in the store or behind it: most sessions never need it.
    spilled: Option<Box<Spilled>>,
}

#[derive(Debug, Default)]
struct Spilled {
    cold: VecDeque<u64>,
    tail: VecDeque<Delivery>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.hot.len() + self.spilled.as_ref().map_or(0, |s| s.cold.len() + s.tail.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many are held in memory (the rest are in the store).
    pub fn in_memory(&self) -> usize {
        self.hot.len() + self.spilled.as_ref().map_or(0, |s| s.tail.len())
    }

    pub fn push_back(&mut self, delivery: Delivery, spill: &SpillTo) {
        match (spill, &mut self.spilled) {
            // Straight to the front run while nothing waits in the store or behind it.
            (None, _) => self.hot.push_back(delivery),
            (Some((_, keep)), None) if self.hot.len() < *keep => self.hot.push_back(delivery),
            (Some((store, keep)), spilled) => {
                let spilled = spilled.get_or_insert_with(Box::default);
                spilled.tail.push_back(delivery);
                spilled.settle(self.hot.len(), store.as_ref(), *keep);
            }
        }
    }

    /// The delivery sent next, read back from the store if it was there. Expired or missing ones read
    /// back are dropped on the way, their numbers added to `gone`.
    pub fn front(&mut self, gone: &mut Vec<u64>, spill: &SpillTo) -> Option<&Delivery> {
        if self.hot.is_empty() {
            self.refill(gone, spill);
        }
        self.hot.front()
    }

    pub fn pop_front(&mut self, gone: &mut Vec<u64>, spill: &SpillTo) -> Option<Delivery> {
        if self.hot.is_empty() {
            self.refill(gone, spill);
        }
        self.hot.pop_front()
    }

    /// Moves the next deliveries to the front run: from the store, or from `tail` when nothing is in the
    /// store.
    fn refill(&mut self, gone: &mut Vec<u64>, spill: &SpillTo) {
        let (Some(spilled), Some((store, keep))) = (self.spilled.as_mut(), spill) else { return };
        while self.hot.is_empty() && !spilled.cold.is_empty() {
            let batch: Vec<u64> = spilled.cold.drain(..spilled.cold.len().min((*keep / 2).max(1))).collect();
            for (id, loaded) in batch.iter().zip(store.load(&batch)) {
                match loaded {
                    Some(delivery) => self.hot.push_back(delivery),
                    None => gone.push(*id),
                }
            }
        }
        if spilled.cold.is_empty() {
            self.hot.append(&mut spilled.tail);
            self.spilled = None;
        }
    }

    /// Drops the oldest (the queue is full): its store number.
    pub fn drop_oldest(&mut self) -> Option<u64> {
        if let Some(delivery) = self.hot.pop_front() {
            return Some(delivery.store_id);
        }
        let spilled = self.spilled.as_mut()?;
        match spilled.cold.pop_front() {
            Some(id) => Some(id),
            None => spilled.tail.pop_front().map(|d| d.store_id),
        }
    }

    /// Takes out the deliveries that came through shared subscriptions (never in the store).
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let mut taken = Vec::new();
        let tail = self.spilled.as_mut().map(|s| &mut s.tail);
        for run in std::iter::once(&mut self.hot).chain(tail) {
            if run.iter().any(|d| d.shared.is_some()) {
                let (shared, rest): (VecDeque<_>, VecDeque<_>) =
                    std::mem::take(run).into_iter().partition(|d| d.shared.is_some());
                *run = rest;
                taken.extend(shared);
            }
        }
        taken
    }

    /// The store numbers of everything queued.
    pub fn store_ids(&self) -> impl Iterator<Item = u64> + '_ {
        let hot = self.hot.iter().map(|d| d.store_id);
        let cold = self.spilled.iter().flat_map(|s| s.cold.iter().copied());
        let tail = self.spilled.iter().flat_map(|s| s.tail.iter().map(|d| d.store_id));
        hot.chain(cold).chain(tail)
    }
}

impl Spilled {
    /// Lets go of what memory need not hold: the front of `tail`, once committed, while more than
    /// `keep` is in memory. A delivery the store does not keep (QoS 0), or that must keep what the
    /// store does not (its shared subscription), stays, and so does all behind it.
    fn settle(&mut self, hot: usize, store: &dyn Spill, keep: usize) {
        if hot + self.tail.len() <= keep {
            return;
        }
        let committed = store.committed();
        while hot + self.tail.len() > keep {
            match self.tail.front() {
                Some(d) if d.store_id != 0 && d.store_id <= committed && d.shared.is_none() => {
                    self.cold.push_back(d.store_id);
                    self.tail.pop_front();
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::protocol::QoS;
    use crate::session::Message;

    /// A store in memory: what was "committed" can be read back.
    #[derive(Debug, Default)]
    struct Kept {
        deliveries: Mutex<HashMap<u64, Delivery>>,
        committed: AtomicU64,
        reads: AtomicU64,
    }

    impl Spill for Kept {
        fn committed(&self) -> u64 {
            self.committed.load(Ordering::Relaxed)
        }

        fn load(&self, ids: &[u64]) -> Vec<Option<Delivery>> {
            self.reads.fetch_add(ids.len() as u64, Ordering::Relaxed);
            let kept = self.deliveries.lock().unwrap();
            ids.iter().map(|id| kept.get(id).cloned()).collect()
        }
    }

    fn delivery(id: u64) -> Delivery {
        let message =
            Arc::new(Message::new(Bytes::from_static(b"t"), Bytes::from(id.to_string()), QoS::AtLeastOnce, false));
        Delivery { store_id: id, ..Delivery::new(message, QoS::AtLeastOnce, false) }
    }

    #[test]
    fn a_long_queue_spills_what_is_committed_and_reads_it_back_in_order() {
        let store = Arc::new(Kept::default());
        let spill: SpillTo = Some((store.clone(), 4));
        let mut queue = Queue::default();
        for id in 1..=20 {
            store.deliveries.lock().unwrap().insert(id, delivery(id));
            // The store commits up to two behind what is recorded.
            store.committed.store(id.saturating_sub(2), Ordering::Relaxed);
            queue.push_back(delivery(id), &spill);
        }
        assert_eq!(queue.len(), 20);
        assert!(queue.in_memory() <= 6, "{} held in memory", queue.in_memory());
        // An expired (here: gone) one is skipped and reported.
        store.deliveries.lock().unwrap().remove(&7);
        store.committed.store(20, Ordering::Relaxed);
        let mut gone = Vec::new();
        let mut order = Vec::new();
        while let Some(d) = queue.pop_front(&mut gone, &spill) {
            order.push(d.store_id);
            // Newcomers while it drains go behind.
            if d.store_id == 10 {
                queue.push_back(delivery(21), &spill);
            }
        }
        assert_eq!(gone, vec![7]);
        assert_eq!(order, (1..=21).filter(|id| *id != 7).collect::<Vec<_>>());
        assert!(store.reads.load(Ordering::Relaxed) > 0, "nothing was read back");
        assert!(queue.spilled.is_none(), "drained, the spilled runs are let go of");
    }

    #[test]
    fn without_a_store_everything_stays_in_memory() {
        let mut queue = Queue::default();
        for id in 1..=10 {
            queue.push_back(delivery(id), &None);
        }
        assert_eq!((queue.len(), queue.in_memory()), (10, 10));
        assert_eq!(queue.drop_oldest(), Some(1));
        let ids: Vec<u64> = queue.store_ids().collect();
        assert_eq!(ids, (2..=10).collect::<Vec<_>>());
    }
}
