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
//! but through a poll of the I/O driver that often wakes the other, parked, worker thread too. Every
//! publisher, QoS 0 too, waits this way before it reads on, so that under overload the subscribers'
//! writes keep pace with the publishers' reads.
//!
//! And it carries a short cut. A lone QoS 0 message for a connection that waits with nothing unsent
//! and nothing queued (a *drained* one) is written straight to that connection's socket by the
//! publisher's task, under the outbox's lock, as a single-threaded broker would: no wake-up of the
//! subscriber's task, no second task on the message's path. The connection's own writes never overlap
//! such a write, since it leaves the drained state under the same lock (by taking the queue, or by
//! its next turn) before it writes anything. Batches and fan-out still go through the queue, so their
//! writes are batched per connection and spread over the workers.
//!
//! And it saves wake-ups of a connection stalled on a full inflight window (a QoS 1 subscriber waiting
//! for its client's PUBACKs): QoS 1 and 2 deliveries for it wait here without waking it, since it
//! could only move them to its session queue, and it takes them with the acknowledgements that make
//! room. That halves the wake-ups of a busy QoS 1 subscriber's task (see [`OutboxReceiver::stall`]).
//!
//! And it slows publishers down before a subscriber's backlog overflows. A QoS 1 or 2 delivery pushed
//! while the connection holds three quarters of its session queue's worth (in its session queue and
//! here) says so
//! ([`Pushed::Congested`]): the publisher stops routing what it read, stops reading its socket, and
//! waits for [`Outbox::room`], so the subscriber's pace sets the publishers' and nothing acknowledged
//! to them is dropped for want of room. A connection whose client acknowledges nothing for
//! [`STUCK_AFTER`] is not waited for: its session queue's drop-oldest rule applies to it instead, and
//! one dead subscriber does not hold up every publisher of its topics. Nor is a connection waited for
//! while it waits for room itself ([`OutboxReceiver::waiting_for_room`]): two clients flooding each
//! other would otherwise each wait for the other to read.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

use crate::protocol::{Packet, Suback, Unsuback};
use crate::session::{Delivery, SessionStats};
use crate::transport::{SocketHandle, Written};

/// What the router sends to one connection, in order.
#[derive(Debug)]
pub enum OutboxItem {
    Deliver(Delivery),
    /// A SUBACK to write, then retained messages for the new subscriptions. Boxed, like every rare
    /// variant, to keep the common one (and so each connection's channel block) small.
    Subscribed(Box<(Suback, Vec<Delivery>)>),
    /// An UNSUBACK to write.
    Unsubscribed(Box<Unsuback>),
    /// Another connection took this client id over: end without a DISCONNECT (the will is published).
    TakenOver,
    /// The management API kicked this client.
    Kick,
    /// Forget the cached ACL decision for one topic.
    CleanAclCache(Box<str>),
    /// The rest of a packet a publisher began to write straight to the socket (see `outbox.rs`): the
    /// next bytes this connection writes.
    Unsent(Box<[u8]>),
}

/// Topic and payload bytes of the deliveries one outbox may hold: past this, as past its limit of
/// entries, new deliveries are refused (and counted as dropped by the router), so a client that stops
/// reading costs bounded memory whatever the size of the messages sent to it.
pub const BYTES_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<OutboxItem>,
    /// What the deliveries in `queue` weigh (see [`BYTES_LIMIT`]).
    bytes: usize,
    /// The connection is waiting for work with room to write, so what is pushed now is taken on its
    /// very next turn. Only then may a publisher wait for that turn.
    idle: bool,
    /// A publisher waiting for the connection's next turn.
    waiter: Option<Waker>,
    /// How many times the connection has taken the queue: a publisher waits only while what it
    /// pushed has not been taken yet, since the turn after a take may already have passed.
    takes: u64,
    /// Idle with nothing unsent: a lone message may be written straight to the socket.
    drained: bool,
    /// Where such writes go; forgotten when the connection ends.
    direct: Option<DirectTarget>,
    /// The connection's inflight window is full: QoS 1 and 2 deliveries could only join its session
    /// queue, so they need not wake it while fewer than this many wait (see [`OutboxReceiver::stall`]).
    stalled: Option<usize>,
    /// The connection has been woken since it last took the queue.
    woken: bool,
    /// Deliveries queued without a wake-up since the last take: in the session's queue, as far as
    /// the sessions API is concerned.
    deferred: usize,
    /// What the connection holds beyond its inflight window, once it has held anything (boxed: most
    /// connections never do).
    backlog: Option<Box<Backlog>>,
    /// The connection is itself waiting for room at another's: nobody waits for it meanwhile.
    waiting_for_room: bool,
}

/// How long a connection's client may acknowledge nothing while it has a backlog before publishers
/// stop waiting for it (see the module's documentation).
pub const STUCK_AFTER: Duration = Duration::from_secs(1);

/// What a connection told its outbox of its backlog at its last turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogReport {
    /// Deliveries in its session queue.
    pub held: usize,
    /// Its session queue's limit (0: it keeps no queue, and is never waited for).
    pub limit: usize,
    /// Acknowledgements its client has sent so far (wrapping).
    pub acked: u32,
    /// Its inflight window is full.
    pub stalled: bool,
}

impl BacklogReport {
    fn clear(&self) -> bool {
        self.held == 0 && !self.stalled
    }
}

#[derive(Debug)]
struct Backlog {
    report: BacklogReport,
    /// When `report.acked` last moved (or the backlog began).
    progress_at: Instant,
    /// Publishers waiting for room.
    waiters: Vec<Waker>,
}

impl Backlog {
    /// A backlog that begins now, nobody waiting on it yet.
    fn new(report: BacklogReport) -> Box<Backlog> {
        Box::new(Backlog { report, progress_at: Instant::now(), waiters: Vec::new() })
    }
}

impl State {
    /// Deliveries the connection has yet to send: in its session queue and here.
    fn backlog_len(&self) -> usize {
        self.backlog.as_ref().map_or(0, |b| b.report.held) + self.queue.len()
    }

    /// Whether a QoS 1 or 2 publisher should wait for this connection before routing more: its
    /// backlog is past three quarters of its session queue's limit and its client still acknowledges.
    /// (The quarter left is for what publishers route before they see it.)
    fn congested(&self) -> bool {
        self.backlog.as_ref().is_some_and(|b| {
            b.report.limit > 0
                && !self.waiting_for_room
                && self.backlog_len() >= b.report.limit * 3 / 4
                && b.progress_at.elapsed() < STUCK_AFTER
        })
    }

    /// Whether a publisher waiting for room may go on: the backlog is down to half the limit, or the
    /// client stopped acknowledging.
    fn has_room(&self) -> bool {
        match &self.backlog {
            Some(b) => {
                self.waiting_for_room
                    || self.backlog_len() < b.report.limit / 2
                    || b.progress_at.elapsed() >= STUCK_AFTER
            }
            None => true,
        }
    }
}

impl State {
    /// Where a lone message may be written right now: the connection is drained and nothing is queued
    /// that would have to go first.
    fn direct_target(&self) -> Option<&DirectTarget> {
        self.direct.as_ref().filter(|_| self.drained && self.queue.is_empty())
    }
}

#[derive(Debug)]
struct DirectTarget {
    socket: SocketHandle,
    /// The session's figures, which count a message written here as delivered.
    stats: Arc<SessionStats>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// The connection's task, while it waits for something to be queued.
    waker: AtomicWaker,
    receiver_gone: AtomicBool,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a queue that is still a valid queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The router's end.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub conn_id: u64,
    inner: Arc<Inner>,
}

/// The connection's end.
#[derive(Debug)]
pub struct OutboxReceiver {
    inner: Arc<Inner>,
}

pub fn outbox(conn_id: u64) -> (Outbox, OutboxReceiver) {
    let inner = Arc::new(Inner::default());
    (Outbox { conn_id, inner: inner.clone() }, OutboxReceiver { inner })
}

/// Why something was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `limit` entries, or [`BYTES_LIMIT`] bytes, already.
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
    /// Queued without a wake-up for a connection stalled on a full inflight window: it takes the
    /// queue once acknowledgements make room.
    Deferred,
    /// Queued (as `Queued` or `Deferred`) for a connection whose backlog is past the point where its
    /// publishers should wait for [`Outbox::room`] before routing more.
    Congested,
}

/// What [`Outbox::deliver_direct`] did.
#[derive(Debug)]
pub enum Direct {
    /// Written to the socket (all of it, or a part with the rest queued first for the connection).
    Written { packet: Packet, size: usize },
    /// Queued, as [`Outbox::push_bounded`] would have.
    Pushed(Pushed),
}

/// What a connection is doing at a turn of its loop (see [`OutboxReceiver::turn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Handling something; it may itself wait for another connection's turn.
    Busy,
    /// Waiting for work, with room to write.
    Idle,
    /// Waiting for work with nothing unsent: a lone message may be written straight to its socket.
    Drained,
}

/// Which take of the queue a push will be part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Outbox {
    /// Queues unless the queue already holds `limit` entries or [`BYTES_LIMIT`] bytes.
    pub fn push_bounded(&self, item: OutboxItem, limit: usize) -> Result<Pushed, Refused> {
        self.push(item, Some(limit))
    }

    /// Queues whatever the length (control messages, which must not be lost).
    pub fn push(&self, item: OutboxItem, limit: Option<usize>) -> Result<Pushed, Refused> {
        if self.inner.receiver_gone.load(Ordering::Acquire) {
            return Err(Refused::Gone);
        }
        self.push_locked(self.inner.state(), item, limit, 0)
    }

    /// Queues a routed delivery as [`Outbox::push_bounded`] does; past three quarters of `queue_limit` (the
    /// connection's session queue limit) of backlog, says the connection is congested, even before
    /// the connection has told of a backlog itself.
    pub fn push_delivery(&self, delivery: Delivery, limit: usize, queue_limit: usize) -> Result<Pushed, Refused> {
        if self.inner.receiver_gone.load(Ordering::Acquire) {
            return Err(Refused::Gone);
        }
        self.push_locked(self.inner.state(), OutboxItem::Deliver(delivery), Some(limit), queue_limit)
    }

    fn push_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        item: OutboxItem,
        limit: Option<usize>,
        queue_limit: usize,
    ) -> Result<Pushed, Refused> {
        if limit.is_some_and(|l| state.queue.len() >= l || state.bytes >= BYTES_LIMIT) {
            return Err(Refused::Full);
        }
        let (mut deferrable, mut acknowledged) = (false, false);
        if let OutboxItem::Deliver(delivery) = &item {
            state.bytes += delivery.message.topic.len() + delivery.message.payload.len();
            acknowledged = delivery.qos != crate::protocol::QoS::AtMostOnce;
            deferrable = acknowledged && state.stalled.is_some_and(|limit| state.queue.len() < limit);
        }
        state.queue.push_back(item);
        if acknowledged && state.backlog.is_none() && queue_limit > 0 && state.queue.len() >= queue_limit * 3 / 4 {
            // A burst for a connection that has not run since: it has a backlog from now on.
            let report = BacklogReport { held: 0, limit: queue_limit, acked: 0, stalled: false };
            state.backlog = Some(Backlog::new(report));
        }
        let congested = acknowledged && state.congested();
        if state.woken {
            return Ok(if congested { Pushed::Congested } else { Pushed::Queued });
        }
        if deferrable {
            state.deferred += 1;
            return Ok(if congested { Pushed::Congested } else { Pushed::Deferred });
        }
        state.woken = true;
        let (idle, ticket) = (state.idle, Ticket(state.takes));
        drop(state);
        self.inner.waker.wake();
        Ok(match (congested, idle) {
            // Waiting for room waits for the turn too.
            (true, _) => Pushed::Congested,
            (false, true) => Pushed::WokeIdle(ticket),
            (false, false) => Pushed::Queued,
        })
    }

    /// Deliveries waiting here for a connection stalled on its inflight window (see
    /// [`OutboxReceiver::stall`]).
    pub fn deferred_len(&self) -> usize {
        self.inner.state().deferred
    }

    /// Whether the connection is drained right now, so that a lone message would be written on the
    /// spot (a hint for the router: [`Outbox::deliver_direct`] looks again).
    pub fn is_drained(&self) -> bool {
        self.inner.state().direct_target().is_some()
    }

    /// Writes a QoS 0 delivery straight to the connection's socket if the connection is drained, or
    /// else queues it as [`Outbox::push_bounded`] does. The socket gets whatever it takes without
    /// waiting; a rest is queued for the connection to write before anything else.
    pub fn deliver_direct(&self, delivery: Delivery, limit: usize) -> Result<Direct, Refused> {
        debug_assert!(delivery.qos == crate::protocol::QoS::AtMostOnce, "no packet id to give here");
        if self.inner.receiver_gone.load(Ordering::Acquire) {
            return Err(Refused::Gone);
        }
        let state = self.inner.state();
        if let Some(target) = state.direct_target() {
            let packet = Packet::Publish(delivery.publish(0, false));
            if let Some(Written { size, rest }) = target.socket.write_packet(&packet) {
                target.stats.count_delivered();
                if let Some(rest) = rest {
                    // The connection is drained: the rest goes out before anything else it writes.
                    let _ = self.push_locked(state, OutboxItem::Unsent(rest), None, 0);
                }
                return Ok(Direct::Written { packet, size });
            }
            // The socket is full (or failed): the connection finds out when it writes.
        }
        self.push_locked(state, OutboxItem::Deliver(delivery), Some(limit), 0).map(Direct::Pushed)
    }

    /// Waits until this connection's backlog is down to half its session queue's limit, its
    /// client has acknowledged nothing for [`STUCK_AFTER`], or it is gone: what a publisher told
    /// [`Pushed::Congested`] does before it routes more. Callers bound the wait by `STUCK_AFTER`, as
    /// nothing wakes them when a client stops acknowledging.
    pub fn room(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = self.inner.state();
            if state.has_room() || self.inner.receiver_gone.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if let Some(backlog) = &mut state.backlog {
                if !backlog.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    backlog.waiters.push(cx.waker().clone());
                }
            }
            Poll::Pending
        })
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
            let mut state = self.outbox.inner.state();
            let taken = Ticket(state.takes) != self.ticket;
            if taken || !state.idle || self.outbox.inner.receiver_gone.load(Ordering::Acquire) {
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
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Whether anything is queued.
    pub fn has_queued(&self) -> bool {
        !self.inner.state().queue.is_empty()
    }

    /// Registers `cx` to be woken by a push; ready if something is queued.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before looking, so a push after the look wakes the caller.
        self.inner.waker.register(cx.waker());
        if self.inner.state().queue.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Everything queued, in order, in one lock.
    pub fn take_all(&self) -> VecDeque<OutboxItem> {
        let mut batch = VecDeque::new();
        self.take_into(&mut batch);
        batch
    }

    /// Everything queued, in order, in one lock, swapped with `batch` (which must be empty), so that
    /// the two queues' allocations are reused rather than one made per take.
    pub fn take_into(&self, batch: &mut VecDeque<OutboxItem>) {
        debug_assert!(batch.is_empty());
        let mut state = self.inner.state();
        state.takes += 1;
        state.bytes = 0;
        state.woken = false;
        state.deferred = 0;
        // About to write what it took: no more writes from other tasks until its next turn.
        state.drained = false;
        std::mem::swap(&mut state.queue, batch);
        // Until the connection's next turn tells how much of it it kept, all of it counts as held.
        if let Some(backlog) = &mut state.backlog {
            backlog.report.held += batch.len();
        }
    }

    /// Whether the connection's inflight window is full (`Some`, with its session queue's length
    /// limit) or not (`None`). While it is, QoS 1 and 2 deliveries are queued here without waking it:
    /// they could only be moved on to its session queue, and it takes them anyway, before the
    /// acknowledgements that make room, and so in order. Once a session queue's worth waits here, it is
    /// woken to move them on, so that the session queue's drop-oldest rule, not this queue's refusal of
    /// the newest, decides what a client that stopped acknowledging loses. Until they are moved, the
    /// sessions API counts them in the session's `mqueue_len` through [`Outbox::deferred_len`].
    pub fn stall(&self, stalled: Option<usize>) {
        let wake = {
            let mut state = self.inner.state();
            state.stalled = stalled;
            // Deferred deliveries must not outwait the stall.
            let wake = stalled.is_none() && !state.woken && !state.queue.is_empty();
            state.woken |= wake;
            wake
        };
        if wake {
            self.inner.waker.wake();
        }
    }

    /// The connection waits for room at another's outbox (`true`) or is done waiting: meanwhile it
    /// reads nothing, so nobody waits for it, and whoever does goes on.
    pub fn waiting_for_room(&self, waiting: bool) {
        let waiters = {
            let mut state = self.inner.state();
            state.waiting_for_room = waiting;
            state.backlog.as_mut().map(|b| std::mem::take(&mut b.waiters))
        };
        waiters.into_iter().flatten().for_each(Waker::wake);
    }

    /// Lets publishers write lone messages straight to this connection's socket while it is drained.
    pub fn allow_direct(&self, socket: SocketHandle, stats: Arc<SessionStats>) {
        self.inner.state().direct = Some(DirectTarget { socket, stats });
    }

    /// Lets go of the socket [`allow_direct`](Self::allow_direct) gave: lone messages queue again.
    pub fn forbid_direct(&self) {
        let target = self.inner.state().direct.take();
        // Dropped outside the lock.
        drop(target);
    }

    /// The connection is ending: busy from now on, and its socket no longer reachable from here.
    pub fn close(&self) {
        self.turn(Activity::Busy, None);
        let waiters = {
            let mut state = self.inner.state();
            state.direct = None;
            state.backlog.as_mut().map(|b| std::mem::take(&mut b.waiters))
        };
        waiters.into_iter().flatten().for_each(Waker::wake);
    }

    /// Called by the connection at each turn of its loop, with what it is now doing and its backlog
    /// (`None` once it ends). Whatever that is, a publisher waiting for this turn may go on, and
    /// publishers waiting for room may once there is.
    pub fn turn(&self, activity: Activity, report: Option<BacklogReport>) {
        let (waiter, room) = {
            let mut state = self.inner.state();
            state.idle = activity != Activity::Busy;
            state.drained = activity == Activity::Drained;
            match (report, &mut state.backlog) {
                (Some(report), None) if !report.clear() => state.backlog = Some(Backlog::new(report)),
                (Some(report), Some(backlog)) => {
                    // A backlog that begins, or acknowledgements that come, show a client keeping up.
                    if backlog.report.clear() || report.acked != backlog.report.acked {
                        backlog.progress_at = Instant::now();
                    }
                    backlog.report = report;
                }
                _ => {}
            }
            let waited_for = state.backlog.as_ref().is_some_and(|b| !b.waiters.is_empty());
            let room = match waited_for && state.has_room() {
                true => state.backlog.as_mut().map(|b| std::mem::take(&mut b.waiters)),
                false => None,
            };
            (state.waiter.take(), room)
        };
        if let Some(waker) = waiter {
            waker.wake();
        }
        room.into_iter().flatten().for_each(Waker::wake);
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.inner.receiver_gone.store(true, Ordering::Release);
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn order_bound_and_gone() {
        let (tx, rx) = outbox(1);
        tx.push_bounded(OutboxItem::Unsubscribed(Box::new(Unsuback::new(1))), 2).unwrap();
        tx.push_bounded(OutboxItem::Unsubscribed(Box::new(Unsuback::new(2))), 2).unwrap();
        assert_eq!(tx.push_bounded(OutboxItem::Unsubscribed(Box::new(Unsuback::new(3))), 2), Err(Refused::Full));
        tx.push(OutboxItem::Kick, None).unwrap();
        rx.ready().await;
        let all: Vec<_> = rx.take_all().into_iter().collect();
        assert!(
            matches!(&all[..], [OutboxItem::Unsubscribed(a), OutboxItem::Unsubscribed(b), OutboxItem::Kick] if a.pkid == 1 && b.pkid == 2)
        );
        let waiter = tokio::spawn(async move {
            rx.ready().await;
            rx.take_all().len()
        });
        tokio::task::yield_now().await;
        tx.push(OutboxItem::TakenOver, None).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
        assert_eq!(tx.push(OutboxItem::Kick, None), Err(Refused::Gone));
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
        assert_eq!(tx.push(OutboxItem::Kick, None), Ok(Pushed::Queued), "not idle yet");
        rx.take_all();
        rx.turn(Activity::Idle, None);
        let first = tx.push(OutboxItem::Kick, None);
        assert!(matches!(first, Ok(Pushed::WokeIdle(_))));
        assert_eq!(tx.push(OutboxItem::Kick, None), Ok(Pushed::Queued), "a wake-up is on its way already");
        rx.take_all();
        rx.turn(Activity::Busy, None);
        assert_eq!(tx.push(OutboxItem::Kick, None), Ok(Pushed::Queued), "busy");
    }

    #[test]
    fn waiting_for_a_turn_ends_at_the_turn_after_the_take() {
        let (tx, rx) = outbox(1);
        rx.turn(Activity::Idle, None);
        let ticket = ticket(tx.push(OutboxItem::Kick, None));
        let flag = Arc::new(Flag::default());
        let mut wait = tx.wait_turn(ticket);
        assert_eq!(poll_once(&mut wait, &flag), Poll::Pending);
        rx.take_all();
        assert!(!flag.woken(), "taken, but the turn (which writes it) is not over");
        rx.turn(Activity::Idle, None);
        assert!(flag.woken());
        assert_eq!(poll_once(&mut wait, &flag), Poll::Ready(()));
    }

    #[test]
    fn no_waiting_once_taken_or_busy_or_gone() {
        let (tx, rx) = outbox(1);
        rx.turn(Activity::Idle, None);
        // Taken (and its turn over) before the publisher got to wait: a later turn may never come.
        let flag = Arc::new(Flag::default());
        let ticket_a = ticket(tx.push(OutboxItem::Kick, None));
        rx.take_all();
        assert_eq!(poll_once(&mut tx.wait_turn(ticket_a), &flag), Poll::Ready(()));
        // Busy: the connection may itself be waiting for a turn.
        let ticket_b = ticket(tx.push(OutboxItem::Kick, None));
        rx.turn(Activity::Busy, None);
        assert_eq!(poll_once(&mut tx.wait_turn(ticket_b), &flag), Poll::Ready(()));
        // Gone, while waiting.
        rx.take_all();
        rx.turn(Activity::Idle, None);
        let ticket_c = ticket(tx.push(OutboxItem::Kick, None));
        let mut wait = tx.wait_turn(ticket_c);
        assert_eq!(poll_once(&mut wait, &flag), Poll::Pending);
        drop(rx);
        assert!(flag.woken());
        assert_eq!(poll_once(&mut wait, &flag), Poll::Ready(()));
    }

    fn delivery(qos: crate::protocol::QoS) -> OutboxItem {
        let message =
            crate::session::Message::new(bytes::Bytes::from_static(b"t"), bytes::Bytes::from_static(b"p"), qos, false);
        OutboxItem::Deliver(Delivery::new(Arc::new(message), qos, false))
    }

    #[test]
    fn a_backlog_past_three_quarters_of_the_queue_holds_publishers_until_half_is_left() {
        use crate::protocol::QoS;
        let routed = |qos| match delivery(qos) {
            OutboxItem::Deliver(delivery) => delivery,
            _ => unreachable!(),
        };
        let (tx, rx) = outbox(1);
        // A burst before the connection has said anything: congested from 6 of a queue of 8.
        rx.stall(Some(100));
        for _ in 0..5 {
            assert_eq!(tx.push_delivery(routed(QoS::AtLeastOnce), 100, 8), Ok(Pushed::Deferred));
        }
        assert_eq!(tx.push_delivery(routed(QoS::AtLeastOnce), 100, 8), Ok(Pushed::Congested));
        // QoS 0 may be dropped by policy: it never holds a publisher up.
        assert_eq!(tx.push_delivery(routed(QoS::AtMostOnce), 100, 8), Ok(Pushed::Queued));
        let flag = Arc::new(Flag::default());
        let mut room = Box::pin(tx.room());
        assert_eq!(poll_once(&mut room, &flag), Poll::Pending);
        // Taken, all of it counts as held until the connection's turn says what it kept.
        assert_eq!(rx.take_all().len(), 7);
        assert_eq!(poll_once(&mut room, &flag), Poll::Pending);
        let report = |held, acked| Some(BacklogReport { held, limit: 8, acked, stalled: true });
        rx.turn(Activity::Idle, report(5, 0));
        assert!(!flag.woken(), "5 of 8 held: no room yet");
        assert_eq!(tx.push_delivery(routed(QoS::AtLeastOnce), 100, 8), Ok(Pushed::Congested));
        rx.turn(Activity::Idle, report(2, 3));
        assert!(flag.woken(), "3 held of 8: room");
        assert_eq!(poll_once(&mut room, &flag), Poll::Ready(()));
        // A queue of 0 keeps nothing and holds no one up.
        let (tx, _rx) = outbox(2);
        for _ in 0..10 {
            assert!(!matches!(tx.push_delivery(routed(QoS::AtLeastOnce), 100, 0), Ok(Pushed::Congested)));
        }
    }

    #[test]
    fn a_stalled_connection_is_not_woken_for_what_it_could_only_queue() {
        use crate::protocol::QoS;
        let (tx, rx) = outbox(1);
        rx.turn(Activity::Idle, None);
        let flag = Arc::new(Flag::default());
        assert_eq!(poll_once(&mut Box::pin(rx.ready()), &flag), Poll::Pending);
        rx.stall(Some(2));
        assert_eq!(tx.push_bounded(delivery(QoS::AtLeastOnce), 10), Ok(Pushed::Deferred));
        assert_eq!(tx.push_bounded(delivery(QoS::ExactlyOnce), 10), Ok(Pushed::Deferred));
        assert!(!flag.woken());
        // A third would overflow the session queue: the connection must apply its drop-oldest rule.
        assert!(matches!(tx.push_bounded(delivery(QoS::AtLeastOnce), 10), Ok(Pushed::WokeIdle(_))));
        assert!(flag.woken());
        assert_eq!(rx.take_all().len(), 3);
        // QoS 0 deliveries and everything but deliveries wake it as usual.
        for item in [delivery(QoS::AtMostOnce), OutboxItem::Kick] {
            assert!(matches!(tx.push_bounded(item, 10), Ok(Pushed::WokeIdle(_))));
            assert_eq!(rx.take_all().len(), 1);
        }
        // Deferred deliveries wake it as soon as its window has room.
        let flag = Arc::new(Flag::default());
        assert_eq!(poll_once(&mut Box::pin(rx.ready()), &flag), Poll::Pending);
        assert_eq!(tx.push_bounded(delivery(QoS::AtLeastOnce), 10), Ok(Pushed::Deferred));
        assert!(!flag.woken());
        rx.stall(None);
        assert!(flag.woken());
        assert_eq!(rx.take_all().len(), 1);
        assert!(matches!(tx.push_bounded(delivery(QoS::AtLeastOnce), 10), Ok(Pushed::WokeIdle(_))));
    }

    /// A connection's socket as the outbox sees it, and the peer's end to read what it was sent.
    async fn socket_pair() -> (crate::transport::PacketWriter, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let (_reader, writer) = crate::transport::split(crate::transport::Stream::Tcp(ours), 1 << 20, None);
        (writer, peer)
    }

    fn lone(payload: Vec<u8>) -> Delivery {
        let message = crate::session::Message::new(
            bytes::Bytes::from_static(b"t"),
            payload.into(),
            crate::protocol::QoS::AtMostOnce,
            false,
        );
        Delivery::new(Arc::new(message), crate::protocol::QoS::AtMostOnce, false)
    }

    fn is_deliver(item: &OutboxItem) -> bool {
        matches!(item, OutboxItem::Deliver(_))
    }

    #[tokio::test]
    async fn a_lone_message_goes_straight_to_a_drained_socket() {
        use tokio::io::AsyncReadExt;
        let (writer, mut peer) = socket_pair().await;
        let (tx, rx) = outbox(1);
        let stats = Arc::new(SessionStats::default());
        rx.allow_direct(writer.socket().expect("plain TCP"), stats.clone());
        rx.turn(Activity::Drained, None);
        assert!(tx.is_drained());
        let Ok(Direct::Written { size, .. }) = tx.deliver_direct(lone(b"hello".to_vec()), 10) else {
            panic!("not written")
        };
        assert!(rx.take_all().is_empty(), "nothing queued");
        assert_eq!(SessionStats::get(&stats.deliver_msg), 1);
        let mut bytes = vec![0; size];
        peer.read_exact(&mut bytes).await.unwrap();
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let Some(crate::protocol::Packet::Publish(publish)) =
            crate::protocol::decode(&mut buf, crate::protocol::Protocol::V311, 1024).unwrap()
        else {
            panic!("not a PUBLISH")
        };
        assert_eq!(&publish.payload[..], b"hello");
    }

    #[tokio::test]
    async fn only_a_drained_connection_is_written_to_directly() {
        let (writer, _peer) = socket_pair().await;
        let (tx, rx) = outbox(1);
        // No socket yet (before CONNACK).
        rx.turn(Activity::Drained, None);
        assert!(matches!(tx.deliver_direct(lone(vec![1]), 10), Ok(Direct::Pushed(_))));
        rx.take_all();
        rx.allow_direct(writer.socket().expect("plain TCP"), Arc::default());
        // Idle but with bytes unsent, or busy.
        for activity in [Activity::Idle, Activity::Busy] {
            rx.turn(activity, None);
            assert!(!tx.is_drained());
            assert!(matches!(tx.deliver_direct(lone(vec![1]), 10), Ok(Direct::Pushed(_))));
            assert!(rx.take_all().iter().all(is_deliver));
        }
        // Drained, but something is queued already: it must go first.
        rx.turn(Activity::Drained, None);
        tx.push(OutboxItem::Kick, None).unwrap();
        assert!(matches!(tx.deliver_direct(lone(vec![1]), 10), Ok(Direct::Pushed(Pushed::Queued))));
        // Taking the queue ends the drained state: the connection is about to write.
        assert_eq!(rx.take_all().len(), 2);
        assert!(matches!(tx.deliver_direct(lone(vec![1]), 10), Ok(Direct::Pushed(_))));
        rx.take_all();
        // Ended: the socket is forgotten.
        rx.turn(Activity::Drained, None);
        rx.close();
        assert!(matches!(tx.deliver_direct(lone(vec![1]), 10), Ok(Direct::Pushed(_))));
        assert_eq!(tx.deliver_direct(lone(vec![1]), 1).unwrap_err(), Refused::Full);
        drop(rx);
        assert_eq!(tx.deliver_direct(lone(vec![1]), 10).unwrap_err(), Refused::Gone);
    }

    #[tokio::test]
    async fn the_rest_of_a_partial_write_is_queued_first() {
        use tokio::io::AsyncReadExt;
        let (writer, mut peer) = socket_pair().await;
        let (tx, rx) = outbox(1);
        rx.allow_direct(writer.socket().expect("plain TCP"), Arc::default());
        rx.turn(Activity::Drained, None);
        // More than any socket buffer takes at once.
        let payload: Vec<u8> = (0..32 << 20).map(|i: u32| i as u8).collect();
        let Ok(Direct::Written { size, .. }) = tx.deliver_direct(lone(payload.clone()), 10) else {
            panic!("not written")
        };
        let queued = rx.take_all();
        let [OutboxItem::Unsent(rest)] = &queued.into_iter().collect::<Vec<_>>()[..] else { panic!("no rest queued") };
        let first = size - rest.len();
        assert!(first > 0 && !rest.is_empty());
        let mut bytes = vec![0; first];
        peer.read_exact(&mut bytes).await.unwrap();
        bytes.extend_from_slice(rest);
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let Some(crate::protocol::Packet::Publish(publish)) =
            crate::protocol::decode(&mut buf, crate::protocol::Protocol::V311, 64 << 20).unwrap()
        else {
            panic!("not a PUBLISH")
        };
        assert_eq!(publish.payload, payload);
    }

    #[test]
    fn deliveries_are_bounded_by_bytes_as_well_as_entries() {
        let (tx, rx) = outbox(1);
        let big = || OutboxItem::Deliver(lone(vec![0; BYTES_LIMIT / 4]));
        for _ in 0..4 {
            tx.push_bounded(big(), 100).unwrap();
        }
        assert_eq!(tx.push_bounded(big(), 100), Err(Refused::Full));
        assert!(tx.push(OutboxItem::Kick, None).is_ok(), "control messages are never refused");
        assert_eq!(rx.take_all().len(), 5);
        assert!(tx.push_bounded(big(), 100).is_ok(), "a take empties the count");
    }
}
