//! The router's tables: every client (online or parked), every subscription, the routes and the
//! retained messages, and the operations on them. Only `RouterHandle` (in `mod.rs`) reaches them, under
//! its lock; the listings for the management API are in `admin.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::events::{Events, RouterEvent};
use super::expiries::{Due, Expiries, Parked};
use super::filters::Filters;
use super::growing_map::GrowingMap;
use super::outbox::{Outbox, OutboxItem, OutboxReceiver, Pushed, Refused, Ticket};
use super::shared::{self, SharedStrategy};
use super::subscriptions::{FastMap, SharedGroup, SubscriptionTree};
use super::Uplink;
use crate::metrics::{Metric, Metrics, Stat, Stats};
use crate::protocol::topic::{self, Subscription};
use crate::protocol::{QoS, ReasonCode, Suback, SubscriptionOptions, Unsuback};
use crate::session::{ClientId, Delivery, Handover, Message, Session, SessionLimits, SessionStats, SharedKey};
use crate::store::{now_wall_ms, Change, Journal, SessionRecord};

/// A routed message as one subscriber gets it: at the QoS it was granted, with the retain flag only if
/// it asked for it as published (MQTT 5), and with its subscription identifiers (`more_ids` holds those
/// of its other matching subscriptions).
fn live_delivery(
    message: &Arc<Message>,
    granted: &SubscriptionOptions,
    more_ids: &[(ClientId, u32)],
    client_id: &ClientId,
) -> Delivery {
    let qos = message.qos.min(granted.qos);
    let retain = granted.retain_as_published && message.retain;
    let Some(id) = granted.id else {
        return Delivery::new(message.clone(), qos, retain);
    };
    let mut ids = vec![id.get()];
    ids.extend(more_ids.iter().filter(|(c, _)| c == client_id).map(|(_, id)| *id));
    ids.sort_unstable();
    Delivery::new(message.for_subscriptions(&ids), qos, retain)
}

/// A routed message as the member of a shared subscription (`key`) picked for it gets it.
fn shared_delivery(
    message: &Arc<Message>,
    granted: &SubscriptionOptions,
    key: &Arc<SharedKey>,
    client_id: &ClientId,
) -> Delivery {
    Delivery { shared: Some(key.clone()), ..live_delivery(message, granted, &[], client_id) }
}

/// Deliveries waiting for one connection to take them. The router fills an outbox in bursts (a batch
/// of publishes at a time), so this is larger than a session's queue; past it, messages for that
/// connection are dropped and counted rather than held.
const OUTBOX_LIMIT: usize = 8 * 1024;

/// A client's address, kept compactly: 20 bytes where a `SocketAddr` takes 32, in the entry of
/// every client the router keeps, connected or away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    ip: IpAddr,
    port: u16,
}

impl Peer {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer { ip: addr.ip(), port: addr.port() }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::from((self.ip, self.port)).fmt(f)
    }
}

/// What the management API shows about a connected client. Small, as every kept session has one.
#[derive(Debug, Clone)]
pub struct ClientMeta {
    pub username: Option<Box<str>>,
    pub peer: Peer,
    /// "Clean start" in MQTT 5: the connection began without its old session.
    pub clean_session: bool,
    /// How long the session outlives the connection (see [`Session::expiry`]).
    pub expiry: Option<Duration>,
    pub proto_ver: u8,
    pub keepalive: u16,
    /// Wall-clock milliseconds since the Unix epoch.
    pub connected_at: i64,
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

/// What the publishes of one call did, for the publisher to act on before it writes or reads on.
#[derive(Debug, Default)]
pub struct Fanout {
    /// The first idle connection a delivery woke: the publisher waits for its turn.
    pub woke: Option<(Outbox, Ticket)>,
    /// A connection whose backlog is past the point where its publishers wait for room (see
    /// `outbox.rs`): routing stopped after the delivery that found it so.
    pub congested: Option<Outbox>,
    /// Whether any delivery reached a connection at all.
    pub pushed: bool,
    /// A lone QoS 0 delivery for a connection with nothing to do: the publisher writes it straight to
    /// that connection's socket (see `outbox.rs`), after letting go of the router.
    pub direct: Option<(Outbox, Delivery)>,
    /// How far the store must be durable before the publisher acknowledges (0: nothing to wait for).
    pub durable: u64,
}

pub(super) enum Presence {
    Online(Outbox),
    /// Kept since it was parked, until the session expiry interval has passed.
    Offline(Box<Session>, Parked),
}

struct PendingConnect {
    pub(super) meta: ClientMeta,
    outbox: Outbox,
    reply: oneshot::Sender<ConnectOutcome>,
}

pub(super) struct Client {
    pub(super) presence: Presence,
    pub(super) meta: ClientMeta,
    /// The client's filters and what each was granted, in order, so a discarded session can leave the
    /// trie.
    pub(super) filters: Filters,
    /// A connection waiting for this one to hand its session over (takeover).
    pending: Option<Box<PendingConnect>>,
    /// Shared with the session, wherever it is.
    pub(super) session_stats: Arc<SessionStats>,
    pub(super) session_clean: bool,
    /// Wall-clock milliseconds since the Unix epoch.
    pub(super) created_at: i64,
    /// Whether the store holds this session (a persistent one, with a store).
    stored: bool,
}

impl Client {
    pub(super) fn is_online(&self) -> bool {
        matches!(self.presence, Presence::Online(_))
    }
}

/// What the router shares with the rest of the broker.
pub struct Wiring {
    /// On while retained messages are kept and sent (the retainer plugin's switch).
    pub retaining: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Stats>,
    pub node: String,
    /// Which member of a shared subscription gets a message.
    pub shared_strategy: SharedStrategy,
    /// Where changes that must survive a restart are recorded (none for an in-memory broker).
    pub journal: Option<Journal>,
    /// The way to the other nodes of a cluster (none for a single node).
    pub uplink: Option<Arc<dyn Uplink>>,
}

pub(super) struct Router {
    /// Every client, online or parked; a map that grows without a long pause (see `growing_map.rs`).
    /// Boxed: a slot is then 24 bytes, not 168, and a hash table keeps up to half its slots empty, so
    /// each kept session costs ~75 bytes less (BENCHMARKS.md) for a pointer followed per lookup.
    pub(super) clients: GrowingMap<ClientId, Box<Client>>,
    /// Of `clients`, those hidden from users (see [`ClientMeta::hidden`]), and their subscriptions.
    pub(super) hidden_clients: usize,
    pub(super) hidden_subscriptions: usize,
    pub(super) subscriptions: SubscriptionTree,
    /// Distinct filters and how many clients hold each (EMQ's routes on this node).
    pub(super) routes: BTreeMap<String, usize>,
    pub(super) retained: BTreeMap<String, Arc<Message>>,
    /// When each parked session that expires does: expiry looks at these alone, not at every session.
    expiries: Expiries,
    /// MQTT 5 wills waiting out their delay: published when it has passed or their session ends,
    /// dropped if the client resumes its session first.
    wills: FastMap<ClientId, (Instant, Arc<Message>)>,
    pub(super) limits: Arc<SessionLimits>,
    pub(super) shared: Wiring,
    pub(super) online: u64,
    pub(super) subscribers: u64,
    /// Reused for every publish, so matching does not allocate.
    matched: Vec<(ClientId, SubscriptionOptions)>,
    pub(super) events: Events,
}

impl Router {
    pub(super) fn new(limits: SessionLimits, shared: Wiring) -> Router {
        Router {
            clients: GrowingMap::default(),
            hidden_clients: 0,
            hidden_subscriptions: 0,
            subscriptions: SubscriptionTree::new(),
            routes: BTreeMap::new(),
            retained: BTreeMap::new(),
            expiries: Expiries::new(),
            wills: FastMap::default(),
            limits: Arc::new(limits),
            shared,
            online: 0,
            subscribers: 0,
            matched: Vec::new(),
            events: Events::default(),
        }
    }

    /// Drops offline sessions kept longer than their expiry interval, with their subscriptions.
    pub(super) fn expire_sessions(&mut self) {
        let now = Instant::now();
        for second in self.expiries.begun(now) {
            let mut later = Vec::new();
            for client_id in self.expiries.take(second) {
                // Resuming or dropping a session takes its deadline out: every one filed is parked.
                let due = match self.clients.get(&client_id).map(|c| &c.presence) {
                    Some(Presence::Offline(session, parked)) if parked.due_in(second) => {
                        self.expiries.has_passed(parked, session.expiry, now)
                    }
                    _ => continue,
                };
                if !due {
                    later.push(client_id);
                    continue;
                }
                self.expire(&client_id);
            }
            let clients = &mut self.clients;
            self.expiries.refile(second, later, |client_id, due| tell_moved(clients, client_id, due));
        }
    }

    /// Ends a parked session whose expiry has passed, with its subscriptions; its will goes out.
    fn expire(&mut self, client_id: &ClientId) {
        tracing::debug!(client = %client_id.escape_debug(), "offline session expired");
        self.drop_subscriptions(client_id);
        self.remove_client(client_id);
        self.publish_will_now(client_id);
        self.events.emit(|| RouterEvent::SessionExpired(client_id.clone()));
    }

    /// Ends the parked session of `client_id` if its expiry has passed, whether or not the sweep has
    /// come by yet; true if it did.
    fn expire_if_due(&mut self, client_id: &ClientId) -> bool {
        let due = self.clients.get(client_id).is_some_and(|c| match &c.presence {
            Presence::Offline(session, parked) => self.expiries.has_passed(parked, session.expiry, Instant::now()),
            Presence::Online(_) => false,
        });
        if due {
            self.expire(client_id);
        }
        due
    }

    /// Takes out the deadline of a session that is parked no more, and tells the session whose
    /// deadline moved into its place.
    fn unpark(&mut self, client_id: &ClientId, parked: Parked) {
        if let Some((moved, due)) = self.expiries.unpark(client_id, parked) {
            tell_moved(&mut self.clients, &moved, due);
        }
    }

    pub(super) fn parked_ids(&self) -> Vec<ClientId> {
        let parked = self.clients.iter().filter(|(_, c)| !c.meta.hidden && matches!(c.presence, Presence::Offline(..)));
        parked.map(|(id, _)| id.clone()).collect()
    }

    /// Drops the parked session of a client that another node of the cluster has now (its session goes
    /// on there), with its delayed will; false if none is parked here.
    pub(super) fn discard_parked(&mut self, client_id: &str) -> bool {
        let Some((id, client)) = self.clients.get_key_value(client_id) else { return false };
        if client.meta.hidden || client.is_online() {
            return false;
        }
        let id = id.clone();
        self.drop_will(&id);
        self.drop_subscriptions(&id);
        self.remove_client(&id);
        self.events.emit(|| RouterEvent::SessionDiscarded(id.clone()));
        true
    }

    pub(super) fn update_stats(&self) {
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
        self.clients.insert(client_id, Box::new(client));
    }

    fn remove_client(&mut self, client_id: &ClientId) {
        if let Some(client) = self.clients.remove(client_id) {
            if let Presence::Offline(_, parked) = client.presence {
                self.unpark(client_id, parked);
            }
            self.hidden_clients -= usize::from(client.meta.hidden);
            if let (true, Some(uplink)) = (client.stored, &self.shared.uplink) {
                uplink.session(client_id, None);
            }
            if let (true, Some(journal)) = (client.stored, &self.shared.journal) {
                journal.record(Change::SessionDropped(client_id.clone()));
                if let Presence::Offline(session, _) = &client.presence {
                    journal.forget(session.stored_ids());
                }
            }
        }
    }

    /// A session that ends lets the store forget what it kept for it.
    fn forget_kept(&self, session: &Session) {
        if let Some(journal) = &self.shared.journal {
            journal.forget(session.stored_ids());
        }
    }

    /// The session of `client_id` as the store keeps it, if it is one the store keeps: persistent, and
    /// not the management principal's.
    fn session_record(&self, client_id: &ClientId) -> Option<SessionRecord> {
        let client = self.clients.get(client_id)?;
        let (expiry, parked_at_ms) = match &client.presence {
            Presence::Online(_) => (client.meta.expiry, None),
            Presence::Offline(session, parked) => {
                let parked_for = self.expiries.parked_for(parked).as_millis() as u64;
                (session.expiry, Some(now_wall_ms().saturating_sub(parked_for).max(1)))
            }
        };
        if client.meta.hidden || expiry == Some(Duration::ZERO) {
            return None;
        }
        Some(SessionRecord {
            client_id: client_id.clone(),
            expiry,
            parked_at_ms,
            created_at_ms: client.created_at,
            username: client.meta.username.as_deref().map(String::from),
            proto_ver: client.meta.proto_ver,
            peer: client.meta.peer.to_string(),
            filters: client.filters.iter().map(|(filter, options)| (filter.to_string(), *options)).collect(),
        })
    }

    /// Tells the store (and the cluster) how the session of `client_id` now is: kept as it is, or, no
    /// longer persistent, dropped. What a reply about it must wait for (0: nothing).
    fn save_session(&mut self, client_id: &ClientId) -> u64 {
        if self.shared.journal.is_none() && self.shared.uplink.is_none() {
            return 0;
        }
        let record = self.session_record(client_id);
        let Some(client) = self.clients.get_mut(client_id) else { return 0 };
        if record.is_none() && !client.stored {
            return 0;
        }
        client.stored = record.is_some();
        if let Some(uplink) = &self.shared.uplink {
            uplink.session(client_id, record.as_ref());
        }
        let change = match record {
            Some(record) => Change::SessionSaved(Box::new(record)),
            None => Change::SessionDropped(client_id.clone()),
        };
        self.shared.journal.as_mut().map_or(0, |journal| journal.record(change))
    }

    /// Puts back the persistent sessions the store kept, parked, with their subscriptions; those whose
    /// expiry passed while the broker was down are dropped from the store instead. A session that was
    /// online when the broker stopped is parked from now.
    pub(super) fn restore_sessions(&mut self, restored: crate::store::Restored) {
        let crate::store::Restored { sessions: records, queued, released, awaiting_rel, .. } = restored;
        let mut queues: FastMap<ClientId, Vec<Delivery>> = FastMap::default();
        for (client_id, delivery) in queued {
            queues.entry(client_id).or_default().push(delivery);
        }
        let mut awaiting: FastMap<ClientId, Vec<u16>> = FastMap::default();
        for (client_id, pkid) in awaiting_rel {
            awaiting.entry(client_id).or_default().push(pkid);
        }
        let now_ms = now_wall_ms();
        let now = Instant::now();
        for record in records {
            let away = Duration::from_millis(record.parked_at_ms.map_or(0, |at| now_ms.saturating_sub(at)));
            if record.expiry.is_some_and(|expiry| away >= expiry) {
                if let Some(journal) = self.shared.journal.as_mut() {
                    journal.record(Change::SessionDropped(record.client_id.clone()));
                }
                continue;
            }
            let since = now.checked_sub(away).unwrap_or(now);
            let mut session = self.new_session(record.client_id.clone(), record.expiry);
            for delivery in queues.remove(&record.client_id).unwrap_or_default() {
                let was_released = released.contains(&delivery.store_id);
                session.restore(delivery, was_released);
            }
            for pkid in awaiting.remove(&record.client_id).unwrap_or_default() {
                session.restore_awaiting_rel(pkid);
            }
            if let Some(journal) = &self.shared.journal {
                // Past the queue's length now (a smaller max_mqueue_len), the oldest go.
                journal.forget(session.take_forgotten());
            }
            self.park_kept(record, session, since, true);
        }
        // What was kept for sessions that are gone (expired meanwhile) goes with them.
        if let Some(journal) = &self.shared.journal {
            journal.forget(queues.into_values().flatten().map(|d| d.store_id).collect());
            for (client_id, pkid) in
                awaiting.into_iter().flat_map(|(c, ids)| ids.into_iter().map(move |p| (c.clone(), p)))
            {
                journal.record(Change::RelCompleted { client_id, pkid });
            }
        }
    }

    /// Parks a kept session from `record` (the store's, or another node's) with its subscriptions,
    /// away since `since`.
    fn park_kept(&mut self, record: SessionRecord, session: Box<Session>, since: Instant, stored: bool) {
        let created_at = record.created_at_ms;
        let meta = ClientMeta {
            username: record.username.map(Into::into),
            peer: record.peer.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))).into(),
            clean_session: false,
            expiry: record.expiry,
            proto_ver: record.proto_ver,
            keepalive: 0,
            connected_at: created_at,
            hidden: false,
        };
        let parked = self.expiries.park(&record.client_id, since, record.expiry);
        let client = Client {
            session_stats: session.stats.clone(),
            presence: Presence::Offline(session, parked),
            meta,
            filters: Filters::default(),
            pending: None,
            session_clean: false,
            created_at,
            stored,
        };
        self.clients.insert(record.client_id.clone(), Box::new(client));
        if !record.filters.is_empty() {
            self.subscribers += 1;
        }
        for (filter, options) in record.filters {
            if topic::parse_subscription(&filter).is_none() {
                continue;
            }
            self.add_subscription(&filter, &record.client_id, options, false);
            if let Some(client) = self.clients.get_mut(&record.client_id) {
                client.filters.insert(&filter, options);
            }
        }
    }

    /// Gives up the parked session of `client_id` to the node that took the client over: its record
    /// (subscriptions, expiry) and deliveries. It is gone from here, as if discarded.
    pub(super) fn hand_over(&mut self, client_id: &str) -> Option<(SessionRecord, Handover)> {
        let id = self.clients.get_key_value(client_id).map(|(id, _)| id.clone())?;
        // Past its expiry, it ends here rather than going on elsewhere.
        if self.expire_if_due(&id) {
            return None;
        }
        let record = self.session_record(&id)?;
        let client = self.clients.get_mut(&id)?;
        let Presence::Offline(session, _) = &mut client.presence else { return None };
        let handover = session.hand_over();
        let forgotten = session.take_forgotten();
        if let Some(journal) = &self.shared.journal {
            journal.forget(forgotten);
        }
        self.discard_parked(&id);
        Some((record, handover))
    }

    /// Parks the session another node handed over, with its subscriptions and deliveries, for its
    /// client to resume here; kept in the store like any persistent session. A session of that id
    /// already here (left from before) gives way to it.
    pub(super) fn adopt(&mut self, mut record: SessionRecord, handover: Handover) {
        let id = record.client_id.clone();
        if !self.take_over(&id) {
            self.discard_parked(&id);
        }
        // Parked from now: its client is connecting.
        record.parked_at_ms = Some(now_wall_ms());
        let session = self.new_session(id.clone(), record.expiry);
        self.park_kept(record, session, Instant::now(), false);
        self.save_session(&id);
        let journal = self.shared.journal.clone().filter(|_| self.clients.get(&id).is_some_and(|c| c.stored));
        let keep = |deliveries: &mut [Delivery]| {
            let Some(journal) = &journal else { return };
            for delivery in deliveries.iter_mut().filter(|d| d.qos != QoS::AtMostOnce) {
                delivery.store_id = journal.record_delivery(&id, delivery).0;
            }
        };
        if let Some(Client { presence: Presence::Offline(session, _), .. }) =
            self.clients.get_mut(&id).map(|c| &mut **c)
        {
            session.take_over_from(handover, keep);
        }
    }

    fn new_session(&self, client_id: ClientId, expiry: Option<Duration>) -> Box<Session> {
        Box::new(Session::new(client_id, expiry, self.limits.clone()))
    }

    pub(super) fn connect(
        &mut self,
        client_id: ClientId,
        meta: ClientMeta,
        outbox: Outbox,
        reply: oneshot::Sender<ConnectOutcome>,
    ) {
        let clean = meta.clean_session;
        // A session past its expiry is not resumed.
        self.expire_if_due(&client_id);
        self.settle_will(&client_id, clean);
        let Some(client) = self.clients.get_mut(&client_id) else {
            let session = self.new_session(client_id.clone(), meta.expiry);
            let client = Client {
                presence: Presence::Online(outbox),
                meta,
                filters: Filters::default(),
                pending: None,
                session_stats: session.stats.clone(),
                session_clean: clean,
                created_at: now_wall_ms() as i64,
                stored: false,
            };
            self.insert_client(client_id.clone(), client);
            self.save_session(&client_id);
            let _ = reply.send(ConnectOutcome::Accepted { session, present: false });
            return;
        };
        match &client.presence {
            Presence::Online(old) => {
                // Ask the old connection to hand its session back; answer the new one then.
                if client.pending.is_none() && old.push(OutboxItem::TakenOver, None).is_err() {
                    // Its task is gone without handing the session back: start afresh.
                    tracing::warn!(client = %client_id.escape_debug(), "previous connection vanished; session lost");
                    client.presence = Presence::Online(outbox);
                    // A clean stand-in makes `resume` discard the lost session's subscriptions too.
                    let lost = self.new_session(client_id.clone(), Some(Duration::ZERO));
                    self.resume(client_id, lost, meta, reply);
                    return;
                }
                let pending = Box::new(PendingConnect { meta, outbox, reply });
                if let Some(superseded) = client.pending.replace(pending) {
                    let _ = superseded.reply.send(ConnectOutcome::Superseded);
                }
            }
            Presence::Offline(..) => {
                let Presence::Offline(session, parked) =
                    std::mem::replace(&mut client.presence, Presence::Online(outbox))
                else {
                    unreachable!("matched Offline above")
                };
                if !client.meta.hidden {
                    self.online += 1;
                }
                self.unpark(&client_id, parked);
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
        let (session, present) = if clean || !old.persistent() {
            self.forget_kept(&old);
            self.drop_subscriptions(&client_id);
            if old.persistent() {
                self.events.emit(|| RouterEvent::SessionDiscarded(client_id.clone()));
            }
            (self.new_session(client_id.clone(), meta.expiry), false)
        } else {
            self.events.emit(|| RouterEvent::SessionResumed(client_id.clone()));
            let mut old = old;
            // The new connection says how long the session outlives it.
            old.expiry = meta.expiry;
            (old, true)
        };
        if let Some(client) = self.clients.get_mut(&client_id) {
            client.meta = meta;
            if !present {
                client.session_stats = session.stats.clone();
                client.session_clean = clean;
                client.created_at = now_wall_ms() as i64;
            }
        }
        self.save_session(&client_id);
        let _ = reply.send(ConnectOutcome::Accepted { session, present });
    }

    pub(super) fn disconnected(
        &mut self,
        client_id: ClientId,
        conn_id: u64,
        mut session: Box<Session>,
        rest: OutboxReceiver,
    ) {
        if let Some(journal) = &self.shared.journal {
            journal.forget(session.take_forgotten());
        }
        let Some(client) = self.clients.get_mut(&client_id) else { return };
        match &client.presence {
            Presence::Online(outbox) if outbox.conn_id == conn_id => {}
            _ => {
                // A stale connection: the client has moved on, and a will it left is void.
                self.drop_will(&client_id);
                return;
            }
        }
        // Deliveries the connection never read stay with the session.
        for item in rest.take_all() {
            if let OutboxItem::Deliver(d) = item {
                session.enqueue_offline(d);
            }
        }
        if let Some(pending) = client.pending.take() {
            // The old connection left its will after the new one came: settled now.
            self.settle_will(&client_id, pending.meta.clean_session);
            let Some(client) = self.clients.get_mut(&client_id) else { return };
            client.presence = Presence::Online(pending.outbox);
            self.resume(client_id, session, pending.meta, pending.reply);
            return;
        }
        if !client.meta.hidden {
            self.online = self.online.saturating_sub(1);
        }
        // What came through shared subscriptions and this member did not take goes to another member
        // that is online; the rest stays with the session.
        for delivery in session.take_shared(!session.persistent()) {
            if let Err(delivery) = self.redispatch(delivery, &client_id) {
                session.enqueue_offline(delivery);
            }
        }
        if !session.persistent() {
            self.forget_kept(&session);
            self.drop_subscriptions(&client_id);
            self.remove_client(&client_id);
            self.publish_will_now(&client_id);
        } else if let Some(client) = self.clients.get_mut(&client_id) {
            let parked = self.expiries.park(&client_id, Instant::now(), session.expiry);
            client.presence = Presence::Offline(session, parked);
            self.events.emit(|| RouterEvent::SessionParked(client_id.clone()));
            self.save_session(&client_id);
        }
    }

    /// Keeps a will until `delay` has passed (MQTT 5's will delay), unless the session ends first.
    pub(super) fn will_after(&mut self, client_id: ClientId, will: Arc<Message>, delay: Duration) {
        let due = Instant::now().checked_add(delay);
        match due {
            Some(due) => {
                self.wills.insert(client_id, (due, will));
            }
            // A delay past the end of time is one that never passes.
            None => {
                self.wills.insert(client_id, (Instant::now() + Duration::from_secs(u32::MAX.into()), will));
            }
        }
    }

    /// Publishes the wills whose delay has passed.
    pub(super) fn publish_due_wills(&mut self) {
        if self.wills.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<ClientId> = self.wills.iter().filter(|(_, (at, _))| *at <= now).map(|(c, _)| c.clone()).collect();
        for client_id in due {
            self.publish_will_now(&client_id);
        }
    }

    /// A new connection of `client_id`: a will waiting out its delay is dropped when the session is
    /// resumed, and published when a clean start ends that session.
    fn settle_will(&mut self, client_id: &ClientId, clean_start: bool) {
        if clean_start {
            self.publish_will_now(client_id);
        } else {
            self.drop_will(client_id);
        }
    }

    /// Drops a will waiting out its delay, if there is one.
    fn drop_will(&mut self, client_id: &ClientId) {
        if self.wills.remove(client_id).is_some() {
            if let Some(uplink) = &self.shared.uplink {
                uplink.will_settled(client_id);
            }
        }
    }

    /// The session of `client_id` ended: a will still waiting out its delay goes now.
    fn publish_will_now(&mut self, client_id: &ClientId) {
        if let Some((_, will)) = self.wills.remove(client_id) {
            if let Some(uplink) = &self.shared.uplink {
                uplink.will_settled(client_id);
            }
            tracing::debug!(client = %client_id.escape_debug(), "delayed will published");
            self.publish(&will, false, &mut Fanout::default());
        }
    }

    fn drop_subscriptions(&mut self, client_id: &ClientId) {
        let Some(client) = self.clients.get_mut(client_id) else { return };
        let filters = std::mem::take(&mut client.filters);
        let hidden = client.meta.hidden;
        if !filters.is_empty() && !hidden {
            self.subscribers = self.subscribers.saturating_sub(1);
        }
        for filter in filters.into_filters() {
            self.remove_subscription(&filter, client_id, hidden);
        }
    }

    /// Adds one subscription to the trie and (unless the client is hidden) the route table. The caller
    /// keeps `Client::filters`. Returns whether it is new (not a change to an existing one).
    fn add_subscription(
        &mut self,
        filter: &str,
        client_id: &ClientId,
        options: SubscriptionOptions,
        hidden: bool,
    ) -> bool {
        let is_new = match topic::parse_subscription(filter) {
            Some(Subscription::Plain(plain)) => self.subscriptions.subscribe(plain, client_id, options),
            Some(Subscription::Shared { group, filter }) => {
                self.subscriptions.subscribe_shared(group, filter, client_id, options)
            }
            // Filters are checked before they get here.
            None => false,
        };
        if !is_new {
            return false;
        }
        if hidden {
            self.hidden_subscriptions += 1;
            return true;
        }
        let holders = self.routes.entry(filter.to_string()).or_default();
        *holders += 1;
        if *holders == 1 {
            if let Some(uplink) = &self.shared.uplink {
                uplink.route(filter, true);
            }
            self.events.emit(|| RouterEvent::RouteAdded(filter.into()));
        }
        true
    }

    fn remove_subscription(&mut self, filter: &str, client_id: &ClientId, hidden: bool) {
        let removed = match topic::parse_subscription(filter) {
            Some(Subscription::Plain(plain)) => self.subscriptions.unsubscribe(plain, client_id),
            Some(Subscription::Shared { group, filter }) => {
                self.subscriptions.unsubscribe_shared(group, filter, client_id)
            }
            None => false,
        };
        if removed {
            if hidden {
                self.hidden_subscriptions -= 1;
                return;
            }
            if let Some(count) = self.routes.get_mut(filter) {
                *count -= 1;
                if *count == 0 {
                    self.routes.remove(filter);
                    if let Some(uplink) = &self.shared.uplink {
                        uplink.route(filter, false);
                    }
                    self.events.emit(|| RouterEvent::RouteRemoved(filter.into()));
                }
            }
        }
    }

    /// Routes one message; `lone` if it is the only one its publisher read at once. What it did for
    /// the publisher to act on goes into `fanout`.
    pub(super) fn publish(&mut self, message: &Arc<Message>, lone: bool, fanout: &mut Fanout) {
        let internal = message.is_internal();
        let mut forwarded = false;
        if let (Some(uplink), false) = (&self.shared.uplink, internal) {
            uplink.forward(message);
            forwarded = true;
        }
        self.fan_out(message, lone, fanout, internal || forwarded);
    }

    /// Keeps a retained message and hands a message to this node's subscribers; one that none of them
    /// wants is counted as dropped unless `uncounted` (the broker's own, or gone on to other nodes,
    /// which know better).
    pub(super) fn fan_out(&mut self, message: &Arc<Message>, lone: bool, fanout: &mut Fanout, uncounted: bool) {
        let internal = message.is_internal();
        if message.retain && self.shared.retaining.load(Ordering::Relaxed) {
            fanout.durable = fanout.durable.max(self.retain(message));
        }
        let mut matched = std::mem::take(&mut self.matched);
        matched.clear();
        let mut groups = Vec::new();
        self.subscriptions.matches(message.topic_str(), &mut matched, &mut groups);
        // In a cluster a shared subscription's message goes to one member cluster-wide: NATS picks the
        // node (a queue group, see `publish_to_group`), but for the broker's own topics, which stay here.
        if self.shared.uplink.is_some() && !internal {
            groups.clear();
        }
        // Each shared subscription that matches gives the message to one of its members.
        let picks: Vec<(ClientId, SubscriptionOptions, Arc<SharedKey>)> =
            groups.into_iter().filter_map(|group| self.pick_member(group, message.origin)).collect();
        // MQTT 5's "no local": not back to the connection that published it.
        if matched.iter().any(|(_, options)| options.no_local) {
            matched.retain(|(client_id, options)| !options.no_local || !self.is_origin(client_id, message.origin));
        }
        // A client with overlapping filters gets the message once, at its highest granted QoS, naming
        // every subscription identifier that matched (MQTT 5 §3.3.4).
        matched.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.qos.cmp(&a.1.qos)));
        let mut more_ids = Vec::new();
        matched.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1.retain_as_published |= later.1.retain_as_published;
                match (first.1.id, later.1.id) {
                    (None, id) => first.1.id = id,
                    (Some(_), Some(id)) => more_ids.push((later.0.clone(), id.get())),
                    (Some(_), None) => {}
                }
            }
            same
        });
        if matched.is_empty() && picks.is_empty() && !uncounted {
            self.shared.metrics.inc(Metric::MessagesDropped);
        }
        for (client_id, granted, key) in &picks {
            self.deliver(client_id, shared_delivery(message, granted, key, client_id), fanout);
        }
        if let ([(client_id, granted)], true, false, true) = (&matched[..], lone, internal, picks.is_empty()) {
            if message.qos.min(granted.qos) == QoS::AtMostOnce {
                if let Some(outbox) = self.drained_outbox(client_id) {
                    let delivery = live_delivery(message, granted, &more_ids, client_id);
                    fanout.direct = Some((outbox, delivery));
                    self.matched = matched;
                    return;
                }
            }
        }
        for (client_id, granted) in &matched {
            let delivery = live_delivery(message, granted, &more_ids, client_id);
            self.deliver(client_id, delivery, fanout);
        }
        self.matched = matched;
    }

    /// Hands a message another node's NATS queue group chose this node for to one member of the shared
    /// subscription `route` (`$share/{group}/{filter}`) here.
    pub(super) fn fan_out_to_group(&mut self, message: Arc<Message>, route: &str, fanout: &mut Fanout) {
        let Some(Subscription::Shared { group, filter }) = topic::parse_subscription(route) else { return };
        // Long topics come on one subject for all: this group's filter may not match.
        if !topic::matches(filter, message.topic_str()) {
            return;
        }
        let pick = self.subscriptions.shared_group(group, filter).and_then(|g| self.pick_member(g, message.origin));
        match pick {
            Some((client_id, granted, key)) => {
                self.deliver(&client_id, shared_delivery(&message, &granted, &key, &client_id), fanout)
            }
            None => self.shared.metrics.inc(Metric::MessagesDropped),
        }
    }

    /// The member of a shared subscription its strategy gives a message from `origin`, and what it
    /// was granted.
    fn pick_member(&self, group: &SharedGroup, origin: u64) -> Option<(ClientId, SubscriptionOptions, Arc<SharedKey>)> {
        let online = |c: &ClientId| self.is_online(c);
        let (i, _) = shared::pick(group, self.shared.shared_strategy, origin, online)?;
        let (client_id, options) = &group.members[i];
        Some((client_id.clone(), *options, group.key.clone()))
    }

    fn is_online(&self, client_id: &ClientId) -> bool {
        self.clients.get(client_id).is_some_and(|c| c.is_online())
    }

    /// Hands a shared subscription's delivery that `leaving` will not take to another online member of
    /// the group; gives it back if there is none.
    fn redispatch(&mut self, delivery: Delivery, leaving: &ClientId) -> Result<(), Delivery> {
        let Some(key) = delivery.shared.clone() else { return Err(delivery) };
        let Some(shared_group) = self.subscriptions.shared_group(&key.group, &key.filter) else {
            return Err(delivery);
        };
        let online = |c: &ClientId| c != leaving && self.is_online(c);
        let Some((i, true)) = shared::pick(shared_group, self.shared.shared_strategy, delivery.message.origin, online)
        else {
            return Err(delivery);
        };
        let (target, options) = shared_group.members[i].clone();
        // Kept for the member that left, it is the new member's now (and kept for it if it is kept).
        if let (true, Some(journal)) = (delivery.store_id != 0, &self.shared.journal) {
            journal.forget(vec![delivery.store_id]);
        }
        let delivery = Delivery { qos: delivery.message.qos.min(options.qos), store_id: 0, ..delivery };
        self.deliver(&target, delivery, &mut Fanout::default());
        Ok(())
    }

    /// Whether `origin` is the connection `client_id` is online through.
    fn is_origin(&self, client_id: &ClientId, origin: u64) -> bool {
        self.clients.get(client_id).is_some_and(|c| matches!(&c.presence, Presence::Online(o) if o.conn_id == origin))
    }

    /// Keeps (or, for an empty payload, clears) the retained message of its topic; what the store must
    /// have written before the publisher is told (0: nothing).
    fn retain(&mut self, message: &Arc<Message>) -> u64 {
        let topic = message.topic_str().to_string();
        let change = if message.payload.is_empty() {
            if self.retained.remove(&topic).is_none() {
                return 0;
            }
            self.events.emit(|| RouterEvent::RetainedCleared(topic.as_str().into()));
            Change::RetainedCleared(topic.into())
        } else {
            self.retained.insert(topic, message.clone());
            self.events.emit(|| RouterEvent::RetainedSet(message.clone()));
            Change::RetainedSet(message.clone())
        };
        self.update_retained_stats();
        // The broker's own retained messages (`$SYS`) are published afresh at every start.
        match self.shared.journal.as_mut() {
            Some(journal) if !message.is_internal() => journal.record(change),
            _ => 0,
        }
    }

    /// Keeps (`Some`) or clears the retained message of `topic` as the cluster has it, delivering it
    /// to nobody; the same message kept already (it came with its publish) is left as it is.
    pub(super) fn retain_from_cluster(&mut self, topic: &str, message: Option<Arc<Message>>) {
        let message = match message {
            Some(message) => {
                let same = self.retained.get(topic).is_some_and(|kept| {
                    kept.payload == message.payload && kept.qos == message.qos && kept.properties == message.properties
                });
                if same {
                    return;
                }
                message
            }
            None if self.retained.contains_key(topic) => Arc::new(Message::new(
                bytes::Bytes::copy_from_slice(topic.as_bytes()),
                bytes::Bytes::new(),
                QoS::AtMostOnce,
                true,
            )),
            None => return,
        };
        self.retain(&message);
    }

    /// Puts back the retained messages the store kept (not recorded again: they are there already).
    pub(super) fn restore_retained(&mut self, messages: Vec<Arc<Message>>) {
        for message in messages {
            self.retained.insert(message.topic_str().to_string(), message);
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
    pub(super) fn outbox_limit(&self) -> usize {
        OUTBOX_LIMIT.max(self.limits.max_mqueue_len)
    }

    /// Hands one delivery to its target: the client's connection, or its parked session.
    pub(super) fn deliver(&mut self, client_id: &ClientId, delivery: Delivery, fanout: &mut Fanout) {
        let limit = self.outbox_limit();
        // A kept session keeps what it is sent, online or away, before the publisher is told; until its
        // client acknowledges it.
        let mut delivery = [delivery];
        fanout.durable = fanout.durable.max(self.keep(client_id, &mut delivery));
        let [delivery] = delivery;
        let Some(client) = self.clients.get_mut(client_id) else { return };
        let internal = delivery.message.is_internal();
        let (store_id, origin) = (delivery.store_id, delivery.message.origin);
        let kept = match &mut client.presence {
            Presence::Online(outbox) => {
                match outbox.push_delivery(delivery, limit, self.limits.max_mqueue_len) {
                    Ok(pushed) => {
                        fanout.pushed |= pushed != Pushed::Deferred;
                        match (pushed, &fanout.woke, &fanout.congested) {
                            (Pushed::WokeIdle(ticket), None, _) => fanout.woke = Some((outbox.clone(), ticket)),
                            // A client subscribed to its own topics cannot wait for itself.
                            (Pushed::Congested, _, None) if outbox.conn_id != origin => {
                                fanout.congested = Some(outbox.clone())
                            }
                            _ => {}
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
            Presence::Offline(session, _) => {
                let kept = session.enqueue_offline(delivery);
                if let Some(journal) = &self.shared.journal {
                    journal.forget(session.take_forgotten());
                }
                kept
            }
        };
        if !kept && !internal {
            self.shared.metrics.inc(Metric::MessagesDropped);
        }
        if let (false, true, Some(Presence::Online(_)), Some(journal)) =
            (kept, store_id != 0, self.clients.get(client_id).map(|c| &c.presence), &self.shared.journal)
        {
            // Refused by a full outbox: dropped, and so let go of by the store too.
            journal.forget(vec![store_id]);
        }
    }

    /// The retained messages a subscription to `filter` receives (expired ones are left out).
    fn retained_for(&self, filter: &str, granted: &SubscriptionOptions, out: &mut Vec<Delivery>) {
        if !self.shared.retaining.load(Ordering::Relaxed) {
            return;
        }
        let ids: Vec<u32> = granted.id.map(|id| id.get()).into_iter().collect();
        for (topic, message) in &self.retained {
            if topic::matches(filter, topic) && !message.expired() {
                let qos = message.qos.min(granted.qos);
                out.push(Delivery::new(message.for_subscriptions(&ids), qos, true));
            }
        }
    }

    /// Records subscriptions for a client; returns the retained messages they bring, and what the
    /// SUBACK must wait for in the store.
    pub(super) fn subscribe_client(
        &mut self,
        client_id: &ClientId,
        filters: &[(String, SubscriptionOptions)],
    ) -> (Vec<Delivery>, u64) {
        let mut retained = Vec::new();
        let Some(client) = self.clients.get_mut(client_id) else { return (retained, 0) };
        let hidden = client.meta.hidden;
        if client.filters.is_empty() && !filters.is_empty() && !hidden {
            self.subscribers += 1;
        }
        for (filter, options) in filters {
            client.filters.insert(filter, *options);
        }
        for (filter, options) in filters {
            let is_new = self.add_subscription(filter, client_id, *options, hidden);
            // MQTT 5's retain handling: 0 always, 1 for a new subscription only, 2 never; and never for
            // a shared subscription (§4.8.2).
            let Some(Subscription::Plain(plain)) = topic::parse_subscription(filter) else { continue };
            if options.retain_handling == 0 || (options.retain_handling == 1 && is_new) {
                self.retained_for(plain, options, &mut retained);
            }
        }
        let durable = if filters.is_empty() { 0 } else { self.save_session(client_id) };
        // Retained messages sent on subscribe are deliveries like any other: a kept session keeps them.
        let durable = durable.max(self.keep(client_id, &mut retained));
        (retained, durable)
    }

    /// Keeps the QoS 1/2 `deliveries` for `client_id` if the store keeps its session, each under its
    /// number, until its client acknowledges it. What an acknowledgement of their cause waits for.
    fn keep(&self, client_id: &ClientId, deliveries: &mut [Delivery]) -> u64 {
        // The journal first: without a store, this costs the message path nothing.
        let Some(journal) = &self.shared.journal else { return 0 };
        if !self.clients.get(client_id).is_some_and(|c| c.stored) {
            return 0;
        }
        let mut durable = 0;
        for delivery in deliveries.iter_mut().filter(|d| d.qos != QoS::AtMostOnce) {
            let (id, wait) = journal.record_delivery(client_id, delivery);
            delivery.store_id = id;
            durable = durable.max(wait);
        }
        durable
    }

    /// Removes subscriptions of a client; returns, for each filter, whether it had it, and what the
    /// UNSUBACK must wait for in the store.
    pub(super) fn unsubscribe_client(&mut self, client_id: &ClientId, filters: &[String]) -> (Vec<bool>, u64) {
        let Some(client) = self.clients.get_mut(client_id) else { return (vec![false; filters.len()], 0) };
        let hidden = client.meta.hidden;
        let had_any = !client.filters.is_empty();
        let found: Vec<bool> = filters.iter().map(|f| client.filters.remove(f)).collect();
        if had_any && client.filters.is_empty() && !hidden {
            self.subscribers = self.subscribers.saturating_sub(1);
        }
        for (filter, _) in filters.iter().zip(&found).filter(|(_, found)| **found) {
            self.remove_subscription(filter, client_id, hidden);
        }
        let durable = if found.iter().any(|f| *f) { self.save_session(client_id) } else { 0 };
        (found, durable)
    }

    fn online_outbox(&self, client_id: &str, conn_id: u64) -> Option<Outbox> {
        match &self.clients.get(client_id)?.presence {
            Presence::Online(outbox) if outbox.conn_id == conn_id => Some(outbox.clone()),
            _ => None,
        }
    }

    /// Filters with the options granted, or why they were refused.
    pub(super) fn subscribe(
        &mut self,
        client_id: ClientId,
        conn_id: u64,
        pkid: u16,
        filters: Vec<(String, Result<SubscriptionOptions, ReasonCode>)>,
    ) -> u64 {
        let Some(outbox) = self.online_outbox(&client_id, conn_id) else { return 0 };
        let granted: Vec<(String, SubscriptionOptions)> =
            filters.iter().filter_map(|(f, granted)| granted.ok().map(|o| (f.clone(), o))).collect();
        let (retained, durable) = self.subscribe_client(&client_id, &granted);
        let suback = Suback { pkid, codes: filters.into_iter().map(|(_, granted)| granted.map(|o| o.qos)).collect() };
        let _ = outbox.push(OutboxItem::Subscribed(Box::new((suback, retained))), None);
        durable
    }

    pub(super) fn unsubscribe(&mut self, client_id: ClientId, conn_id: u64, pkid: u16, filters: Vec<String>) -> u64 {
        let Some(outbox) = self.online_outbox(&client_id, conn_id) else { return 0 };
        let (found, durable) = self.unsubscribe_client(&client_id, &filters);
        let reasons = found
            .into_iter()
            .map(|found| if found { ReasonCode::Success } else { ReasonCode::NoSubscriptionExisted })
            .collect();
        let _ = outbox.push(OutboxItem::Unsubscribed(Box::new(Unsuback { pkid, reasons })), None);
        durable
    }
}

/// Tells a parked session that its deadline moved in its second's list (see `expiries.rs`).
fn tell_moved(clients: &mut GrowingMap<ClientId, Box<Client>>, client_id: &ClientId, due: Due) {
    if let Some(Presence::Offline(_, parked)) = clients.get_mut(client_id).map(|c| &mut c.presence) {
        parked.moved_to(due);
    }
}

#[cfg(test)]
mod tests {
    /// Every client the router keeps, connected or away, has one (boxed, in its table beside the
    /// client id): what a kept session costs starts here. 152 bytes is glibc's 160-byte chunk.
    #[test]
    fn a_client_entry_stays_small() {
        let size = std::mem::size_of::<super::Client>();
        assert!(size <= 152, "a client is {size} bytes");
    }
}
