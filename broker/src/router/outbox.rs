//! A connection's outbox: what the router sends to one connection, in order.
//!
//! A queue behind a mutex and an `AtomicWaker`, rather than a channel: an idle connection's outbox costs a
//! few dozen bytes (a tokio channel preallocates a block of slots), the connection takes everything
//! waiting in one lock, and the router can bound the queue by its length.
//!
//! The outbox also carries a hand-off between a publisher and the subscriber it just woke. A QoS 1
//! publisher has a PUBACK to write after routing; written at once, that syscall would go before the
//! delivery. So the publisher waits for the subscriber's connection to take its turn (see
//! [`Outbox::wait_turn`]): the subscriber's task, woken on the same worker, writes the delivery, then
//! wakes the publisher, which writes its PUBACK. `tokio::task::yield_now` would give the same order,
//! but through a poll of the I/O driver that often wakes the other, parked, worker thread too.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;

use super::Outbound;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outbound>,
    /// The connection is waiting for work with room to write, so what is pushed now is taken on its
    /// very next turn. Only then may a publisher wait for that turn.
    idle: bool,
    /// A publisher waiting for the connection's next turn.
    waiter: Option<Waker>,
    /// How many times the connection has taken the queue: a publisher waits only while what it
    /// pushed has not been taken yet, since the turn after a take may already have passed.
    takes: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// The connection's task, while it waits for something to be queued.
    waker: AtomicWaker,
    receiver_gone: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a queue that is still a valid queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued behind other entries, or for a connection busy with something else.
    Queued,
    /// Queued for an idle connection, which was woken and will take it on its next turn. The
    /// ticket is for [`Outbox::wait_turn`].
    WokeIdle(Ticket),
}

/// Which take of the queue a push will be part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Outbox {
    /// Queues unless the queue already holds `limit` entries.
    pub fn push_bounded(&self, outbound: Outbound, limit: usize) -> Result<Pushed, Refused> {
        self.push(outbound, Some(limit))
    }

    /// Queues whatever the length (control messages, which must not be lost).
    pub fn push(&self, outbound: Outbound, limit: Option<usize>) -> Result<Pushed, Refused> {
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            return Err(Refused::Gone);
        }
        let (was_empty, idle, ticket) = {
            let mut state = self.shared.state();
            if limit.is_some_and(|l| state.queue.len() >= l) {
                return Err(Refused::Full);
            }
            state.queue.push_back(outbound);
            (state.queue.len() == 1, state.idle, Ticket(state.takes))
        };
        // A non-empty queue has a wake-up on its way already.
        if !was_empty {
            return Ok(Pushed::Queued);
        }
        self.shared.waker.wake();
        Ok(if idle { Pushed::WokeIdle(ticket) } else { Pushed::Queued })
    }

    /// Waits until the connection behind this outbox has taken what was pushed with `ticket` and
    /// finished that turn (or is busy, or gone). Only for a push that answered [`Pushed::WokeIdle`]:
    /// that connection is certain to run soon. A waiting connection marks itself busy first (see
    /// [`OutboxReceiver::turn`]), so no two connections can wait for each other.
    pub fn wait_turn(&self, ticket: Ticket) -> WaitTurn<'_> {
        WaitTurn { outbox: self, ticket, registered: false }
    }
}

/// See [`Outbox::wait_turn`].
pub struct WaitTurn<'a> {
    outbox: &'a Outbox,
    ticket: Ticket,
    registered: bool,
}

impl Future for WaitTurn<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        let displaced = {
            let mut state = self.outbox.shared.state();
            let taken = Ticket(state.takes) != self.ticket;
            if taken || !state.idle || self.outbox.shared.receiver_gone.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            state.waiter.replace(cx.waker().clone())
        };
        // Two publishers waiting on one subscriber: the earlier one goes now.
        if let Some(waker) = displaced {
            waker.wake();
        }
        self.registered = true;
        Poll::Pending
    }
}

impl OutboxReceiver {
    /// Waits until something is queued. Cancel-safe.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            // Registered before looking, so a push after the look wakes this task.
            self.shared.waker.register(cx.waker());
            if self.shared.state().queue.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Everything queued, in order, in one lock.
    pub fn take_all(&self) -> VecDeque<Outbound> {
        let mut batch = VecDeque::new();
        self.take_into(&mut batch);
        batch
    }

    /// Everything queued, in order, in one lock, swapped with `batch` (which must be empty), so that
    /// the two queues' allocations are reused rather than one made per take.
    pub fn take_into(&self, batch: &mut VecDeque<Outbound>) {
        debug_assert!(batch.is_empty());
        let mut state = self.shared.state();
        state.takes += 1;
        std::mem::swap(&mut state.queue, batch);
    }

    /// Called by the connection at each turn of its loop: whether it is now idle (waiting for work,
    /// with room to write) or busy. Either way, a publisher waiting for this turn may go on.
    pub fn turn(&self, idle: bool) {
        let waiter = {
            let mut state = self.shared.state();
            state.idle = idle;
            state.waiter.take()
        };
        if let Some(waker) = waiter {
            waker.wake();
        }
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        self.turn(false);
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

    fn ticket(pushed: Result<Pushed, Refused>) -> Ticket {
        match pushed {
            Ok(Pushed::WokeIdle(ticket)) => ticket,
            other => panic!("expected WokeIdle, got {other:?}"),
        }
    }

    /// A waker that remembers being woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn woken(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Polls `future` once with `flag` as its waker.
    fn poll_once<F: Future + Unpin>(future: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
        let waker = Waker::from(flag.clone());
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_push_wakes_an_idle_receiver_only_when_its_queue_was_empty() {
        let (tx, rx) = outbox(1);
        assert_eq!(tx.push(Outbound::Kick, None), Ok(Pushed::Queued), "not idle yet");
        rx.take_all();
        rx.turn(true);
        let first = tx.push(Outbound::Kick, None);
        assert!(matches!(first, Ok(Pushed::WokeIdle(_))));
        assert_eq!(tx.push(Outbound::Kick, None), Ok(Pushed::Queued), "a wake-up is on its way already");
        rx.take_all();
        rx.turn(false);
        assert_eq!(tx.push(Outbound::Kick, None), Ok(Pushed::Queued), "busy");
    }

    #[test]
    fn waiting_for_a_turn_ends_at_the_turn_after_the_take() {
        let (tx, rx) = outbox(1);
        rx.turn(true);
        let ticket = ticket(tx.push(Outbound::Kick, None));
        let flag = Arc::new(Flag::default());
        let mut wait = tx.wait_turn(ticket);
        assert_eq!(poll_once(&mut wait, &flag), Poll::Pending);
        rx.take_all();
        assert!(!flag.woken(), "taken, but the turn (which writes it) is not over");
        rx.turn(true);
        assert!(flag.woken());
        assert_eq!(poll_once(&mut wait, &flag), Poll::Ready(()));
    }

    #[test]
    fn no_waiting_once_taken_or_busy_or_gone() {
        let (tx, rx) = outbox(1);
        rx.turn(true);
        // Taken (and its turn over) before the publisher got to wait: a later turn may never come.
        let flag = Arc::new(Flag::default());
        let ticket_a = ticket(tx.push(Outbound::Kick, None));
        rx.take_all();
        assert_eq!(poll_once(&mut tx.wait_turn(ticket_a), &flag), Poll::Ready(()));
        // Busy: the connection may itself be waiting for a turn.
        let ticket_b = ticket(tx.push(Outbound::Kick, None));
        rx.turn(false);
        assert_eq!(poll_once(&mut tx.wait_turn(ticket_b), &flag), Poll::Ready(()));
        // Gone, while waiting.
        rx.take_all();
        rx.turn(true);
        let ticket_c = ticket(tx.push(Outbound::Kick, None));
        let mut wait = tx.wait_turn(ticket_c);
        assert_eq!(poll_once(&mut wait, &flag), Poll::Pending);
        drop(rx);
        assert!(flag.woken());
        assert_eq!(poll_once(&mut wait, &flag), Poll::Ready(()));
    }
}
