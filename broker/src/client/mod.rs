//! One client connection, from CONNECT to the end: authentication, session hand-over with the router,
//! and the packet loop that reads, writes and delivers at the same time.

mod accept;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use midge_shared::control as ctl;
use midge_shared::sys::ClientDisconnected;
use thin_vec::ThinVec;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::task::TaskTracker;

use crate::auth::acl::{Access, AclCache, ClientInfo, Decision};
use crate::auth::Principal;
use crate::cluster::Claim;
use crate::context::Context;
use crate::dormitory::Sleeper;
use crate::metrics::{Metric, CONNECTION_TASK_BYTES};
use crate::ops::control::{ControlJob, Target};
use crate::ops::sys;
use crate::protocol::*;
use crate::router::subscriptions::FastMap;
use crate::router::Fanout;
use crate::router::{Activity, BacklogReport, Direct, Outbox, OutboxItem, OutboxReceiver, Pushed, Ticket, STUCK_AFTER};
use crate::session::ClientId;
use crate::session::{AckResult, Delivery, Message, Resend, Session};
use crate::store::Change;
use crate::transport::{
    self, Connected, ConnectionError, Established, ListenerStats, PacketReader, PacketWriter, WRITE_HIGH_WATER,
};

use accept::{accept_connect, expiry_interval};

/// Why a connection ended; everything but a DISCONNECT from the client (or a broker shutdown)
/// publishes the will.
#[derive(Debug)]
enum Exit {
    Disconnect,
    /// MQTT 5's DISCONNECT 0x04: a normal end that still publishes the will.
    DisconnectWithWill,
    Shutdown,
    TakenOver,
    Kicked,
    KeepaliveTimeout,
    Error(ConnectionError),
    /// The client broke a rule: MQTT 5 is told which one, with the reason code.
    ProtocolViolation(ReasonCode, &'static str),
    /// The store could not keep what this read's acknowledgements promise: they are never sent, and
    /// the connection closes, so the client sends those messages again.
    StoreFailed,
}

impl Exit {
    fn publishes_will(&self) -> bool {
        !matches!(self, Exit::Disconnect | Exit::Shutdown)
    }

    /// What the broker's DISCONNECT to an MQTT 5 client says, if it sends one: not when the client
    /// left by itself or the connection is gone.
    fn disconnect_reason(&self) -> Option<ReasonCode> {
        match self {
            Exit::Disconnect
            | Exit::DisconnectWithWill
            | Exit::Error(ConnectionError::Closed | ConnectionError::Io(_)) => None,
            // What it sent was not kept (a full disk): it may send it again elsewhere or later.
            Exit::StoreFailed => Some(ReasonCode::QuotaExceeded),
            Exit::Shutdown => Some(ReasonCode::ServerShuttingDown),
            Exit::TakenOver => Some(ReasonCode::SessionTakenOver),
            Exit::Kicked => Some(ReasonCode::AdministrativeAction),
            Exit::KeepaliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            Exit::Error(ConnectionError::Decode(e)) => Some(e.reason_code()),
            Exit::ProtocolViolation(code, _) => Some(*code),
        }
    }

    /// What the listener counts it under in `shutdown_count`; a DISCONNECT or a broker shutdown is no
    /// shutdown of the connection's own.
    fn shutdown_reason(&self) -> Option<&'static str> {
        match self {
            Exit::Disconnect | Exit::DisconnectWithWill | Exit::Shutdown => None,
            Exit::TakenOver => Some("discarded"),
            Exit::Kicked => Some("kicked"),
            Exit::KeepaliveTimeout => Some("keepalive_timeout"),
            Exit::Error(ConnectionError::Closed) => Some("closed"),
            Exit::Error(ConnectionError::Io(_)) => Some("socket_error"),
            Exit::Error(ConnectionError::Decode(_)) | Exit::ProtocolViolation(..) => Some("protocol_error"),
            Exit::StoreFailed => Some("store_failed"),
        }
    }

    /// The `reason` of the disconnected event, in EMQ's words where it has them.
    fn reason(&self) -> String {
        match self {
            Exit::Disconnect | Exit::DisconnectWithWill => "normal".into(),
            Exit::Shutdown => "shutdown".into(),
            Exit::TakenOver => "discarded".into(),
            Exit::Kicked => "kicked".into(),
            Exit::KeepaliveTimeout => "keepalive_timeout".into(),
            Exit::Error(ConnectionError::Closed) => "closed".into(),
            Exit::Error(e) => e.to_string(),
            Exit::ProtocolViolation(_, what) => format!("protocol_error: {what}"),
            Exit::StoreFailed => "store_failed".into(),
        }
    }
}

/// How far the store is once it reaches `seq`.
async fn store_reached(ctx: &Context, seq: Option<u64>) -> Result<u64, crate::store::NotDurable> {
    match (&ctx.durable, seq) {
        (Some(durable), Some(seq)) => durable.reached(seq).await,
        _ => Ok(u64::MAX),
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Disconnect => f.write_str("client sent DISCONNECT"),
            Exit::DisconnectWithWill => f.write_str("client sent DISCONNECT with will"),
            Exit::Shutdown => f.write_str("broker shutting down"),
            Exit::TakenOver => f.write_str("taken over by a new connection"),
            Exit::Kicked => f.write_str("kicked through the management API"),
            Exit::KeepaliveTimeout => f.write_str("keepalive timeout"),
            Exit::Error(e) => write!(f, "{e}"),
            Exit::ProtocolViolation(_, what) => write!(f, "protocol violation: {what}"),
            Exit::StoreFailed => f.write_str("the store could not write its messages"),
        }
    }
}

impl From<ConnectionError> for Exit {
    fn from(e: ConnectionError) -> Self {
        Exit::Error(e)
    }
}

impl From<DecodeError> for Exit {
    fn from(e: DecodeError) -> Self {
        Exit::Error(ConnectionError::Decode(e))
    }
}

/// A connection whose CONNECT was accepted, ready to serve. Its state lives in a box of its own: the
/// task that serves it then holds a pointer, not a second copy (a future keeps the value an `.await`
/// produced beside the variable it went into).
pub struct Opened(Box<ClientConnection>);

/// Reads a connection's CONNECT, which must have come by `connect_by` (the connect timeout counts from
/// accept, handshake included), and answers it. Never panics on peer input; what ends a connection
/// here is counted by its listener.
pub async fn open(
    established: Established,
    connect_by: Instant,
    listener: &Arc<ListenerStats>,
    ctx: Arc<Context>,
) -> Option<Opened> {
    match accept_connect(established, connect_by, listener, ctx).await {
        Ok(conn) => Some(Opened(Box::new(conn))),
        Err(reason) => {
            if let Some(reason) = reason {
                listener.shut(reason);
            }
            None
        }
    }
}

impl Opened {
    /// Serves the connection until it ends, holding its listener's `slot` until then. What this
    /// returns is a connection's task while it is busy, so it is kept to the loop's own state; what
    /// happens once (the end) is boxed. Idle, the connection gives its task up and waits in the
    /// dormitory (see `dormitory.rs`), which serves it the same way again once there is work.
    pub fn serve(mut self, slot: Option<OwnedSemaphorePermit>) -> impl std::future::Future<Output = ()> + Send {
        self.0.slot = slot;
        let served = serve_opened(self.0, true);
        CONNECTION_TASK_BYTES.store(std::mem::size_of_val(&served) + SERVED_BYTES, Ordering::Relaxed);
        served
    }
}

/// What a connection keeps beside its task's future: its state's box, and the allocator's header.
const SERVED_BYTES: usize = std::mem::size_of::<ClientConnection>() + 16;

/// Serves a connection until it ends or rests in the dormitory. A connection just opened rests as soon
/// as it is idle: most clients connect and then wait, and a connect storm then reuses a few tasks'
/// memory rather than holding one per connection until the first look.
async fn serve_opened(mut conn: Box<ClientConnection>, just_opened: bool) {
    let mut look_now = just_opened;
    let exit = loop {
        if let Err(e) = conn.plug() {
            break ConnectionError::from(e).into();
        }
        match conn.run(look_now).await {
            Stopped::Ended(exit) => break exit,
            Stopped::Idle => {
                conn.shed();
                look_now = false;
                match conn.unplug() {
                    Ok(true) => {}
                    // Its socket cannot leave the reactor: it keeps its task.
                    Ok(false) => continue,
                    Err(e) => break ConnectionError::from(e).into(),
                }
                let ctx = conn.ctx.clone();
                match ctx.dormitory.admit(conn) {
                    Ok(()) => return,
                    // The dormitory closed meanwhile (the broker is stopping): serve on.
                    Err(back) => conn = back,
                }
            }
        }
    };
    Box::pin(conn.finish(exit)).await;
}

/// How a connection's loop stopped.
enum Stopped {
    Ended(Exit),
    /// Nothing to do for a while, nothing unsent: it may wait in the dormitory.
    Idle,
}

impl Sleeper for ClientConnection {
    fn poll_work(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.outbox.poll_ready(cx)
    }

    fn alarm(&self) -> Option<Instant> {
        (self.keep_alive > 0).then(|| self.last_received + keep_alive_grace(self.keep_alive))
    }

    fn socket(&self) -> Option<std::os::fd::RawFd> {
        self.reader.detached()
    }

    fn wake(self: Box<Self>, tracker: &TaskTracker) {
        tracker.spawn(serve_opened(self, false));
    }
}

/// A deadline that never comes, for a timer that has nothing to wait for.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// How long a client may be silent: 1.5 × its keep-alive (3.1.1 §3.1.2.10).
fn keep_alive_grace(keep_alive: u16) -> Duration {
    Duration::from_millis(keep_alive as u64 * 1500)
}

/// What an MQTT 5 connection keeps beyond a 3.1.1 one; boxed, so other connections pay 8 bytes.
struct V5 {
    /// The topic aliases the client set up, and their topics.
    aliases: FastMap<u16, Bytes>,
    /// The topic aliases the broker set up on its way to the client, by topic; at most
    /// `alias_out_max`, the smaller of `max_topic_alias_out` and what the client accepts.
    aliases_out: FastMap<Bytes, u16>,
    alias_out_max: u16,
    /// The client's maximum packet size: a larger delivery is dropped for it alone.
    max_packet_size: Option<u32>,
    /// A session that began with expiry 0 may not be given one on DISCONNECT (§3.14.2.2.2).
    expiry_was_zero: bool,
}

struct ClientConnection {
    ctx: Arc<Context>,
    /// Present for an MQTT 5 client.
    v5: Option<Box<V5>>,
    info: ClientInfo,
    principal: Principal,
    conn_id: u64,
    keep_alive: u16,
    /// Boxed: most clients set none, and a connection's state is kept for as long as it is open.
    will: Option<Box<LastWill>>,
    session: Box<Session>,
    acl_cache: AclCache,
    reader: PacketReader,
    writer: PacketWriter,
    outbox: OutboxReceiver,
    last_received: Instant,
    /// Publishes read in this batch, routed in one call.
    publishes: ThinVec<Arc<Message>>,
    /// How far the store must be on disk before this read's acknowledgements (PUBACK, PUBREC, SUBACK,
    /// UNSUBACK) go (0: no need to wait).
    durable: u64,
    /// Control requests read in this batch, for the control service.
    control_jobs: ThinVec<ControlJob>,
    /// What was taken from the outbox, being handled; swapped with the outbox's queue at each take.
    batch: VecDeque<OutboxItem>,
    /// What the outbox was last told of a full inflight window (see [`OutboxReceiver::stall`]).
    stalled: Option<usize>,
    /// Acknowledgements of deliveries the client has sent (wrapping): publishers wait for a
    /// backlog that still moves (see `outbox.rs`).
    acks: u32,
    /// A subscription in this read may have added a route the other nodes of a cluster must learn of
    /// before its SUBACK goes.
    routes_added: bool,
    /// The client id as this node holds it in a cluster, given back when the session ends here.
    claim: Claim,
    /// This client in its listener's figures, while it is connected.
    counted: Option<Connected>,
    /// Its place among its listener's `max_clients`, while it is served.
    slot: Option<OwnedSemaphorePermit>,
    /// Something was read or taken from the outbox since the loop last looked: not idle.
    active: bool,
}

/// What a publisher does after routing a read, before it writes its acknowledgements or reads on.
enum Handoff {
    /// No connection got anything: nothing to let go first.
    Nothing,
    /// Among others, this idle subscriber was woken and is certain to take its turn soon: wait for it.
    Wait(Outbox, Ticket),
    /// Subscribers that were busy or had work queued already: yield once.
    Yield,
    /// This subscriber's backlog is past the point where publishers wait for room, and publishes this
    /// read brought are still to be routed (see `outbox.rs`).
    Room(Outbox),
}

/// A drained outbox batch up to this many entries keeps its allocation for the next take.
const KEEP_BATCH: usize = 64;

impl ClientConnection {
    async fn run(&mut self, look_now: bool) -> Stopped {
        let grace = keep_alive_grace(self.keep_alive);
        // Over plain TCP an idle connection may wait in the dormitory: whether it is idle is looked at
        // every `rest_after` (the first time at once if `look_now`), and it is once nothing happened
        // between two looks.
        let rest_after = self.ctx.dormitory.after().filter(|_| self.reader.waits_on_socket());
        let mut look_at = rest_after.map(|after| Instant::now() + if look_now { Duration::ZERO } else { after });
        // When to hurry the store, should the client stay silent while its acknowledgements wait for it.
        let mut hurry_at: Option<Instant> = None;
        let alarm = |conn: &Self, look_at: Option<Instant>, hurry_at: Option<Instant>| {
            let silence = (conn.keep_alive > 0).then(|| conn.last_received + grace);
            silence.into_iter().chain(look_at).chain(hurry_at).min().unwrap_or_else(far_future)
        };
        let timer = sleep_until(alarm(self, look_at, hurry_at));
        tokio::pin!(timer);
        // Made once: a fresh `cancelled()` each turn would register with the token's lock each time.
        let shutdown = self.ctx.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        // A client may send packets right behind CONNECT without waiting for CONNACK (3.1.1 §3.1.4):
        // whatever came in the read that brought CONNECT is handled before waiting for more.
        if self.reader.has_buffered() {
            if let Err(exit) = self.on_read().await {
                return Stopped::Ended(exit);
            }
            if self.hurry_after_silence(&mut hurry_at) {
                timer.as_mut().reset(alarm(self, look_at, hurry_at));
            }
        }
        // Woken in the dormitory by a push: taken before this loop's first turn, which lets a
        // publisher waiting for that turn go on.
        if self.outbox.has_queued() {
            if let Err(exit) = self.on_outbox() {
                return Stopped::Ended(exit);
            }
        }
        loop {
            let stalled = self.session.window_full().then(|| self.session.max_mqueue_len());
            if stalled != self.stalled {
                self.stalled = stalled;
                self.outbox.stall(stalled);
            }
            let backlog = self.writer.pending();
            let report = BacklogReport {
                held: self.session.mqueue_len(),
                limit: self.session.max_mqueue_len(),
                acked: self.acks,
                stalled: stalled.is_some(),
            };
            // Idle: waiting for work with room to write, so a publisher may wait for this turn.
            let activity = match backlog {
                0 => Activity::Drained,
                _ if backlog < WRITE_HIGH_WATER => Activity::Idle,
                _ => Activity::Busy,
            };
            self.outbox.turn(activity, Some(report));
            let (can_write, held) = (self.writer.can_write(), self.writer.held_until());
            tokio::select! {
                _ = &mut cancelled => return Stopped::Ended(Exit::Shutdown),
                read = self.reader.fill(), if backlog < 2 * WRITE_HIGH_WATER => {
                    if let Err(e) = read {
                        return Stopped::Ended(e.into());
                    }
                    if let Err(exit) = self.on_read().await {
                        return Stopped::Ended(exit);
                    }
                    if self.hurry_after_silence(&mut hurry_at) {
                        timer.as_mut().reset(alarm(self, look_at, hurry_at));
                    }
                }
                _ = self.outbox.ready(), if backlog < WRITE_HIGH_WATER => {
                    if let Err(exit) = self.on_outbox() {
                        return Stopped::Ended(exit);
                    }
                }
                written = self.writer.write_some(), if can_write => {
                    if let Err(e) = written {
                        return Stopped::Ended(e.into());
                    }
                }
                reached = Box::pin(store_reached(&self.ctx, held)), if held.is_some() => {
                    match reached {
                        Ok(durable) => {
                            self.writer.release(durable);
                            if let Err(e) = self.writer.try_flush() {
                                return Stopped::Ended(e.into());
                            }
                        }
                        Err(_) => return Stopped::Ended(Exit::StoreFailed),
                    }
                }
                _ = &mut timer, if self.keep_alive > 0 || look_at.is_some() || hurry_at.is_some() => {
                    let now = Instant::now();
                    if hurry_at.is_some_and(|at| now >= at) {
                        hurry_at = None;
                        if let (Some(journal), Some(_)) = (&self.ctx.journal, self.writer.held_until()) {
                            journal.hurry();
                        }
                    }
                    if self.keep_alive > 0 {
                        // Held back by the rate limit, the client is not silent: we are not listening.
                        // Its silence is counted from when we listen again.
                        if let Some(resume) = self.reader.throttled_until() {
                            self.last_received = self.last_received.max(resume);
                        }
                        if now >= self.last_received + grace {
                            return Stopped::Ended(Exit::KeepaliveTimeout);
                        }
                    }
                    if let (Some(at), Some(after)) = (look_at, rest_after) {
                        if now >= at {
                            if !std::mem::take(&mut self.active) && self.may_rest() {
                                return Stopped::Idle;
                            }
                            look_at = Some(now + after);
                        }
                    }
                    timer.as_mut().reset(alarm(self, look_at, hurry_at));
                }
            }
        }
    }

    /// After a read whose replies wait for the store: the client is told once the store keeps what
    /// it sent, and one that waits for that (its window full) should not wait out the commit
    /// interval, so the store is hurried if it stays silent a while (`hurry_at`). The deadline moves
    /// on at every read, but the timer is set only when none was pending (true: set it now); one that
    /// fires early finds the alarm not yet due and sets itself again.
    fn hurry_after_silence(&self, hurry_at: &mut Option<Instant>) -> bool {
        let quiet = self.ctx.journal.as_ref().and_then(|j| j.quiet_before_hurry());
        match (quiet, self.writer.held_until()) {
            (Some(quiet), Some(_)) => hurry_at.replace(Instant::now() + quiet).is_none(),
            _ => false,
        }
    }

    /// Handles what one read brought, routes its publishes and writes the replies.
    async fn on_read(&mut self) -> Result<(), Exit> {
        // Busy until the next turn: nobody waits for this connection while it may wait, and nobody
        // writes to its socket while it may write.
        self.outbox.turn(Activity::Busy, None);
        self.last_received = Instant::now();
        self.active = true;
        if self.stalled.is_some() {
            // Deliveries that waited in the outbox for the window are older than anything in this
            // read and go behind what the session queued, before acknowledgements make room.
            self.take_outbox()?;
        }
        let start = self.writer.queued();
        let routed = self.handle_buffered()?;
        if !self.control_jobs.is_empty() {
            Box::pin(self.submit_control_jobs()).await?;
        }
        // The SUBACKs wait in the outbox, untaken until this returns.
        if std::mem::take(&mut self.routes_added) {
            Box::pin(self.ctx.cluster.routes_known()).await;
        }
        // Let the subscribers' connections write what this read routed before this one writes its own
        // acknowledgements or reads more, as a single-threaded broker would. Acknowledgements first
        // would make deliveries wait behind a syscall that only tells the publisher all is well;
        // reading on would let publishers crowd out the writes of the subscribers they feed, and past
        // saturation most of what was read would be dropped at full outboxes instead of delivered.
        let mut routed = routed;
        loop {
            match routed {
                Handoff::Nothing => {}
                Handoff::Wait(subscriber, ticket) => subscriber.wait_turn(ticket).await,
                Handoff::Yield => tokio::task::yield_now().await,
                // Neither routing the rest nor reading more until the subscriber has room: the client's
                // writes back up into its own socket, and the subscriber's pace becomes its pace.
                Handoff::Room(subscriber) => {
                    self.outbox.waiting_for_room(true);
                    let _ = tokio::time::timeout(STUCK_AFTER, subscriber.room()).await;
                    self.outbox.waiting_for_room(false);
                    routed = self.flush_publishes();
                    continue;
                }
            }
            break;
        }
        // What this read acknowledges is kept before the client is told so: its replies (and what is
        // queued behind them) wait in the write buffer for the store, while the connection reads on.
        let seq = std::mem::take(&mut self.durable);
        if self.ctx.durable.is_some() && seq > 0 {
            self.writer.hold_from(start, seq);
        }
        self.hurry_if_window_waits();
        Ok(self.writer.try_flush()?)
    }

    /// Handles everything waiting in the outbox, taken in one lock so it leaves in the same write.
    fn on_outbox(&mut self) -> Result<(), Exit> {
        self.active = true;
        self.take_outbox()?;
        self.hurry_if_window_waits();
        Ok(self.writer.try_flush()?)
    }

    /// A kept session's QoS 2 deliveries and PUBRELs wait for the store before they leave, and while
    /// they wait they hold their places in the inflight window. Once the window is full, the rest of
    /// the commit interval would only keep it shut (nothing more can be sent to fill the commit), so
    /// the store is asked to commit now: under `sync = interval` a persistent subscriber then takes a
    /// window per two commits as fast as the disk makes them, not per two intervals.
    fn hurry_if_window_waits(&self) {
        if let Some(journal) = &self.ctx.journal {
            if self.writer.held_until().is_some() && self.session.window_full() && self.keeps_session() {
                journal.hurry();
            }
        }
    }

    fn take_outbox(&mut self) -> Result<(), Exit> {
        self.outbox.take_into(&mut self.batch);
        while let Some(item) = self.batch.pop_front() {
            if let Err(exit) = self.handle_item(item) {
                // Deliveries behind a takeover or kick stay with the session.
                for rest in std::mem::take(&mut self.batch) {
                    if let OutboxItem::Deliver(d) = rest {
                        self.session.enqueue_offline(d);
                    }
                }
                return Err(exit);
            }
        }
        if self.batch.capacity() > KEEP_BATCH {
            self.batch = VecDeque::new();
        }
        self.forget_kept();
        Ok(())
    }

    /// Whether the connection may wait in the dormitory: everything read is handled, nothing waits to be
    /// written, and only its socket, its outbox or its keep-alive can give it work.
    fn may_rest(&mut self) -> bool {
        self.reader.waits_on_socket()
            && self.writer.pending() == 0
            && self.publishes.is_empty()
            && self.control_jobs.is_empty()
            && self.batch.is_empty()
    }

    /// Lets other tasks write lone messages straight to its socket while it waits (see `outbox.rs`):
    /// only over plain TCP, and not for the hidden connection, whose deliveries count nowhere (a
    /// direct delivery is counted by the task that writes it).
    fn allow_direct_writes(&self) {
        // A client with a maximum packet size has each delivery measured first, and one with topic
        // aliases has each given its alias, by its own task.
        let measured = self.v5.as_ref().is_some_and(|v5| v5.max_packet_size.is_some() || v5.alias_out_max > 0);
        if let (Some(socket), false, false) = (self.writer.socket(), measured, self.hidden()) {
            self.outbox.allow_direct(socket, self.session.stats.clone());
        }
    }

    /// Takes its socket off tokio's reactor, to rest (see `transport::detach`): `false` if it cannot.
    /// The outbox lets go of the socket first; lone messages for it then queue and wake it.
    fn unplug(&mut self) -> std::io::Result<bool> {
        self.outbox.forbid_direct();
        let detached = transport::detach(&mut self.reader, &mut self.writer)?.is_some();
        if !detached {
            self.allow_direct_writes();
        }
        Ok(detached)
    }

    /// Puts a socket taken off the reactor back, once it has a task again.
    fn plug(&mut self) -> std::io::Result<()> {
        if transport::attach(&mut self.reader, &mut self.writer)? {
            self.allow_direct_writes();
        }
        Ok(())
    }

    /// Lets go of what only a busy connection needs, before it waits in the dormitory.
    fn shed(&mut self) {
        self.publishes = ThinVec::new();
        self.control_jobs = ThinVec::new();
        self.batch = VecDeque::new();
        self.reader.release_if_drained();
        self.writer.release_if_drained();
    }

    /// Publishes the will if the exit calls for it, flushes what it can, hands the session back and
    /// counts the exit in its listener's figures.
    async fn finish(mut self, exit: Exit) {
        // Whoever waits for this connection's next turn need not wait any longer, and the socket is
        // this task's alone again.
        self.outbox.close();
        // Publishes read before whatever ended the connection (a DISCONNECT in the same read) still go.
        self.route_all_publishes();
        let _ = self.submit_control_jobs().await;
        match &exit {
            Exit::Disconnect | Exit::DisconnectWithWill | Exit::Shutdown | Exit::TakenOver => {
                tracing::debug!(client_id = %self.info.client_id.escape_debug(), reason = %exit, "disconnected")
            }
            _ => tracing::info!(client_id = %self.info.client_id.escape_debug(), reason = %exit, "connection closed"),
        }
        if let Some(will) = self.will.take() {
            let message = if exit.publishes_will() { self.will_message(&will) } else { None };
            let cluster = &self.ctx.cluster;
            match (message, will.delay_interval) {
                // The router holds it until the delay passes or the session ends, and drops it if the
                // client resumes the session first; other nodes keep a copy, due then, in case this
                // node dies meanwhile.
                (Some(message), delay) if delay > 0 => {
                    let delay = Duration::from_secs(delay.into());
                    cluster.defer_will(&self.info.client_id, self.conn_id, &message, delay);
                    self.ctx.router.will_after(self.info.client_id.clone(), message, delay)
                }
                (message, _) => {
                    if let Some(message) = cluster.end_will(&self.info.client_id, self.conn_id, message) {
                        self.ctx.router.publish(message);
                    }
                }
            }
        }
        if self.ctx.plugins.presence_enabled() && !self.hidden() {
            let event = ClientDisconnected {
                clientid: self.info.client_id.to_string(),
                username: self.username(),
                reason: exit.reason(),
                ts: chrono::Utc::now().timestamp(),
            };
            let message = sys::disconnected_event(&self.ctx.config.node, &event);
            self.ctx.router.publish(message);
        }
        if matches!(exit, Exit::StoreFailed) {
            // The buffer holds acknowledgements of what was not kept: never sent.
            self.writer.drop_held();
        }
        if let (Some(_), Some(reason)) = (&self.v5, exit.disconnect_reason()) {
            // A reason string where the code alone would leave the client guessing what it got wrong.
            let reason_string = match &exit {
                Exit::ProtocolViolation(_, what) => Some(what.to_string()),
                Exit::Error(ConnectionError::Decode(e)) => Some(e.to_string()),
                Exit::StoreFailed => Some("the broker could not keep what this connection sent".to_string()),
                _ => None,
            };
            self.send(&Packet::Disconnect(Disconnect { reason_string, ..Disconnect::new(reason) }));
        }
        let ClientConnection { ctx, info, conn_id, session, mut writer, outbox, claim, counted, .. } = self;
        let client_id = info.client_id;
        // A session that ends with its connection gives its client id back to the cluster; a kept one
        // holds it here, and one taken over is another node's already.
        let ended = session.expiry == Some(Duration::ZERO) && !matches!(exit, Exit::TakenOver);
        let broken = matches!(exit, Exit::Error(ConnectionError::Closed | ConnectionError::Io(_)));
        // Replies still waiting for the store go once it is there, or never.
        if let (Some(seq), Some(durable), false) = (writer.held_through(), &ctx.durable, broken) {
            match timeout(Duration::from_millis(500), durable.reached(seq)).await {
                Ok(Ok(reached)) => writer.release(reached),
                _ => writer.drop_held(),
            }
        }
        if writer.pending() > 0 && !broken {
            let _ = timeout(Duration::from_millis(500), writer.flush()).await;
        }
        writer.shutdown().await;
        // The management connection is not counted.
        if let (Some(counted), Some(reason)) = (&counted, exit.shutdown_reason()) {
            counted.listener().shut(reason);
        }
        ctx.router.disconnected(client_id.clone(), conn_id, session, outbox);
        if ended {
            Box::pin(ctx.cluster.release(&client_id, claim)).await;
        } else if matches!(exit, Exit::TakenOver) && !ctx.cluster.holds(&client_id, claim) {
            // Taken over by another node: the session it parked here goes on there.
            ctx.cluster.taken_over(&ctx.router, &client_id);
        }
    }

    fn username(&self) -> String {
        self.info.username.clone().unwrap_or_else(|| "undefined".into())
    }

    /// The will as it is published, if the ACL lets this client publish on its topic.
    fn will_message(&mut self, will: &LastWill) -> Option<Arc<Message>> {
        if self.check_publish(&will.topic) != Decision::Allow {
            return None;
        }
        let topic = will.topic.clone().into_bytes().into();
        let (payload, properties) = (will.payload.clone(), will.properties.clone());
        Some(Arc::new(Message::with_properties(topic, payload, will.qos, will.retain, properties, self.conn_id)))
    }

    /// The sidecar's own connection, which users never see: no listing, no metric, no event.
    fn hidden(&self) -> bool {
        self.principal == Principal::Management
    }

    /// Queues a PUBLISH, unless it is larger than the client's maximum packet size (MQTT 5): then it is
    /// dropped for this client alone, counted, and its delivery treated as complete (§3.1.2.11.4).
    fn send_publish(&mut self, mut publish: Publish) {
        self.alias_topic(&mut publish);
        let max = self.v5.as_ref().and_then(|v5| v5.max_packet_size);
        if max.is_some_and(|max| publish_len(&publish, Protocol::V5) > max as usize) {
            tracing::debug!(client_id = %self.info.client_id.escape_debug(), "message over the client's maximum packet size dropped");
            self.ctx.metrics.inc(Metric::MessagesDropped);
            if publish.qos != QoS::AtMostOnce {
                self.session.discard(publish.pkid);
                while let Some(next) = self.session.next_queued() {
                    self.send_publish(next);
                }
            }
            return;
        }
        self.hold_until_kept(&publish);
        self.send(&Packet::Publish(publish));
    }

    /// A kept session's QoS 2 delivery leaves once the store has it. Should the broker crash, it then
    /// knows the packet id is in use at the client: it sends the message again under that id, which
    /// the client recognises, and sends no other message under it. Sent before, the message could be
    /// lost with the crash while the client still held its id, and whatever the store numbered the
    /// same afterwards would reach the client as its duplicate, to be dropped.
    fn hold_until_kept(&mut self, publish: &Publish) {
        if publish.qos != QoS::ExactlyOnce {
            return;
        }
        let (Some(journal), Some(durable)) = (&self.ctx.journal, &self.ctx.durable) else { return };
        let id = self.session.kept_id(publish.pkid);
        if id != 0 && journal.waits() && durable.now() < id {
            self.writer.hold_from(self.writer.queued(), id);
        }
    }

    /// Sends a topic the client has an alias for as the alias alone, and sets up aliases while there is
    /// room (MQTT 5 §3.3.2.3.4). First come, first aliased: the topics a client hears first are, in
    /// practice, the ones it keeps hearing.
    fn alias_topic(&mut self, publish: &mut Publish) {
        let Some(v5) = self.v5.as_mut().filter(|v5| v5.alias_out_max > 0) else { return };
        let (alias, known) = match v5.aliases_out.get(&publish.topic) {
            Some(alias) => (*alias, true),
            None if v5.aliases_out.len() < v5.alias_out_max as usize => {
                let alias = v5.aliases_out.len() as u16 + 1;
                v5.aliases_out.insert(publish.topic.clone(), alias);
                (alias, false)
            }
            None => return,
        };
        Arc::make_mut(publish.properties.get_or_insert_with(Default::default)).topic_alias = Some(alias);
        if known {
            publish.topic = Bytes::new();
        }
    }

    /// Queues a packet for the client and counts it, except `$SYS` publishes, which count in nothing.
    fn send(&mut self, packet: &Packet) {
        let size = self.writer.queue(packet);
        if self.hidden() {
            return;
        }
        if let Packet::Publish(p) = packet {
            if p.topic.starts_with(b"$SYS/") {
                return;
            }
        }
        self.ctx.metrics.packet_sent(packet, size);
    }

    /// Handles every whole packet read so far; returns whom the publishes among them reached.
    fn handle_buffered(&mut self) -> Result<Handoff, Exit> {
        while let Some((packet, size)) = self.reader.next_buffered()? {
            let sys = matches!(&packet, Packet::Publish(p) if p.topic.starts_with(b"$SYS/"));
            if !sys && !self.hidden() {
                self.ctx.metrics.packet_received(&packet, size);
            }
            self.handle_packet(packet)?;
        }
        let routed = self.flush_publishes();
        self.reader.release_if_drained();
        self.forget_kept();
        Ok(routed)
    }

    /// Tells the store which kept deliveries the session is done with (acknowledged, dropped, expired),
    /// and which incoming QoS 2 ids it gave up on.
    fn forget_kept(&mut self) {
        if let Some(journal) = &self.ctx.journal {
            journal.forget(self.session.take_forgotten());
            for pkid in self.session.take_rel_given_up() {
                journal.record(Change::RelCompleted { client_id: self.info.client_id.clone(), pkid });
            }
        }
    }

    /// Records a change to this client's kept session, if the store keeps it; this read's replies
    /// wait for it.
    fn record_kept(&mut self, change: impl FnOnce(ClientId) -> Change) {
        if let (true, Some(journal)) = (self.keeps_session(), &self.ctx.journal) {
            self.durable = self.durable.max(journal.record(change(self.info.client_id.clone())));
        }
    }

    /// Whether the store keeps this client's session.
    fn keeps_session(&self) -> bool {
        self.ctx.journal.is_some() && self.session.persistent() && !self.hidden()
    }

    /// Hands the management principal's control requests to the control service.
    async fn submit_control_jobs(&mut self) -> Result<(), Exit> {
        for job in std::mem::take(&mut self.control_jobs) {
            self.ctx.control.send(job).await.map_err(|_| Exit::Shutdown)?;
        }
        Ok(())
    }

    /// Routes every publish gathered so far, without waiting for room at congested subscribers:
    /// before another router request, so the router sees this client's requests in the order they
    /// arrived, and when the connection ends.
    fn route_all_publishes(&mut self) {
        while !self.publishes.is_empty() {
            self.flush_publishes();
        }
    }

    /// Hands the publishes gathered so far to the router, up to one for a congested subscriber (see
    /// `outbox.rs`), whose rest waits for room at it.
    fn flush_publishes(&mut self) -> Handoff {
        if self.publishes.is_empty() {
            return Handoff::Nothing;
        }
        let fanout = self.ctx.router.publish_batch(&mut self.publishes, &self.info.client_id);
        self.durable = self.durable.max(fanout.durable);
        match fanout {
            Fanout { congested: Some(subscriber), .. } => Handoff::Room(subscriber),
            Fanout { direct: Some((subscriber, delivery)), .. } => self.write_direct(subscriber, delivery),
            Fanout { woke: Some((subscriber, ticket)), .. } => Handoff::Wait(subscriber, ticket),
            Fanout { pushed: true, .. } => Handoff::Yield,
            Fanout { .. } => Handoff::Nothing,
        }
    }

    /// Writes a lone QoS 0 delivery straight to the socket of a subscriber with nothing to do, as a
    /// single-threaded broker would, or queues it if the subscriber got busy meanwhile (see `outbox.rs`).
    /// This task writes, not the router: the router's lock is let go by now.
    fn write_direct(&self, subscriber: Outbox, delivery: Delivery) -> Handoff {
        match subscriber.deliver_direct(delivery, self.ctx.router.outbox_limit()) {
            Ok(Direct::Written { packet, size }) => {
                self.ctx.metrics.packet_sent(&packet, size);
                Handoff::Nothing
            }
            Ok(Direct::Pushed(Pushed::WokeIdle(ticket))) => Handoff::Wait(subscriber, ticket),
            // A QoS 0 delivery is never deferred.
            Ok(Direct::Pushed(Pushed::Queued | Pushed::Deferred | Pushed::Congested)) => Handoff::Yield,
            Err(refused) => {
                tracing::debug!(conn_id = subscriber.conn_id, ?refused, "message dropped");
                self.ctx.metrics.inc(Metric::MessagesDropped);
                Handoff::Nothing
            }
        }
    }

    fn handle_packet(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish)?,
            Packet::Puback(Ack { pkid, .. }) => {
                let result = self.session.puback(pkid);
                self.acked(result, Metric::PacketsPubackMissed);
            }
            Packet::Pubrec(Ack { pkid, .. }) => match self.session.pubrec(pkid) {
                AckResult::Done | AckResult::Repeated => {
                    // A kept delivery's PUBREL goes once the store knows it is past PUBREC: should the
                    // broker restart, it sends the PUBREL again, never the PUBLISH.
                    let id = self.session.kept_id(pkid);
                    if let (true, Some(journal)) = (id != 0, &self.ctx.journal) {
                        self.durable = self.durable.max(journal.record(Change::Released(id)));
                    }
                    self.send(&Packet::Pubrel(Ack::new(pkid)));
                }
                AckResult::Missed => self.ctx.metrics.inc(Metric::PacketsPubrecMissed),
            },
            Packet::Pubcomp(Ack { pkid, .. }) => {
                let result = self.session.pubcomp(pkid);
                self.acked(result, Metric::PacketsPubcompMissed);
            }
            Packet::Pubrel(Ack { pkid, .. }) => {
                if self.session.pubrel(pkid) == AckResult::Missed {
                    self.ctx.metrics.inc(Metric::PacketsPubrelMissed);
                } else {
                    // Once the client has our PUBCOMP it may use the id for a new message: the store
                    // must not remember it as awaiting by then.
                    self.record_kept(|client_id| Change::RelCompleted { client_id, pkid });
                }
                // Always completed, so a client that lost our PUBCOMP can finish.
                self.send(&Packet::Pubcomp(Ack::new(pkid)));
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe)?,
            Packet::Disconnect(disconnect) => return Err(self.handle_disconnect(disconnect)),
            Packet::Unsubscribe(unsubscribe) => {
                self.route_all_publishes();
                let durable = self.ctx.router.unsubscribe(
                    self.info.client_id.clone(),
                    self.conn_id,
                    unsubscribe.pkid,
                    unsubscribe.filters,
                );
                self.durable = self.durable.max(durable);
            }
            Packet::Pingreq => self.send(&Packet::Pingresp),
            Packet::Connect(_) => return Err(Exit::ProtocolViolation(ReasonCode::ProtocolError, "second CONNECT")),
            // No authentication method is configured, so no AUTH exchange was begun (MQTT 5 §4.12).
            Packet::Auth(_) => {
                return Err(Exit::ProtocolViolation(ReasonCode::ProtocolError, "AUTH without an authentication method"))
            }
            Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => {
                return Err(Exit::ProtocolViolation(ReasonCode::ProtocolError, "server-to-client packet from a client"))
            }
        }
        Ok(())
    }

    fn acked(&mut self, result: AckResult, missed: Metric) {
        match result {
            AckResult::Done | AckResult::Repeated => {
                self.acks = self.acks.wrapping_add(1);
                while let Some(publish) = self.session.next_queued() {
                    self.send_publish(publish);
                }
            }
            AckResult::Missed => self.ctx.metrics.inc(missed),
        }
    }

    fn handle_publish(&mut self, mut publish: Publish) -> Result<(), Exit> {
        if self.v5.is_some() {
            self.resolve_topic_alias(&mut publish)?;
        }
        let topic = publish.topic_str();
        if !topic::valid_topic_name(topic) {
            return Err(Exit::ProtocolViolation(ReasonCode::TopicNameInvalid, "invalid topic name in PUBLISH"));
        }
        if topic::broker_owned(topic) {
            self.handle_reserved_publish(publish);
            return Ok(());
        }
        let refused = if self.check_publish(topic) == Decision::Deny {
            tracing::debug!(client_id = %self.info.client_id.escape_debug(), topic = %topic.escape_debug(), "publish denied by ACL");
            Some(ReasonCode::NotAuthorized)
        } else if !payload_format_valid(&publish) {
            Some(ReasonCode::PayloadFormatInvalid)
        } else {
            None
        };
        let pkid = publish.pkid;
        // 3.1.1 acknowledges a refused message as any other; 5.0 says why (and a refused QoS 2 flow
        // ends at its PUBREC).
        let reason = refused.unwrap_or(ReasonCode::Success);
        let mut kept_flow = 0;
        let route = match publish.qos {
            QoS::AtMostOnce => refused.is_none(),
            QoS::AtLeastOnce => {
                self.send(&Packet::Puback(Ack { pkid, reason }));
                refused.is_none()
            }
            QoS::ExactlyOnce if refused.is_some() && self.v5.is_some() => {
                self.send(&Packet::Pubrec(Ack { pkid, reason }));
                false
            }
            QoS::ExactlyOnce => match self.session.incoming_qos2(pkid) {
                Some(is_new) => {
                    let route = is_new && refused.is_none();
                    // A kept session's packet id is kept with the message's deliveries, by the router
                    // (see `publish_batch`); that of a message routed nowhere, here.
                    if route && self.keeps_session() {
                        kept_flow = pkid;
                    } else if is_new {
                        self.record_kept(|client_id| Change::AwaitingRel { client_id, pkid });
                    }
                    self.send(&Packet::Pubrec(Ack::new(pkid)));
                    route
                }
                None if self.v5.is_some() => {
                    // More than the receive maximum in its CONNACK allowed.
                    return Err(Exit::ProtocolViolation(
                        ReasonCode::ReceiveMaximumExceeded,
                        "more QoS 2 messages awaiting PUBREL than the receive maximum",
                    ));
                }
                None => {
                    tracing::warn!(client_id = %self.info.client_id.escape_debug(), "too many QoS 2 messages awaiting PUBREL; dropped");
                    self.ctx.metrics.inc(Metric::MessagesQos2Dropped);
                    false
                }
            },
        };
        if route {
            let mut message = Message::published(publish, self.conn_id);
            message.kept_flow = kept_flow;
            self.publishes.push(Arc::new(message));
        }
        Ok(())
    }

    /// MQTT 5 topic aliases (§3.3.2.3.4): an alias with a topic sets it up, an alias alone stands for
    /// the topic it was set up with.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<(), Exit> {
        let Some(properties) = &publish.properties else { return Ok(()) };
        if !properties.subscription_identifiers.is_empty() {
            return Err(Exit::ProtocolViolation(
                ReasonCode::ProtocolError,
                "subscription identifier in a PUBLISH to the server",
            ));
        }
        let Some(alias) = properties.topic_alias else { return Ok(()) };
        if alias == 0 || alias > self.ctx.config.max_topic_alias {
            return Err(Exit::ProtocolViolation(ReasonCode::TopicAliasInvalid, "topic alias 0 or over the maximum"));
        }
        let Some(v5) = self.v5.as_mut() else { return Ok(()) };
        if publish.topic.is_empty() {
            match v5.aliases.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => return Err(Exit::ProtocolViolation(ReasonCode::ProtocolError, "topic alias never set up")),
            }
        } else {
            // A copy: the topic is a slice of the frame, which would keep the whole packet alive.
            v5.aliases.insert(alias, Bytes::copy_from_slice(&publish.topic));
        }
        Ok(())
    }

    /// DISCONNECT from the client: 0x04 asks for the will, and MQTT 5 may change the session expiry.
    fn handle_disconnect(&mut self, disconnect: Disconnect) -> Exit {
        if let (Some(v5), Some(secs)) = (&self.v5, disconnect.session_expiry_interval) {
            if v5.expiry_was_zero && secs > 0 {
                return Exit::ProtocolViolation(ReasonCode::ProtocolError, "session expiry set on DISCONNECT after 0");
            }
            self.session.expiry = expiry_interval(secs);
        }
        if disconnect.reason == ReasonCode::DisconnectWithWill {
            return Exit::DisconnectWithWill;
        }
        Exit::Disconnect
    }

    /// Broker-owned topics: `$SYS` is written by the broker alone, and the control topics are the
    /// management principal's. Its requests to this node go to the control service; every other publish
    /// there is acknowledged (so the client cannot tell), dropped and counted.
    fn handle_reserved_publish(&mut self, publish: Publish) {
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::Puback(Ack::new(publish.pkid))),
            QoS::ExactlyOnce => {
                self.send(&Packet::Pubrec(Ack::new(publish.pkid)));
                if self.session.incoming_qos2(publish.pkid) != Some(true) {
                    return;
                }
            }
        }
        let topic = publish.topic_str();
        if self.principal != Principal::Management || !ctl::is_control_topic(topic) {
            tracing::warn!(client_id = %self.info.client_id.escape_debug(), topic = %topic.escape_debug(), "publish to a broker-owned topic refused");
            // `$SYS` traffic counts in no metric, a refused one included.
            if ctl::is_control_topic(topic) {
                self.ctx.metrics.inc(Metric::MessagesDropped);
            }
            return;
        }
        let to = match ctl::request_node(topic) {
            _ if topic == ctl::DISCOVERY_TOPIC => Target::Every,
            Some(node) if node == self.ctx.config.node => Target::This,
            Some(node) if self.ctx.cluster.is_clustered() => Target::Other(node.to_string()),
            _ => return,
        };
        self.control_jobs.push(ControlJob { payload: publish.payload, to });
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Exit> {
        self.route_all_publishes();
        let mut filters = Vec::with_capacity(subscribe.filters.len());
        for (written, options) in subscribe.filters {
            let granted = match topic::parse_subscription(&written) {
                None => Err(ReasonCode::TopicFilterInvalid),
                Some(parsed) if parsed.is_shared() && options.no_local => {
                    return Err(Exit::ProtocolViolation(
                        ReasonCode::ProtocolError,
                        "no local on a shared subscription",
                    ));
                }
                Some(_) if self.principal == Principal::Management => Ok(options),
                // Access is to the filter matched, whatever group it is shared in.
                Some(parsed) => self.may_subscribe(parsed.filter()).map(|()| options),
            };
            filters.push((written, granted));
        }
        // The SUBACK, in the outbox, is written after this read's wait for the store (`on_read`).
        let durable = self.ctx.router.subscribe(self.info.client_id.clone(), self.conn_id, subscribe.pkid, filters);
        self.durable = self.durable.max(durable);
        self.routes_added = self.ctx.cluster.is_clustered();
        Ok(())
    }

    fn may_subscribe(&self, filter: &str) -> Result<(), ReasonCode> {
        if filter.starts_with("$midge") {
            tracing::warn!(client_id = %self.info.client_id.escape_debug(), filter = %filter.escape_debug(), "subscription to control topics refused");
            return Err(ReasonCode::NotAuthorized);
        }
        if self.ctx.settings.acl().check(&self.info, Access::Subscribe, filter) == Decision::Deny {
            tracing::debug!(client_id = %self.info.client_id.escape_debug(), filter = %filter.escape_debug(), "subscribe denied by ACL");
            return Err(ReasonCode::NotAuthorized);
        }
        Ok(())
    }

    fn handle_item(&mut self, item: OutboxItem) -> Result<(), Exit> {
        match item {
            OutboxItem::Deliver(delivery) => self.deliver(delivery),
            OutboxItem::Subscribed(subscribed) => {
                let (suback, retained) = *subscribed;
                self.send(&Packet::Suback(suback));
                for delivery in retained {
                    self.deliver(delivery);
                }
            }
            OutboxItem::Unsubscribed(unsuback) => self.send(&Packet::Unsuback(*unsuback)),
            OutboxItem::TakenOver => return Err(Exit::TakenOver),
            OutboxItem::Kick => return Err(Exit::Kicked),
            OutboxItem::CleanAclCache(topic) => self.acl_cache.remove(&topic),
            OutboxItem::Unsent(rest) => self.writer.queue_raw(&rest),
        }
        Ok(())
    }

    fn deliver(&mut self, delivery: Delivery) {
        let mut dropped = false;
        let internal = delivery.message.is_internal();
        if let Some(publish) = self.session.deliver(delivery, &mut dropped) {
            self.send_publish(publish);
        }
        if dropped && !internal {
            self.ctx.metrics.inc(Metric::MessagesDropped);
            tracing::debug!(client_id = %self.info.client_id.escape_debug(), "message queue full, oldest dropped");
        }
    }

    fn write_outgoing(&mut self, out: Vec<Resend>) {
        for outgoing in out {
            match outgoing {
                Resend::Publish(publish) => self.send_publish(publish),
                Resend::Pubrel(pkid) => self.send(&Packet::Pubrel(Ack::new(pkid))),
            }
        }
    }

    /// The ACL's publish decision for `topic`, through the per-client cache when it is on.
    fn check_publish(&mut self, topic: &str) -> Decision {
        if self.principal == Principal::Management {
            return Decision::Allow;
        }
        let acl = self.ctx.settings.acl();
        if !self.ctx.settings.cache_acl() {
            return acl.check(&self.info, Access::Publish, topic);
        }
        if let Some(decision) = self.acl_cache.get(topic) {
            return decision;
        }
        let decision = acl.check(&self.info, Access::Publish, topic);
        self.acl_cache.put(topic, decision);
        decision
    }
}

/// A payload that says it is UTF-8 (MQTT 5's payload format indicator 1) must be (§3.3.2.3.2).
fn payload_format_valid(publish: &Publish) -> bool {
    let says_utf8 = publish.properties.as_ref().is_some_and(|p| p.payload_format_indicator == Some(1));
    !says_utf8 || std::str::from_utf8(&publish.payload).is_ok()
}

#[cfg(test)]
mod size_tests {
    /// An idle connection's memory is mostly its task's future, its state's box and its outbox; these
    /// bounds keep the benchmark's bytes per idle connection from creeping back up unnoticed.
    #[test]
    fn an_idle_connection_stays_small() {
        fn future_size<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let serving = future_size(super::serve_opened);
        assert!(serving <= 768, "a connection's serving future is {serving} bytes");
        let state = std::mem::size_of::<super::ClientConnection>();
        // 568 before its will was boxed (72 inline), its ACL cache's limits made compact, its client
        // id kept once (in `info`) and its rarely filled vectors made thin.
        assert!(state <= 400, "a connection's state is {state} bytes");
        // 224 before what a QoS 2 receiver keeps was boxed (72 inline).
        let session = std::mem::size_of::<crate::session::Session>();
        assert!(session <= 160, "a session is {session} bytes");
        // A delivery: its message, its shared group, QoS, retain flag and its number in the store (8
        // bytes more than before persistence; rare variants stay boxed).
        assert!(std::mem::size_of::<crate::router::OutboxItem>() <= 32);
    }
}

#[cfg(test)]
mod stream_tests {
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use crate::protocol::*;
    use crate::transport::Stream;

    async fn send(stream: &mut DuplexStream, packets: &[Packet]) {
        let mut bytes = BytesMut::new();
        for packet in packets {
            encode(packet, Protocol::V311, &mut bytes);
        }
        stream.write_all(&bytes).await.unwrap();
    }

    async fn recv(stream: &mut DuplexStream, buf: &mut BytesMut) -> Packet {
        tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if let Some(packet) = decode(buf, Protocol::V311, usize::MAX).unwrap() {
                    return packet;
                }
                assert!(stream.read_buf(buf).await.unwrap() > 0, "closed");
            }
        })
        .await
        .expect("a packet in time")
    }

    fn connect(client_id: &str) -> Packet {
        Packet::Connect(Connect {
            protocol: Protocol::V311,
            clean_session: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Box::default(),
        })
    }

    fn publish(topic: &str, payload: &'static [u8], qos: QoS, pkid: u16) -> Packet {
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        let payload = Bytes::from_static(payload);
        Packet::Publish(Publish { dup: false, qos, retain: false, topic, pkid, payload, properties: None })
    }

    /// A connection runs over any byte stream, not only TCP (as TLS and WebSocket listeners will hand
    /// over): here an in-memory pipe, subscribing and publishing at QoS 0 and 1 to itself.
    #[tokio::test]
    async fn a_connection_runs_over_any_byte_stream() {
        let config = crate::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
        let broker = crate::Broker::bind(config, tokio_util::sync::CancellationToken::new(), None).await.unwrap();
        let (ctx, listener) = broker.parts_for_tests();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer = "127.0.0.9:9".parse().unwrap();
        let established = crate::transport::Established {
            stream: Stream::Other(Box::new(server)),
            peer,
            certificate_username: None,
            rate_limit: None,
        };
        let served = listener.clone();
        tokio::spawn(async move {
            let connect_by = tokio::time::Instant::now() + Duration::from_secs(10);
            if let Some(opened) = super::open(established, connect_by, &served, ctx).await {
                opened.serve(None).await;
            }
        });
        let mut buf = BytesMut::new();
        send(&mut client, &[connect("piped")]).await;
        assert!(matches!(recv(&mut client, &mut buf).await, Packet::Connack(c) if c.reason == ReasonCode::Success));
        assert_eq!(listener.clients(), 1, "counted in its listener");
        let subscribe =
            Subscribe { pkid: 1, filters: vec![("pipe/#".into(), SubscriptionOptions::qos(QoS::AtLeastOnce))] };
        send(&mut client, &[Packet::Subscribe(subscribe)]).await;
        assert!(matches!(recv(&mut client, &mut buf).await, Packet::Suback(s) if s.pkid == 1));
        send(
            &mut client,
            &[publish("pipe/0", b"zero", QoS::AtMostOnce, 0), publish("pipe/1", b"one", QoS::AtLeastOnce, 2)],
        )
        .await;
        let mut got = Vec::new();
        while got.len() < 3 {
            match recv(&mut client, &mut buf).await {
                Packet::Puback(Ack { pkid: 2, .. }) => got.push("puback".to_string()),
                Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        send(&mut client, &[Packet::Puback(Ack::new(p.pkid))]).await;
                    }
                    got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        got.sort();
        assert_eq!(got, vec!["one", "puback", "zero"]);
        send(&mut client, &[Packet::Disconnect(Disconnect::new(ReasonCode::Success))]).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut rest)).await;
        assert_eq!(listener.clients(), 0, "counted out when it leaves");
    }
}
