//! A connection's outbox: what the router sends to one connection, in order.
//!
//! A queue behind a mutex and a `Notify`, rather than a channel: an idle connection's outbox costs a
//! few dozen bytes (a tokio channel preallocates a block of slots), the connection takes everything
//! waiting in one lock, and the router can bound the queue by its length.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Outbound;

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<VecDeque<Outbound>>,
    notify: Notify,
    receiver_gone: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Outbound>> {
        // A panic while holding this lock leaves a queue that is still a valid queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The router's end.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub conn_id: u64,
    shared: Arc<Shared>,
}

/// The connection's end.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

pub fn outbox(conn_id: u64) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared::default());
    (Outbox { conn_id, shared: shared.clone() }, OutboxReceiver { shared })
}

/// Why something was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `limit` entries already.
    Full,
    /// The connection's end is gone.
    Gone,
}

impl Outbox {
    /// Queues unless the queue already holds `limit` entries.
    pub fn push_bounded(&self, outbound: Outbound, limit: usize) -> Result<(), Refused> {
        self.push(outbound, Some(limit))
    }

    /// Queues whatever the length (control messages, which must not be lost).
    pub fn push(&self, outbound: Outbound, limit: Option<usize>) -> Result<(), Refused> {
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            return Err(Refused::Gone);
        }
        let was_empty = {
            let mut queue = self.shared.queue();
            if limit.is_some_and(|l| queue.len() >= l) {
                return Err(Refused::Full);
            }
            queue.push_back(outbound);
            queue.len() == 1
        };
        // A non-empty queue has a wake-up on its way already.
        if was_empty {
            self.shared.notify.notify_one();
        }
        Ok(())
    }
}

impl OutboxReceiver {
    /// Waits until something is queued. Cancel-safe.
    pub async fn ready(&self) {
        loop {
            if !self.shared.queue().is_empty() {
                return;
            }
            self.shared.notify.notified().await;
        }
    }

    /// Everything queued, in order, in one lock.
    pub fn take_all(&self) -> VecDeque<Outbound> {
        std::mem::take(&mut *self.shared.queue())
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn order_bound_and_gone() {
        let (tx, rx) = outbox(1);
        tx.push_bounded(Outbound::Unsubscribed(1), 2).unwrap();
        tx.push_bounded(Outbound::Unsubscribed(2), 2).unwrap();
        assert_eq!(tx.push_bounded(Outbound::Unsubscribed(3), 2), Err(Refused::Full));
        tx.push(Outbound::Kick, None).unwrap();
        rx.ready().await;
        let all: Vec<_> = rx.take_all().into_iter().collect();
        assert!(matches!(all[..], [Outbound::Unsubscribed(1), Outbound::Unsubscribed(2), Outbound::Kick]));
        let waiter = tokio::spawn(async move {
            rx.ready().await;
            rx.take_all().len()
        });
        tokio::task::yield_now().await;
        tx.push(Outbound::TakenOver, None).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
        assert_eq!(tx.push(Outbound::Kick, None), Err(Refused::Gone));
    }
}
