//! The router: the one owner of who is connected, every subscription, offline sessions and retained
//! messages. It sits behind a mutex, and whoever has something for it (a connection with the
//! publishes of one read, a subscribe, the control service) takes the lock and does the work there
//! and then: a publish goes from the publisher's connection straight into its subscribers' outboxes,
//! with no hop through a task of its own. No request awaits anything under the lock, and the router
//! answers each connection through that connection's own outbox, so a slow client cannot stall it.
//!
//! `admin.rs` holds the management side (listings, kick, subscribe on behalf of a client).

mod admin;
mod outbox;
pub mod subscriptions;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use chrono::{DateTime, Local};
use tokio::sync::oneshot;

pub use admin::AdminRequest;
pub use outbox::{outbox, Activity, Direct, Outbound, Outbox, OutboxReceiver, Pushed, Refused, Ticket};

use crate::metrics::{Metric, Metrics, Stat, Stats};
use crate::protocol::topic;
use crate::protocol::{QoS, Suback, SubackCode};
use crate::session::ClientId;
use crate::session::{Delivery, Message, Session, SessionLimits, SessionStats};
use subscriptions::{FastMap, SubscriptionTree};

/// Deliveries waiting for one connection to take them. The router fills an outbox in bursts (a batch
/// of publishes at a time), so this is larger than a session's queue; past it, messages for that
/// connection are dropped and counted rather than held.
const OUTBOX_LIMIT: usize = 8 * 1024;

/// What connections (and the control service) ask of the router.
#[derive(Debug)]
pub enum Request {
    Connect {
        client_id: ClientId,
        meta: ClientMeta,
        outbox: Outbox,
        reply: oneshot::Sender<ConnectOutcome>,
    },
    Publish(Arc<Message>),
    /// Filters already validated and ACL-checked by the connection; refused ones carry `None`.
    Subscribe {
        client_id: ClientId,
        conn_id: u64,
        pkid: u16,
        filters: Vec<(String, SubackCode)>,
    },
    Unsubscribe {
        client_id: ClientId,
        conn_id: u64,
        pkid: u16,
        filters: Vec<String>,
    },
    /// The connection has ended; the session comes back with whatever is still in its outbox.
    Disconnected {
        client_id: ClientId,
        conn_id: u64,
        session: Box<Session>,
        rest: OutboxReceiver,
    },
    Admin(AdminRequest),
}

/// What the management API shows about a connected client.
#[derive(Debug, Clone)]
pub struct ClientMeta {
    pub username: Option<String>,
    pub peer: SocketAddr,
    pub clean_session: bool,
    pub proto_ver: u8,
    pub keepalive: u16,
    pub connected_at: DateTime<Local>,
    /// The management sidecar's connection (its client id is in the management namespace): kept out
    /// of every listing, statistic and kick, so users see only their own clients.
    pub hidden: bool,
}

#[derive(Debug)]
pub enum ConnectOutcome {
    /// A session to use: resumed (`present`) or new.
    Accepted { session: Box<Session>, present: bool },
    /// Another connection with the same client id arrived while this one waited.
    Superseded,
}

/// A cheap, cloneable way to reach the router.
#[derive(Clone)]
pub struct RouterHandle {
    router: Arc<Mutex<Router>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouterHandle")
    }
}

impl RouterHandle {
    /// Handles a request on the caller's thread. Whatever it answers arrives through the outbox or
    /// reply channel the request carries.
    pub fn send(&self, request: Request) {
        lock(&self.router).handle(request);
    }

    /// Routes the publishes one connection read in one go, in order, leaving `messages` empty.
    pub fn publish(&self, messages: &mut Vec<Arc<Message>>) -> Routed {
        let mut router = lock(&self.router);
        let lone = messages.len() == 1;
        for message in messages.drain(..) {
            router.publish(message, lone);
        }
        if let Some((outbox, delivery)) = router.direct.take() {
            // The write is a syscall: made after the router's lock is let go, under the outbox's.
            let limit = router.outbox_limit();
            drop(router);
            return self.deliver_direct(outbox, delivery, limit);
        }
        match (router.woke_idle.take(), std::mem::take(&mut router.pushed)) {
            (Some((outbox, ticket)), _) => Routed::Idle(outbox, ticket),
            (None, true) => Routed::Busy,
            (None, false) => Routed::Nobody,
        }
    }

    fn deliver_direct(&self, outbox: Outbox, delivery: Delivery, limit: usize) -> Routed {
        match outbox.deliver_direct(delivery, limit) {
            Ok(Direct::Written { packet, size }) => {
                self.metrics.packet_sent(&packet, size);
                Routed::Nobody
            }
            Ok(Direct::Pushed(Pushed::WokeIdle(ticket))) => Routed::Idle(outbox, ticket),
            // A QoS 0 delivery is never deferred.
            Ok(Direct::Pushed(Pushed::Queued | Pushed::Deferred)) => Routed::Busy,
            Err(refused) => {
                tracing::debug!(conn_id = outbox.conn_id, ?refused, "message dropped");
                self.metrics.inc(Metric::MessagesDropped);
                Routed::Nobody
            }
        }
    }

    /// Sends an admin request built around a reply channel and waits for the answer.
    pub async fn ask<T>(&self, build: impl FnOnce(oneshot::Sender<T>) -> AdminRequest) -> Result<T, RouterGone> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Admin(build(tx)));
        rx.await.map_err(|_| RouterGone)
    }
}

/// Whose outboxes a batch of publishes reached: what the publisher needs to know to write its own
/// acknowledgements after the deliveries (see `outbox.rs`).
#[derive(Debug)]
pub enum Routed {
    /// No connection: nothing to let go first.
    Nobody,
    /// Among others, this idle connection, woken and certain to take its turn soon.
    Idle(Outbox, Ticket),
    /// Connections that were busy or had work queued already.
    Busy,
}

/// A panic while routing leaves tables that are still valid tables (every update is a single insert
/// or removal), so the broker carries on rather than refusing every client from then on.
fn lock(router: &Mutex<Router>) -> MutexGuard<'_, Router> {
    router.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, thiserror::Error)]
#[error("the router has stopped")]
pub struct RouterGone;

enum Presence {
    Online(Outbox),
    /// Kept since the given moment, until the session expiry interval has passed.
    Offline(Box<Session>, std::time::Instant),
}

struct PendingConnect {
    meta: ClientMeta,
    outbox: Outbox,
    reply: oneshot::Sender<ConnectOutcome>,
}

struct Client {
    presence: Presence,
    meta: ClientMeta,
    /// The client's filters and granted QoS, in order, so a discarded session can leave the trie.
    filters: BTreeMap<String, QoS>,
    /// A connection waiting for this one to hand its session over (takeover).
    pending: Option<Box<PendingConnect>>,
    /// Shared with the session, wherever it is.
    session_stats: Arc<SessionStats>,
    session_clean: bool,
    created_at: DateTime<Local>,
}

/// What the router shares with the rest of the broker.
pub struct Shared {
    /// On while retained messages are kept and sent (the retainer plugin's switch).
    pub retaining: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Stats>,
    pub node: String,
}

pub struct Router {
    clients: FastMap<ClientId, Client>,
    /// Of `clients`, those hidden from users (see [`ClientMeta::hidden`]), and their subscriptions.
    hidden_clients: usize,
    hidden_subscriptions: usize,
    subscriptions: SubscriptionTree,
    /// Distinct filters and how many clients hold each (EMQ's routes on this node).
    routes: BTreeMap<String, usize>,
    retained: BTreeMap<String, Arc<Message>>,
    limits: SessionLimits,
    shared: Shared,
    online: u64,
    subscribers: u64,
    /// Reused for every publish, so matching does not allocate.
    matched: Vec<(ClientId, QoS)>,
    /// Since the last `RouterHandle::publish`: the first idle connection a delivery woke, and whether
    /// any delivery reached a connection at all.
    woke_idle: Option<(Outbox, Ticket)>,
    pushed: bool,
    /// A lone QoS 0 delivery for a drained connection, to be written straight to its socket once the
    /// router's lock is let go (see `outbox.rs`).
    direct: Option<(Outbox, Delivery)>,
}

impl RouterHandle {
    /// An empty router.
    pub fn new(limits: SessionLimits, shared: Shared) -> RouterHandle {
        let metrics = shared.metrics.clone();
        let router = Router {
            clients: FastMap::default(),
            hidden_clients: 0,
            hidden_subscriptions: 0,
            subscriptions: SubscriptionTree::new(),
            routes: BTreeMap::new(),
            retained: BTreeMap::new(),
            limits,
            shared,
            online: 0,
            subscribers: 0,
            matched: Vec::new(),
            woke_idle: None,
            pushed: false,
            direct: None,
        };
        RouterHandle { router: Arc::new(Mutex::new(router)), metrics }
    }

    /// Expires offline sessions and refreshes the stats, a few times per expiry interval, until
    /// every other handle is dropped.
    pub async fn sweep(self) {
        let every = lock(&self.router)
            .limits
            .expiry
            .map_or(Duration::from_secs(3600), |e| (e / 4).clamp(Duration::from_millis(100), Duration::from_secs(60)));
        let router: Weak<Mutex<Router>> = Arc::downgrade(&self.router);
        drop(self);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(router) = router.upgrade() else { break };
            let mut router = lock(&router);
            router.expire_sessions();
            router.update_stats();
        }
        tracing::debug!("router stopped");
    }
}

impl Router {
    /// Drops offline sessions kept longer than the expiry interval, with their subscriptions.
    fn expire_sessions(&mut self) {
        let Some(expiry) = self.limits.expiry else { return };
        let expired: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.presence, Presence::Offline(_, since) if since.elapsed() >= expiry))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in expired {
            tracing::debug!(client = %client_id.escape_debug(), "offline session expired");
            self.drop_subscriptions(&client_id);
            self.remove_client(&client_id);
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Connect { client_id, meta, outbox, reply } => self.connect(client_id, meta, outbox, reply),
            Request::Publish(message) => self.publish(message, false),
            Request::Subscribe { client_id, conn_id, pkid, filters } => {
                self.subscribe(client_id, conn_id, pkid, filters)
            }
            Request::Unsubscribe { client_id, conn_id, pkid, filters } => {
                self.unsubscribe(client_id, conn_id, pkid, filters)
            }
            Request::Disconnected { client_id, conn_id, session, rest } => {
                self.disconnected(client_id, conn_id, session, rest)
            }
            Request::Admin(request) => self.admin(request),
        }
        // Hand-offs are only for `RouterHandle::publish`, whose caller waits right away.
        self.woke_idle = None;
        self.pushed = false;
        self.update_stats();
    }

    fn update_stats(&self) {
        let stats = &self.shared.stats;
        stats.set(Stat::Clients, self.online);
        stats.set(Stat::Sessions, (self.clients.len() - self.hidden_clients) as u64);
        stats.set(Stat::Subscriptions, (self.subscriptions.subscription_count() - self.hidden_subscriptions) as u64);
        stats.set(Stat::Subscribers, self.subscribers);
        stats.set(Stat::Topics, self.routes.len() as u64);
        stats.set(Stat::Routes, self.routes.len() as u64);
        self.update_retained_stats();
    }

    /// The only figures a publish can change, set where it changes them: the publish path need not
    /// refresh every stat per batch.
    fn update_retained_stats(&self) {
        self.shared.stats.set(Stat::Retained, self.retained.len() as u64);
        self.shared.metrics.set(Metric::MessagesRetained, self.retained.len() as u64);
    }

    fn insert_client(&mut self, client_id: ClientId, client: Client) {
        self.hidden_clients += usize::from(client.meta.hidden);
        if !client.meta.hidden {
            self.online += 1;
        }
        self.clients.insert(client_id, client);
    }

    fn remove_client(&mut self, client_id: &ClientId) {
        if let Some(client) = self.clients.remove(client_id) {
            self.hidden_clients -= usize::from(client.meta.hidden);
        }
    }

    fn new_session(&self, client_id: ClientId, clean: bool) -> Box<Session> {
        Box::new(Session::new(client_id, clean, self.limits.clone()))
    }

    fn connect(
        &mut self,
        client_id: ClientId,
        meta: ClientMeta,
        outbox: Outbox,
        reply: oneshot::Sender<ConnectOutcome>,
    ) {
        let clean = meta.clean_session;
        let Some(client) = self.clients.get_mut(&client_id) else {
            let session = self.new_session(client_id.clone(), clean);
            let client = Client {
                presence: Presence::Online(outbox),
                meta,
                filters: BTreeMap::new(),
                pending: None,
                session_stats: session.stats.clone(),
                session_clean: clean,
                created_at: Local::now(),
            };
            self.insert_client(client_id, client);
            let _ = reply.send(ConnectOutcome::Accepted { session, present: false });
            return;
        };
        match &client.presence {
            Presence::Online(old) => {
                // Ask the old connection to hand its session back; answer the new one then.
                if client.pending.is_none() && old.push(Outbound::TakenOver, None).is_err() {
                    // Its task is gone without handing the session back: start afresh.
                    tracing::warn!(client = %client_id.escape_debug(), "previous connection vanished; session lost");
                    client.presence = Presence::Online(outbox);
                    // A clean stand-in makes `resume` discard the lost session's subscriptions too.
                    let lost = self.new_session(client_id.clone(), true);
                    self.resume(client_id, lost, meta, reply);
                    return;
                }
                let pending = Box::new(PendingConnect { meta, outbox, reply });
                if let Some(superseded) = client.pending.replace(pending) {
                    let _ = superseded.reply.send(ConnectOutcome::Superseded);
                }
            }
            Presence::Offline(..) => {
                let Presence::Offline(session, _) = std::mem::replace(&mut client.presence, Presence::Online(outbox))
                else {
                    unreachable!("matched Offline above")
                };
                if !client.meta.hidden {
                    self.online += 1;
                }
                self.resume(client_id, session, meta, reply);
            }
        }
    }

    /// Hands a stored session to a connecting client, or discards it for a clean start.
    fn resume(
        &mut self,
        client_id: ClientId,
        old: Box<Session>,
        meta: ClientMeta,
        reply: oneshot::Sender<ConnectOutcome>,
    ) {
        let clean = meta.clean_session;
        let (session, present) = if clean || old.clean_session {
            self.drop_subscriptions(&client_id);
            (self.new_session(client_id.clone(), clean), false)
        } else {
            (old, true)
        };
        if let Some(client) = self.clients.get_mut(&client_id) {
            client.meta = meta;
            if !present {
                client.session_stats = session.stats.clone();
                client.session_clean = clean;
                client.created_at = Local::now();
            }
        }
        let _ = reply.send(ConnectOutcome::Accepted { session, present });
    }

    fn disconnected(&mut self, client_id: ClientId, conn_id: u64, mut session: Box<Session>, rest: OutboxReceiver) {
        let Some(client) = self.clients.get_mut(&client_id) else { return };
        match &client.presence {
            Presence::Online(outbox) if outbox.conn_id == conn_id => {}
            _ => return, // A stale connection; the client has moved on.
        }
        // Deliveries the connection never read stay with the session.
        for outbound in rest.take_all() {
            if let Outbound::Deliver(d) = outbound {
                session.enqueue_offline(d);
            }
        }
        if let Some(pending) = client.pending.take() {
            client.presence = Presence::Online(pending.outbox);
            self.resume(client_id, session, pending.meta, pending.reply);
            return;
        }
        if !client.meta.hidden {
            self.online = self.online.saturating_sub(1);
        }
        if session.clean_session {
            self.drop_subscriptions(&client_id);
            self.remove_client(&client_id);
        } else {
            client.presence = Presence::Offline(session, std::time::Instant::now());
        }
    }

    fn drop_subscriptions(&mut self, client_id: &ClientId) {
        let Some(client) = self.clients.get_mut(client_id) else { return };
        let filters = std::mem::take(&mut client.filters);
        let hidden = client.meta.hidden;
        if !filters.is_empty() && !hidden {
            self.subscribers = self.subscribers.saturating_sub(1);
        }
        for filter in filters.into_keys() {
            self.remove_subscription(&filter, client_id, hidden);
        }
    }

    /// Adds one subscription to the trie and (unless the client is hidden) the route table. The caller
    /// keeps `Client::filters`.
    fn add_subscription(&mut self, filter: &str, client_id: &ClientId, qos: QoS, hidden: bool) {
        if self.subscriptions.subscribe(filter, client_id, qos) {
            if hidden {
                self.hidden_subscriptions += 1;
            } else {
                *self.routes.entry(filter.to_string()).or_default() += 1;
            }
        }
    }

    fn remove_subscription(&mut self, filter: &str, client_id: &ClientId, hidden: bool) {
        if self.subscriptions.unsubscribe(filter, client_id) {
            if hidden {
                self.hidden_subscriptions -= 1;
                return;
            }
            if let Some(count) = self.routes.get_mut(filter) {
                *count -= 1;
                if *count == 0 {
                    self.routes.remove(filter);
                }
            }
        }
    }

    /// Routes one message; `lone` if it is the only one its publisher read at once.
    fn publish(&mut self, message: Arc<Message>, lone: bool) {
        let internal = message.is_internal();
        if message.retain && self.shared.retaining.load(Ordering::Relaxed) {
            self.retain(&message);
        }
        let mut matched = std::mem::take(&mut self.matched);
        matched.clear();
        self.subscriptions.matches(message.topic_str(), &mut matched);
        // A client with overlapping filters gets the message once, at its highest granted QoS.
        matched.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        matched.dedup_by(|later, first| later.0 == first.0);
        if matched.is_empty() && !internal {
            self.shared.metrics.inc(Metric::MessagesDropped);
        }
        if let ([(client_id, granted)], true, false) = (&matched[..], lone, internal) {
            if message.qos.min(*granted) == QoS::AtMostOnce {
                if let Some(outbox) = self.drained_outbox(client_id) {
                    let delivery = Delivery { message, qos: QoS::AtMostOnce, retain: false };
                    self.direct = Some((outbox, delivery));
                    self.matched = matched;
                    return;
                }
            }
        }
        for (client_id, granted) in &matched {
            let qos = message.qos.min(*granted);
            self.deliver(client_id, Delivery { message: message.clone(), qos, retain: false });
        }
        self.matched = matched;
    }

    fn retain(&mut self, message: &Arc<Message>) {
        let topic = message.topic_str().to_string();
        if message.payload.is_empty() {
            self.retained.remove(&topic);
        } else {
            self.retained.insert(topic, message.clone());
        }
        self.update_retained_stats();
    }

    /// The outbox of `client_id` if it is online and drained: a lone message for it is written on the spot.
    fn drained_outbox(&self, client_id: &ClientId) -> Option<Outbox> {
        match &self.clients.get(client_id)?.presence {
            Presence::Online(outbox) if outbox.is_drained() => Some(outbox.clone()),
            _ => None,
        }
    }

    /// How many deliveries may wait in one outbox.
    fn outbox_limit(&self) -> usize {
        OUTBOX_LIMIT.max(self.limits.max_mqueue_len)
    }

    fn deliver(&mut self, client_id: &ClientId, delivery: Delivery) {
        let limit = self.outbox_limit();
        let Some(client) = self.clients.get_mut(client_id) else { return };
        let internal = delivery.message.is_internal();
        let kept = match &mut client.presence {
            Presence::Online(outbox) => {
                match outbox.push_bounded(Outbound::Deliver(delivery), limit) {
                    Ok(pushed) => {
                        self.pushed |= pushed != Pushed::Deferred;
                        if let (Pushed::WokeIdle(ticket), None) = (pushed, &self.woke_idle) {
                            self.woke_idle = Some((outbox.clone(), ticket));
                        }
                        true
                    }
                    Err(Refused::Full) => {
                        tracing::debug!(client = %client_id.escape_debug(), "outbox full, message dropped");
                        false
                    }
                    // Its Disconnected request is on the way and will settle the session.
                    Err(Refused::Gone) => false,
                }
            }
            Presence::Offline(session, _) => session.enqueue_offline(delivery),
        };
        if !kept && !internal {
            self.shared.metrics.inc(Metric::MessagesDropped);
        }
    }

    /// The retained messages a new subscription to `filter` receives.
    fn retained_for(&self, filter: &str, granted: QoS, out: &mut Vec<Delivery>) {
        if !self.shared.retaining.load(Ordering::Relaxed) {
            return;
        }
        for (topic, message) in &self.retained {
            if topic::matches(filter, topic) {
                out.push(Delivery { message: message.clone(), qos: message.qos.min(granted), retain: true });
            }
        }
    }

    /// Records subscriptions for a client; returns the retained messages they bring.
    fn subscribe_client(&mut self, client_id: &ClientId, filters: &[(String, QoS)]) -> Vec<Delivery> {
        let mut retained = Vec::new();
        let Some(client) = self.clients.get_mut(client_id) else { return retained };
        let hidden = client.meta.hidden;
        if client.filters.is_empty() && !filters.is_empty() && !hidden {
            self.subscribers += 1;
        }
        for (filter, qos) in filters {
            client.filters.insert(filter.clone(), *qos);
        }
        for (filter, qos) in filters {
            self.add_subscription(filter, client_id, *qos, hidden);
            self.retained_for(filter, *qos, &mut retained);
        }
        retained
    }

    /// Removes subscriptions of a client; returns how many it had.
    fn unsubscribe_client(&mut self, client_id: &ClientId, filters: &[String]) -> usize {
        let Some(client) = self.clients.get_mut(client_id) else { return 0 };
        let hidden = client.meta.hidden;
        let had_any = !client.filters.is_empty();
        let removed: Vec<&String> = filters.iter().filter(|f| client.filters.remove(*f).is_some()).collect();
        if had_any && client.filters.is_empty() && !hidden {
            self.subscribers = self.subscribers.saturating_sub(1);
        }
        for filter in &removed {
            self.remove_subscription(filter, client_id, hidden);
        }
        removed.len()
    }

    fn online_outbox(&self, client_id: &str, conn_id: u64) -> Option<Outbox> {
        match &self.clients.get(client_id)?.presence {
            Presence::Online(outbox) if outbox.conn_id == conn_id => Some(outbox.clone()),
            _ => None,
        }
    }

    fn subscribe(&mut self, client_id: ClientId, conn_id: u64, pkid: u16, filters: Vec<(String, SubackCode)>) {
        let Some(outbox) = self.online_outbox(&client_id, conn_id) else { return };
        let granted: Vec<(String, QoS)> = filters.iter().filter_map(|(f, c)| c.map(|q| (f.clone(), q))).collect();
        let retained = self.subscribe_client(&client_id, &granted);
        let suback = Suback { pkid, codes: filters.into_iter().map(|(_, c)| c).collect() };
        let _ = outbox.push(Outbound::Subscribed(Box::new((suback, retained))), None);
    }

    fn unsubscribe(&mut self, client_id: ClientId, conn_id: u64, pkid: u16, filters: Vec<String>) {
        let Some(outbox) = self.online_outbox(&client_id, conn_id) else { return };
        self.unsubscribe_client(&client_id, &filters);
        let _ = outbox.push(Outbound::Unsubscribed(pkid), None);
    }
}
