//! The router: the one owner of who is connected, every subscription, offline sessions and retained
//! messages. It sits behind a mutex, and whoever has something for it (a connection with the
//! publishes of one read, a subscribe, the control service) takes the lock and does the work there
//! and then: a publish goes from the publisher's connection straight into its subscribers' outboxes,
//! with no hop through a task of its own. No call awaits anything under the lock, the router never
//! writes to a socket, and it answers each connection through that connection's own outbox, so a slow
//! client cannot stall it. What it decided comes back as values (`Fanout`, `ConnectOutcome`, the
//! listings); what changed in its tables goes out as `RouterEvent`s to whoever follows them.
//!
//! - `tables.rs`: the state and what changes it; `admin.rs`: the management API's side of it;
//! - `outbox.rs`: each connection's queue; `subscriptions.rs`: the trie; `events.rs`: the event stream.

mod admin;
mod events;
mod expiries;
mod filters;
pub mod growing_map;
mod outbox;
pub mod shared;
pub mod subscriptions;
mod tables;
mod tiny_map;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use midge_shared::control::{ClientRow, Page, PageRequest, RouteRow, SessionRow, SubscriptionRow};
use tokio::sync::{broadcast, oneshot};

pub use events::RouterEvent;
pub use outbox::{
    outbox, Activity, BacklogReport, Direct, Outbox, OutboxItem, OutboxReceiver, Pushed, Refused, Ticket, STUCK_AFTER,
};
pub use tables::{ClientMeta, ConnectOutcome, Fanout, Wiring};

use crate::protocol::{QoS, ReasonCode, SubscriptionOptions};
use crate::session::{ClientId, Handover, Message, Session, SessionLimits};
use crate::store::{Change, SessionRecord};
use tables::Router;

/// The router's way to the other nodes of a cluster (`cluster/` implements it). It is called under the
/// router's lock, in the order things happen, so nothing here may block or wait.
pub trait Uplink: Send + Sync {
    /// A message published on this node, for the nodes whose clients want it.
    fn forward(&self, message: &Arc<Message>);
    /// The first client on this node subscribed to `filter` (`added`), or the last one left it.
    fn route(&self, filter: &str, added: bool);
    /// A persistent session as it now is, or (`None`) gone, for another node to take up should this
    /// one die.
    fn session(&self, client_id: &ClientId, record: Option<&SessionRecord>);
    /// A will that waited out its delay here was published, or dropped (its session resumed or ended).
    fn will_settled(&self, client_id: &ClientId);
}

/// A cheap, cloneable way to reach the router.
#[derive(Clone)]
pub struct RouterHandle {
    router: Arc<Mutex<Router>>,
    /// Deliveries one outbox may hold (fixed at start).
    outbox_limit: usize,
}

impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouterHandle")
    }
}

/// A panic while routing leaves tables that are still valid tables (every update is a single insert
/// or removal), so the broker carries on rather than refusing every client from then on.
fn lock(router: &Mutex<Router>) -> MutexGuard<'_, Router> {
    router.lock().unwrap_or_else(|e| e.into_inner())
}

impl RouterHandle {
    /// An empty router.
    pub fn new(limits: SessionLimits, wiring: Wiring) -> RouterHandle {
        let router = Router::new(limits, wiring);
        let outbox_limit = router.outbox_limit();
        RouterHandle { router: Arc::new(Mutex::new(router)), outbox_limit }
    }

    /// Deliveries one outbox may hold; past it the router drops and counts.
    pub fn outbox_limit(&self) -> usize {
        self.outbox_limit
    }

    /// Registers a connecting client and answers with its session once it is free: at once, or when a
    /// connection still holding the client id has handed it back (takeover).
    pub fn connect(&self, client_id: ClientId, meta: ClientMeta, outbox: Outbox) -> oneshot::Receiver<ConnectOutcome> {
        let (reply, outcome) = oneshot::channel();
        let mut router = lock(&self.router);
        router.connect(client_id, meta, outbox, reply);
        router.update_stats();
        outcome
    }

    /// Routes the publishes one connection read in one go, in order, taking them out of `messages`;
    /// what they did, for the publisher to act on (see `docs/architecture.md`, the message path).
    /// Routing stops after a delivery that finds its connection congested (`Fanout::congested`), with
    /// the rest left in `messages` for after the publisher has waited for room.
    pub fn publish_batch(&self, messages: &mut thin_vec::ThinVec<Arc<Message>>, publisher: &ClientId) -> Fanout {
        let mut fanout = Fanout::default();
        let mut router = lock(&self.router);
        let lone = messages.len() == 1;
        let mut routed = 0;
        for message in messages.iter() {
            // Only a kept QoS 2 flow needs the journal here (`kept_flow` is 0 otherwise).
            let journal = (message.kept_flow != 0).then(|| router.shared.journal.clone()).flatten();
            match journal {
                Some(journal) => journal.together(|| {
                    // The packet id and the deliveries are kept together: a store with the id and without
                    // the deliveries would acknowledge a PUBLISH sent again after a crash and route it
                    // nowhere; one with the deliveries and without the id would route it twice.
                    let awaiting = Change::AwaitingRel { client_id: publisher.clone(), pkid: message.kept_flow };
                    fanout.durable = fanout.durable.max(journal.record(awaiting));
                    router.publish(message, lone, &mut fanout);
                }),
                None => router.publish(message, lone, &mut fanout),
            }
            routed += 1;
            if fanout.congested.is_some() {
                break;
            }
        }
        messages.drain(..routed);
        fanout
    }

    /// Hands messages published on other nodes to this node's subscribers (and keeps those that are
    /// retained), leaving `messages` empty. They go nowhere else: their node sent them to every other.
    pub fn publish_remote(&self, messages: &mut Vec<Arc<Message>>) {
        let mut fanout = Fanout::default();
        let mut router = lock(&self.router);
        for message in messages.drain(..) {
            router.fan_out(&message, false, &mut fanout, true);
        }
    }

    /// Keeps or clears a retained message as the cluster has it, without delivering it.
    pub fn retain_from_cluster(&self, topic: &str, message: Option<Arc<Message>>) {
        lock(&self.router).retain_from_cluster(topic, message);
    }

    /// Hands messages from other nodes to one member each of the shared subscription `route` here
    /// (NATS's queue group chose this node), leaving `messages` empty.
    pub fn publish_to_group(&self, route: &str, messages: &mut Vec<Arc<Message>>) {
        let mut fanout = Fanout::default();
        let mut router = lock(&self.router);
        for message in messages.drain(..) {
            router.fan_out_to_group(message, route, &mut fanout);
        }
    }

    /// Puts back what the store kept, before any client connects.
    pub fn restore(&self, mut restored: crate::store::Restored) {
        let mut router = lock(&self.router);
        router.restore_retained(std::mem::take(&mut restored.retained));
        let expired = std::mem::take(&mut restored.expired);
        router.restore_sessions(restored);
        if let Some(journal) = &router.shared.journal {
            journal.forget(expired);
        }
        router.update_stats();
    }

    /// Routes one message of the broker's own (`$SYS`, a control reply, a will, a publish through the
    /// API), whose sender does not wait for its subscribers.
    pub fn publish(&self, message: Arc<Message>) {
        lock(&self.router).publish(&message, false, &mut Fanout::default());
    }

    /// Filters already validated and ACL-checked by the connection: the options granted, or why a
    /// filter was refused. The SUBACK (and retained messages) go to the connection's outbox.
    pub fn subscribe(
        &self,
        client_id: ClientId,
        conn_id: u64,
        pkid: u16,
        filters: Vec<(String, Result<SubscriptionOptions, ReasonCode>)>,
    ) -> u64 {
        let mut router = lock(&self.router);
        let durable = router.subscribe(client_id, conn_id, pkid, filters);
        router.update_stats();
        durable
    }

    /// Like `subscribe`: what the UNSUBACK must wait for in the store.
    pub fn unsubscribe(&self, client_id: ClientId, conn_id: u64, pkid: u16, filters: Vec<String>) -> u64 {
        let mut router = lock(&self.router);
        let durable = router.unsubscribe(client_id, conn_id, pkid, filters);
        router.update_stats();
        durable
    }

    /// The connection ending now leaves a will to be published after `delay` (MQTT 5), unless the
    /// client resumes its session before; called just before [`RouterHandle::disconnected`].
    pub fn will_after(&self, client_id: ClientId, will: Arc<Message>, delay: Duration) {
        lock(&self.router).will_after(client_id, will, delay);
    }

    /// The connection has ended; its session comes back with whatever is still in its outbox.
    pub fn disconnected(&self, client_id: ClientId, conn_id: u64, session: Box<Session>, rest: OutboxReceiver) {
        let mut router = lock(&self.router);
        router.disconnected(client_id, conn_id, session, rest);
        router.update_stats();
    }

    pub fn list_clients(&self, page: PageRequest) -> Page<ClientRow> {
        lock(&self.router).list_clients(page)
    }

    /// Empty, or the one client if it is online.
    pub fn get_client(&self, client_id: &str) -> Vec<ClientRow> {
        lock(&self.router).get_client(client_id)
    }

    pub fn list_sessions(&self, page: PageRequest) -> Page<SessionRow> {
        lock(&self.router).list_sessions(page)
    }

    pub fn get_session(&self, client_id: &str) -> Vec<SessionRow> {
        lock(&self.router).get_session(client_id)
    }

    pub fn list_subscriptions(&self, page: PageRequest) -> Page<SubscriptionRow> {
        lock(&self.router).list_subscriptions(page)
    }

    pub fn get_subscriptions(&self, client_id: &str) -> Vec<SubscriptionRow> {
        lock(&self.router).get_subscriptions(client_id)
    }

    pub fn list_routes(&self, page: PageRequest) -> Page<RouteRow> {
        lock(&self.router).list_routes(page)
    }

    pub fn get_route(&self, topic: String) -> Vec<RouteRow> {
        lock(&self.router).get_route(topic)
    }

    /// Ends the client's connection; false if it is not online.
    pub fn kick(&self, client_id: &str) -> bool {
        lock(&self.router).kick(client_id)
    }

    /// Another node of the cluster has the client now: its connection here ends as taken over, or its
    /// parked session is dropped; false if it has neither here.
    pub fn taken_over_elsewhere(&self, client_id: &str) -> bool {
        let mut router = lock(&self.router);
        let found = router.take_over(client_id) || router.discard_parked(client_id);
        router.update_stats();
        found
    }

    /// The client ids of the kept sessions parked here (restored from the store, or away).
    pub fn parked_ids(&self) -> Vec<ClientId> {
        lock(&self.router).parked_ids()
    }

    /// Ends the client's connection here as taken over by another node; false if it is not online.
    /// Its session parks as the connection ends, for [`RouterHandle::hand_over`].
    pub fn end_taken_over(&self, client_id: &str) -> bool {
        lock(&self.router).take_over(client_id)
    }

    /// The parked session of `client_id`, given up to the node that took its client over; `None` if
    /// there is no kept session parked here.
    pub fn hand_over(&self, client_id: &str) -> Option<(SessionRecord, Handover)> {
        let mut router = lock(&self.router);
        let handed = router.hand_over(client_id);
        router.update_stats();
        handed
    }

    /// Parks the session another node handed over, for its client, who is connecting, to resume.
    pub fn adopt(&self, record: SessionRecord, handover: Handover) {
        let mut router = lock(&self.router);
        router.adopt(record, handover);
        router.update_stats();
    }

    /// Has the client forget its cached ACL decision for `topic`; false if it is not online.
    pub fn clean_acl_cache(&self, client_id: &str, topic: &str) -> bool {
        lock(&self.router).clean_acl_cache(client_id, topic)
    }

    /// Subscribes a client on its behalf; false if there is no such client. The filter is validated.
    pub fn subscribe_for(&self, client_id: &str, filter: String, qos: QoS) -> bool {
        let mut router = lock(&self.router);
        let found = router.subscribe_for(client_id, filter, qos);
        router.update_stats();
        found
    }

    /// False if there is no such client.
    pub fn unsubscribe_for(&self, client_id: &str, filter: String) -> bool {
        let mut router = lock(&self.router);
        let found = router.unsubscribe_for(client_id, filter);
        router.update_stats();
        found
    }

    /// Queue depths summed, and the `top` clients by messages waiting.
    pub fn queue_report(
        &self,
        top: usize,
    ) -> (midge_shared::control::ReconQueues, Vec<midge_shared::control::ClientQueue>) {
        lock(&self.router).queue_report(top)
    }

    /// Every change to the tables from now on (see [`RouterEvent`]).
    pub fn follow(&self) -> broadcast::Receiver<RouterEvent> {
        lock(&self.router).events.follow()
    }

    /// Expires offline sessions and refreshes the stats, a few times per expiry interval and at least
    /// every second (MQTT 5 clients choose their sessions' expiry, in seconds), until every other
    /// handle is dropped.
    pub async fn sweep(self) {
        let every = lock(&self.router)
            .limits
            .expiry
            .map_or(Duration::from_secs(1), |e| (e / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)));
        let router: Weak<Mutex<Router>> = Arc::downgrade(&self.router);
        drop(self);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(router) = router.upgrade() else { break };
            let mut router = lock(&router);
            router.expire_sessions();
            router.publish_due_wills();
            router.update_stats();
        }
        tracing::debug!("router stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use bytes::Bytes;
    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;
    use crate::metrics::{Metrics, Stats};

    fn router(expiry: Duration) -> RouterHandle {
        let limits = SessionLimits {
            expiry: Some(expiry),
            max_inflight: 32,
            max_mqueue_len: 100,
            mqueue_store_qos0: true,
            max_awaiting_rel: 100,
            await_rel_timeout: Duration::from_secs(20),
            spill: None,
        };
        let wiring = Wiring {
            retaining: Arc::new(AtomicBool::new(true)),
            metrics: Arc::new(Metrics::default()),
            stats: Arc::new(Stats::default()),
            node: "test@127.0.0.1".into(),
            shared_strategy: Default::default(),
            journal: None,
            uplink: None,
        };
        RouterHandle::new(limits, wiring)
    }

    fn meta(clean_session: bool) -> ClientMeta {
        ClientMeta {
            username: None,
            peer: "127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap().into(),
            clean_session,
            expiry: Some(Duration::ZERO),
            proto_ver: 4,
            keepalive: 60,
            connected_at: crate::store::now_wall_ms() as i64,
            hidden: false,
        }
    }

    /// Connects `id`; its session and the connection's end of its outbox.
    async fn connect(router: &RouterHandle, id: &str, conn_id: u64, clean: bool) -> (Box<Session>, OutboxReceiver) {
        let (outbox, receiver) = outbox(conn_id);
        let expiry = if clean { Some(Duration::ZERO) } else { lock(&router.router).limits.expiry };
        match router.connect(id.into(), ClientMeta { expiry, ..meta(clean) }, outbox).await.unwrap() {
            ConnectOutcome::Accepted { session, .. } => (session, receiver),
            ConnectOutcome::Superseded => panic!("superseded"),
        }
    }

    fn retained(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(Bytes::copy_from_slice(topic.as_bytes()), payload.into(), QoS::AtMostOnce, true))
    }

    fn next(events: &mut broadcast::Receiver<RouterEvent>) -> RouterEvent {
        events.try_recv().expect("an event")
    }

    /// Routes, retained messages and parked sessions are told as they change, and only as they change.
    #[tokio::test]
    async fn the_tables_changes_are_told_in_order() {
        let router = router(Duration::from_millis(1));
        let mut events = router.follow();
        let (_a, _a_out) = connect(&router, "a", 1, true).await;
        let (b, b_out) = connect(&router, "b", 2, false).await;
        router.subscribe("a".into(), 1, 1, vec![("t/#".into(), Ok(SubscriptionOptions::qos(QoS::AtLeastOnce)))]);
        assert!(matches!(next(&mut events), RouterEvent::RouteAdded(f) if &*f == "t/#"));
        router.subscribe(
            "b".into(),
            2,
            1,
            vec![
                ("t/#".into(), Ok(SubscriptionOptions::qos(QoS::AtLeastOnce))),
                ("u".into(), Err(ReasonCode::NotAuthorized)),
            ],
        );
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)), "a second holder adds no route");

        router.publish(retained("t/1", b"kept"));
        assert!(matches!(next(&mut events), RouterEvent::RetainedSet(m) if &m.payload[..] == b"kept"));
        router.publish(retained("t/1", b""));
        assert!(matches!(next(&mut events), RouterEvent::RetainedCleared(t) if &*t == "t/1"));
        router.publish(retained("t/1", b""));
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)), "nothing to clear");

        router.disconnected("b".into(), 2, b, b_out);
        assert!(matches!(next(&mut events), RouterEvent::SessionParked(id) if &*id == "b"));
        let (b, b_out) = connect(&router, "b", 3, false).await;
        assert!(matches!(next(&mut events), RouterEvent::SessionResumed(id) if &*id == "b"));
        router.disconnected("b".into(), 3, b, b_out);
        assert!(matches!(next(&mut events), RouterEvent::SessionParked(_)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        lock(&router.router).expire_sessions();
        assert!(matches!(next(&mut events), RouterEvent::SessionExpired(id) if &*id == "b"));
        router.unsubscribe("a".into(), 1, 2, vec!["t/#".into()]);
        assert!(matches!(next(&mut events), RouterEvent::RouteRemoved(f) if &*f == "t/#"), "b's went with it");
    }
}
