//! A session's delivery state: what is in flight to the client, what waits in its queue, and which
//! incoming QoS 2 packet ids await their PUBREL.
//!
//! A `Session` has exactly one owner at a time: the connection task while the client is online, the
//! router while it is offline (clean session 0). Moving the whole struct between them on connect,
//! disconnect and takeover is what keeps it free of locks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{Publish, QoS};

mod message;
mod queue;

pub use message::{ClientId, Delivery, Message, SharedKey};
use queue::Queue;
pub use queue::{Spill, SpillTo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // "awaiting X" is what each state is.
enum InflightState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitComp,
}

#[derive(Debug)]
struct Inflight {
    pkid: u16,
    delivery: Delivery,
    state: InflightState,
}

/// A session's deliveries as they move to another node of the cluster, in order: those in flight
/// under their packet ids (and whether past PUBREC), those queued, and the incoming QoS 2 packet ids
/// awaiting PUBREL. Not kept in any store on their way.
#[derive(Debug, Default)]
pub struct Handover {
    pub inflight: Vec<(u16, bool, Delivery)>,
    pub queued: Vec<Delivery>,
    pub awaiting_rel: Vec<u16>,
}

/// Limits that shape a session, from the broker's configuration.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// How long an offline persistent session is kept; `None` keeps it until the broker stops.
    pub expiry: Option<Duration>,
    pub max_inflight: usize,
    pub max_mqueue_len: usize,
    pub mqueue_store_qos0: bool,
    pub max_awaiting_rel: usize,
    pub await_rel_timeout: Duration,
    /// With a store: where a kept session's long queue goes, and how much of it stays in memory.
    pub spill: SpillTo,
}

/// What the session wants written to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Resend {
    Publish(Publish),
    Pubrel(u16),
}

/// The answer to an acknowledgement from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum AckResult {
    /// The packet id was in flight in the expected state.
    Done,
    /// No such packet id in flight (counted as `/missed`).
    Missed,
    /// A PUBREC for a delivery already past PUBREC: answer it again.
    Repeated,
}

/// A session's figures for the management API, readable by the router while the connection task owns
/// the session itself.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub inflight_len: AtomicU64,
    pub mqueue_len: AtomicU64,
    pub mqueue_dropped: AtomicU64,
    pub awaiting_rel_len: AtomicU64,
    pub deliver_msg: AtomicU64,
    pub enqueue_msg: AtomicU64,
}

impl SessionStats {
    pub fn get(field: &AtomicU64) -> u64 {
        field.load(Ordering::Relaxed)
    }

    /// A message sent to the client (also by a publisher writing a QoS 0 one straight to its socket).
    pub fn count_delivered(&self) {
        self.deliver_msg.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Session {
    pub client_id: ClientId,
    /// How long the session outlives its connection: `Some(ZERO)` not at all (a clean session),
    /// `None` until the broker stops. MQTT 5 clients choose it; 3.1/3.1.1 ones get the broker's.
    pub expiry: Option<Duration>,
    pub stats: Arc<SessionStats>,
    /// Shared by every session of the broker.
    limits: Arc<SessionLimits>,
    /// The connected client's receive maximum (MQTT 5): never more in flight than it allows.
    receive_maximum: Option<u16>,
    /// In send order, so redelivery after reconnect keeps the original order.
    inflight: VecDeque<Inflight>,
    queue: Queue,
    /// Boxed: most sessions never receive a QoS 2 message (`None` until one does).
    awaiting_rel: Option<Box<AwaitingRel>>,
    next_pkid: u16,
    /// The store numbers of kept deliveries this session has finished with (acknowledged, dropped,
    /// expired), for its owner to tell the store.
    forgotten: Vec<u64>,
}

/// Incoming QoS 2 messages acknowledged with PUBREC, until their PUBREL.
#[derive(Debug, Default)]
struct AwaitingRel {
    /// Their packet ids, and since when each is awaited.
    ids: HashMap<u16, Instant>,
    /// Packet ids whose PUBREL was given up on, for the session's owner to tell the store.
    given_up: Vec<u16>,
}

/// The packet id of a kept delivery: its store number, folded into 1..=65535. Derived, not chosen, so
/// after a restart it goes out under the id it may have gone out under before, which is what lets the
/// client recognise a QoS 2 message it has already received. (Two kept deliveries 65,535 numbers
/// apart would share one: the later waits until the earlier is acknowledged.)
pub fn kept_packet_id(store_id: u64) -> u16 {
    (store_id % u16::MAX as u64) as u16 + 1
}

impl Session {
    pub fn new(client_id: ClientId, expiry: Option<Duration>, limits: Arc<SessionLimits>) -> Self {
        Session {
            client_id,
            expiry,
            stats: Arc::default(),
            limits,
            receive_maximum: None,
            inflight: VecDeque::new(),
            queue: Queue::default(),
            awaiting_rel: None,
            next_pkid: 1,
            forgotten: Vec::new(),
        }
    }

    pub fn max_inflight(&self) -> usize {
        self.limits.max_inflight
    }

    /// Whether the session is kept when its connection ends.
    pub fn persistent(&self) -> bool {
        self.expiry != Some(Duration::ZERO)
    }

    /// The receive maximum of the client now connected (`None` for 3.1/3.1.1: the broker's window).
    pub fn set_receive_maximum(&mut self, receive_maximum: Option<u16>) {
        self.receive_maximum = receive_maximum;
    }

    /// How many QoS 1/2 deliveries may be in flight at once; 0 is no limit.
    fn window(&self) -> usize {
        match (self.limits.max_inflight, self.receive_maximum) {
            (broker, None) => broker,
            (0, Some(client)) => client as usize,
            (broker, Some(client)) => broker.min(client as usize),
        }
    }

    pub fn max_mqueue_len(&self) -> usize {
        self.limits.max_mqueue_len
    }

    /// Refreshes the lengths the management API reads; called after every change.
    fn sync_stats(&self) {
        let s = &self.stats;
        s.inflight_len.store(self.inflight.len() as u64, Ordering::Relaxed);
        s.mqueue_len.store(self.queue.len() as u64, Ordering::Relaxed);
        s.awaiting_rel_len.store(self.awaiting_rel_len() as u64, Ordering::Relaxed);
    }

    fn count(field: &AtomicU64) {
        field.fetch_add(1, Ordering::Relaxed);
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn mqueue_len(&self) -> usize {
        self.queue.len()
    }

    /// How many queued deliveries are held in memory (the rest wait in the store).
    pub fn mqueue_in_memory(&self) -> usize {
        self.queue.in_memory()
    }

    pub fn awaiting_rel_len(&self) -> usize {
        self.awaiting_rel.as_ref().map_or(0, |a| a.ids.len())
    }

    /// Where incoming QoS 2 packet ids are recorded, made on the first.
    fn awaiting_rel_mut(&mut self) -> &mut AwaitingRel {
        self.awaiting_rel.get_or_insert_with(Box::default)
    }

    /// Queues a message while the client is offline. Returns false if it was dropped.
    pub fn enqueue_offline(&mut self, delivery: Delivery) -> bool {
        if delivery.qos == QoS::AtMostOnce && !self.limits.mqueue_store_qos0 {
            Self::count(&self.stats.mqueue_dropped);
            return false;
        }
        let kept = self.enqueue(delivery);
        self.sync_stats();
        kept
    }

    /// Queues a message behind the inflight window. A full queue drops its oldest entry, as EMQ does,
    /// so a reconnecting client sees the newest data. Returns false if something was dropped.
    fn enqueue(&mut self, delivery: Delivery) -> bool {
        Self::count(&self.stats.enqueue_msg);
        if self.limits.max_mqueue_len == 0 {
            Self::count(&self.stats.mqueue_dropped);
            return false;
        }
        let mut kept = true;
        if self.queue.len() >= self.limits.max_mqueue_len {
            if let Some(oldest) = self.queue.drop_oldest().filter(|id| *id != 0) {
                self.forgotten.push(oldest);
            }
            Self::count(&self.stats.mqueue_dropped);
            kept = false;
        }
        self.queue.push_back(delivery, &self.limits.spill);
        kept
    }

    /// Takes a message for an online client: returns the PUBLISH to write now, or queues it behind a
    /// full inflight window. Returns whether anything was dropped through `dropped`.
    pub fn deliver(&mut self, delivery: Delivery, dropped: &mut bool) -> Option<Publish> {
        if delivery.expired() {
            self.forget(&delivery);
            *dropped = true;
            return None;
        }
        if delivery.qos == QoS::AtMostOnce {
            self.stats.count_delivered();
            return Some(delivery.publish(0, false));
        }
        let sent = if self.window_full() || !self.queue.is_empty() || self.packet_id_taken(delivery.store_id) {
            *dropped |= !self.enqueue(delivery);
            None
        } else {
            Some(self.send_inflight(delivery))
        };
        self.sync_stats();
        sent
    }

    /// Takes the messages that came through shared subscriptions and were not sent, for other members
    /// to have; with `unacknowledged`, also the QoS 1 ones sent and not acknowledged (at least once
    /// allows sending those again: a session about to end would only lose them). QoS 2 ones in flight
    /// stay, as the member may have them and exactly once allows no second copy.
    pub fn take_shared(&mut self, unacknowledged: bool) -> Vec<Delivery> {
        let mut taken = Vec::new();
        if unacknowledged && self.inflight.iter().any(|e| e.delivery.shared.is_some()) {
            let (shared, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.inflight)
                .into_iter()
                .partition(|e| e.delivery.shared.is_some() && e.state == InflightState::AwaitAck);
            self.inflight = rest;
            taken.extend(shared.into_iter().map(|e| e.delivery));
        }
        taken.extend(self.queue.take_shared());
        self.sync_stats();
        taken
    }

    /// Moves queued messages into the window while it has room.
    pub fn drain_queue(&mut self, out: &mut Vec<Resend>) {
        while let Some(publish) = self.next_queued() {
            out.push(Resend::Publish(publish));
        }
    }

    /// Moves the next queued message into the window if it has room: the PUBLISH to write. Messages
    /// that expired while they waited are dropped on the way (MQTT 5's message expiry).
    pub fn next_queued(&mut self) -> Option<Publish> {
        if self.window_full() {
            return None;
        }
        let delivery = loop {
            // Read back from the store if it waited there; what expired meanwhile is dropped on the way.
            let gone = self.forgotten.len();
            let front =
                self.queue.front(&mut self.forgotten, &self.limits.spill).map(|d| (d.expired(), d.qos, d.store_id));
            for _ in gone..self.forgotten.len() {
                Self::count(&self.stats.mqueue_dropped);
            }
            let (expired, qos, store_id) = front?;
            if expired {
                if let Some(expired) = self.queue.pop_front(&mut self.forgotten, &self.limits.spill) {
                    self.forget(&expired);
                }
                Self::count(&self.stats.mqueue_dropped);
                continue;
            }
            if qos != QoS::AtMostOnce && self.packet_id_taken(store_id) {
                return None;
            }
            break self.queue.pop_front(&mut self.forgotten, &self.limits.spill)?;
        };
        let publish = if delivery.qos == QoS::AtMostOnce {
            self.stats.count_delivered();
            delivery.publish(0, false)
        } else {
            self.send_inflight(delivery)
        };
        self.sync_stats();
        Some(publish)
    }

    /// Everything to resend when a persistent session resumes: unacknowledged PUBLISHes with DUP set,
    /// PUBRELs for those past PUBREC, then as much of the queue as the window takes.
    pub fn resume(&mut self, out: &mut Vec<Resend>) {
        for entry in &self.inflight {
            out.push(match entry.state {
                InflightState::AwaitComp => Resend::Pubrel(entry.pkid),
                _ => Resend::Publish(entry.delivery.publish(entry.pkid, true)),
            });
        }
        self.drain_queue(out);
    }

    /// Puts back a delivery the store kept, as it was: past PUBREC (`released`), in flight awaiting
    /// PUBCOMP, else queued, to be sent with DUP set as it may have been sent before.
    pub fn restore(&mut self, delivery: Delivery, released: bool) {
        if released && delivery.qos == QoS::ExactlyOnce && !self.packet_id_taken(delivery.store_id) {
            let pkid = kept_packet_id(delivery.store_id);
            self.inflight.push_back(Inflight { pkid, delivery, state: InflightState::AwaitComp });
            self.sync_stats();
        } else {
            self.enqueue_offline(Delivery { dup: true, ..delivery });
        }
    }

    /// Gives up every delivery and packet id it holds, for another node to take over; what the store
    /// kept of them is forgotten here (see `take_forgotten`).
    pub fn hand_over(&mut self) -> Handover {
        let mut handover = Handover::default();
        for entry in std::mem::take(&mut self.inflight) {
            self.forget(&entry.delivery);
            let released = entry.state == InflightState::AwaitComp;
            handover.inflight.push((entry.pkid, released, Delivery { store_id: 0, shared: None, ..entry.delivery }));
        }
        let mut gone = Vec::new();
        while let Some(delivery) = self.queue.pop_front(&mut gone, &self.limits.spill) {
            self.forget(&delivery);
            handover.queued.push(Delivery { store_id: 0, shared: None, ..delivery });
        }
        self.forgotten.extend(gone);
        if let Some(awaiting) = &mut self.awaiting_rel {
            handover.awaiting_rel = awaiting.ids.drain().map(|(pkid, _)| pkid).collect();
        }
        handover.awaiting_rel.sort_unstable();
        self.sync_stats();
        handover
    }

    /// Takes over what another node's session of this client held: in flight under the same packet
    /// ids (resent with DUP, or PUBREL, when the client resumes), then queued. `keep` numbers the
    /// deliveries for the store, as it does every delivery of a kept session.
    pub fn take_over_from(&mut self, handover: Handover, keep: impl FnOnce(&mut [Delivery])) {
        let Handover { inflight, queued, awaiting_rel } = handover;
        let (states, mut deliveries): (Vec<(u16, bool)>, Vec<Delivery>) =
            inflight.into_iter().map(|(pkid, released, delivery)| ((pkid, released), delivery)).unzip();
        let in_flight = deliveries.len();
        deliveries.extend(queued);
        keep(&mut deliveries);
        let mut deliveries = deliveries.into_iter();
        for ((pkid, released), delivery) in states.into_iter().zip(deliveries.by_ref().take(in_flight)) {
            let state = match (released, delivery.qos) {
                (true, _) => InflightState::AwaitComp,
                (false, QoS::ExactlyOnce) => InflightState::AwaitRec,
                (false, _) => InflightState::AwaitAck,
            };
            self.inflight.push_back(Inflight { pkid, delivery: Delivery { dup: true, ..delivery }, state });
        }
        for delivery in deliveries {
            self.enqueue(delivery);
        }
        for pkid in awaiting_rel {
            self.awaiting_rel_mut().ids.insert(pkid, Instant::now());
        }
        self.sync_stats();
    }

    /// Puts back an incoming QoS 2 packet id the store kept as awaiting PUBREL.
    pub fn restore_awaiting_rel(&mut self, pkid: u16) {
        self.awaiting_rel_mut().ids.insert(pkid, Instant::now());
        self.sync_stats();
    }

    /// The store number of the delivery in flight under `pkid` (0: none, or not kept).
    pub fn kept_id(&self, pkid: u16) -> u64 {
        self.inflight.iter().find(|e| e.pkid == pkid).map_or(0, |e| e.delivery.store_id)
    }

    pub fn puback(&mut self, pkid: u16) -> AckResult {
        self.finish(pkid, InflightState::AwaitAck)
    }

    /// PUBREC moves a QoS 2 delivery on to PUBREL; a repeated PUBREC is answered with PUBREL again.
    pub fn pubrec(&mut self, pkid: u16) -> AckResult {
        match self.inflight.iter_mut().find(|e| e.pkid == pkid) {
            Some(e) if matches!(e.state, InflightState::AwaitRec | InflightState::AwaitComp) => {
                // A repeated PUBREC is answered, but counted once.
                let first = e.state == InflightState::AwaitRec;
                e.state = InflightState::AwaitComp;
                if first {
                    AckResult::Done
                } else {
                    AckResult::Repeated
                }
            }
            _ => AckResult::Missed,
        }
    }

    pub fn pubcomp(&mut self, pkid: u16) -> AckResult {
        self.finish(pkid, InflightState::AwaitComp)
    }

    /// Records an incoming QoS 2 packet id. Returns `Some(true)` for a new message (route it),
    /// `Some(false)` for a retransmission (acknowledge, do not route again), `None` when the
    /// awaiting-PUBREL set is full (drop it).
    pub fn incoming_qos2(&mut self, pkid: u16) -> Option<bool> {
        if self.awaiting_rel.as_ref().is_some_and(|a| a.ids.contains_key(&pkid)) {
            return Some(false);
        }
        let full = |s: &Self| s.limits.max_awaiting_rel > 0 && s.awaiting_rel_len() >= s.limits.max_awaiting_rel;
        // Stale ids only matter once the set is full, so that is when they are swept.
        if full(self) && (self.expire_awaiting_rel(Instant::now()) == 0 || full(self)) {
            return None;
        }
        self.awaiting_rel_mut().ids.insert(pkid, Instant::now());
        self.sync_stats();
        Some(true)
    }

    /// PUBREL from the client. Returns whether the packet id was awaited.
    pub fn pubrel(&mut self, pkid: u16) -> AckResult {
        let result = match self.awaiting_rel.as_mut().and_then(|a| a.ids.remove(&pkid)) {
            Some(_) => AckResult::Done,
            None => AckResult::Missed,
        };
        self.sync_stats();
        result
    }

    /// Forgets incoming QoS 2 packet ids whose PUBREL never came. Returns how many.
    pub fn expire_awaiting_rel(&mut self, now: Instant) -> usize {
        let timeout = self.limits.await_rel_timeout;
        let Some(AwaitingRel { ids, given_up }) = self.awaiting_rel.as_deref_mut() else {
            return 0;
        };
        let before = ids.len();
        ids.retain(|pkid, since| {
            let keep = now.duration_since(*since) < timeout;
            if !keep {
                given_up.push(*pkid);
            }
            keep
        });
        before - ids.len()
    }

    /// Incoming packet ids whose PUBREL was given up on since the last call (for the store to free).
    pub fn take_rel_given_up(&mut self) -> Vec<u16> {
        self.awaiting_rel.as_mut().map(|a| std::mem::take(&mut a.given_up)).unwrap_or_default()
    }

    /// Forgets a delivery in flight that could not be sent (too large for the client): as if acknowledged.
    pub fn discard(&mut self, pkid: u16) {
        if let Some(i) = self.inflight.iter().position(|e| e.pkid == pkid) {
            if let Some(dropped) = self.inflight.remove(i) {
                self.forget(&dropped.delivery);
            }
            self.sync_stats();
        }
    }

    fn finish(&mut self, pkid: u16, expected: InflightState) -> AckResult {
        match self.inflight.iter().position(|e| e.pkid == pkid && e.state == expected) {
            Some(i) => {
                if let Some(done) = self.inflight.remove(i) {
                    self.forget(&done.delivery);
                }
                self.sync_stats();
                AckResult::Done
            }
            None => AckResult::Missed,
        }
    }

    fn forget(&mut self, delivery: &Delivery) {
        if delivery.store_id != 0 {
            self.forgotten.push(delivery.store_id);
        }
    }

    /// The store numbers of every kept delivery the session still holds, queued or in flight (for a
    /// session that ends: the store lets them go with it).
    pub fn stored_ids(&self) -> Vec<u64> {
        let queued = self.queue.store_ids();
        let inflight = self.inflight.iter().map(|e| e.delivery.store_id);
        queued.chain(inflight).chain(self.forgotten.iter().copied()).filter(|id| *id != 0).collect()
    }

    /// The store numbers of kept deliveries finished with since the last call.
    pub fn take_forgotten(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.forgotten)
    }

    /// Whether the inflight window is full, so a QoS 1 or 2 delivery would only be queued.
    pub fn window_full(&self) -> bool {
        let window = self.window();
        window > 0 && self.inflight.len() >= window
    }

    /// Whether the packet id a kept delivery must go under is in flight already: it waits for it.
    fn packet_id_taken(&self, store_id: u64) -> bool {
        store_id != 0 && {
            let pkid = kept_packet_id(store_id);
            self.inflight.iter().any(|e| e.pkid == pkid)
        }
    }

    fn send_inflight(&mut self, delivery: Delivery) -> Publish {
        let pkid = match delivery.store_id {
            0 => self.next_packet_id(),
            id => kept_packet_id(id),
        };
        let publish = delivery.publish(pkid, delivery.dup);
        let state = match delivery.qos {
            QoS::ExactlyOnce => InflightState::AwaitRec,
            _ => InflightState::AwaitAck,
        };
        self.stats.count_delivered();
        self.inflight.push_back(Inflight { pkid, delivery, state });
        publish
    }

    /// The next packet id not in flight. The window is far smaller than 65535, so this ends quickly.
    fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|e| e.pkid == id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits(max_inflight: usize, max_mqueue_len: usize) -> Arc<SessionLimits> {
        Arc::new(SessionLimits {
            expiry: None,
            max_inflight,
            max_mqueue_len,
            mqueue_store_qos0: true,
            max_awaiting_rel: 2,
            await_rel_timeout: Duration::from_secs(20),
            spill: None,
        })
    }

    fn delivery(n: u8, qos: QoS) -> Delivery {
        let message = Arc::new(Message::new(Bytes::from_static(b"t"), Bytes::from(vec![n]), qos, false));
        Delivery::new(message, qos, false)
    }

    #[test]
    fn window_queue_and_acks() {
        let mut s = Session::new("c".into(), None, limits(2, 2));
        let mut dropped = false;
        let p1 = s.deliver(delivery(1, QoS::AtLeastOnce), &mut dropped).unwrap();
        let p2 = s.deliver(delivery(2, QoS::ExactlyOnce), &mut dropped).unwrap();
        assert_eq!((p1.pkid, p2.pkid), (1, 2));
        for n in 3..=5 {
            assert!(s.deliver(delivery(n, QoS::AtLeastOnce), &mut dropped).is_none());
        }
        // Queue of 2 dropped its oldest (3).
        assert!(dropped);
        assert_eq!((s.inflight_len(), s.mqueue_len()), (2, 2));
        assert_eq!(SessionStats::get(&s.stats.mqueue_dropped), 1);
        assert_eq!(SessionStats::get(&s.stats.mqueue_len), 2);
        assert_eq!(s.puback(2), AckResult::Missed, "pkid 2 is QoS 2");
        assert_eq!(s.puback(1), AckResult::Done);
        let mut out = Vec::new();
        s.drain_queue(&mut out);
        match &out[..] {
            [Resend::Publish(p)] => assert_eq!((p.pkid, &p.payload[..]), (3, &[4u8][..])),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.pubrec(2), AckResult::Done);
        let mut out = Vec::new();
        s.resume(&mut out);
        assert_eq!(out[0], Resend::Pubrel(2));
        match &out[1] {
            Resend::Publish(p) => assert!(p.dup && p.pkid == 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.pubrec(2), AckResult::Repeated);
        assert_eq!(s.pubcomp(2), AckResult::Done);
        assert_eq!(s.pubcomp(2), AckResult::Missed);
        assert_eq!(SessionStats::get(&s.stats.inflight_len), 1);
    }

    #[test]
    fn awaiting_rel_limit_and_timeout() {
        let mut s = Session::new("c".into(), None, limits(2, 2));
        assert_eq!(s.incoming_qos2(1), Some(true));
        assert_eq!(s.incoming_qos2(1), Some(false));
        assert_eq!(s.incoming_qos2(2), Some(true));
        assert_eq!(s.incoming_qos2(3), None);
        assert_eq!(s.pubrel(1), AckResult::Done);
        assert_eq!(s.pubrel(1), AckResult::Missed);
        assert_eq!(s.expire_awaiting_rel(Instant::now() + Duration::from_secs(21)), 1);
        assert_eq!(s.awaiting_rel_len(), 0);
        assert_eq!(s.take_rel_given_up(), vec![2]);
    }

    fn kept(n: u8, qos: QoS, store_id: u64) -> Delivery {
        Delivery { store_id, ..delivery(n, qos) }
    }

    #[test]
    fn kept_deliveries_go_under_packet_ids_their_numbers_give() {
        let mut s = Session::new("c".into(), None, limits(4, 10));
        let mut d = false;
        let a = s.deliver(kept(1, QoS::AtLeastOnce, 41), &mut d).unwrap();
        assert_eq!((a.pkid, a.dup), (kept_packet_id(41), false));
        // 65,535 numbers on, the same id: it waits for the first, and so does what follows it.
        assert!(s.deliver(kept(2, QoS::ExactlyOnce, 41 + 65_535), &mut d).is_none());
        assert!(s.deliver(kept(3, QoS::AtLeastOnce, 70_000), &mut d).is_none());
        assert_eq!((s.inflight_len(), s.mqueue_len()), (1, 2));
        assert_eq!(s.puback(a.pkid), AckResult::Done);
        let b = s.next_queued().unwrap();
        assert_eq!((b.pkid, &b.payload[..]), (kept_packet_id(41), &[2u8][..]));
        assert_eq!(s.kept_id(b.pkid), 41 + 65_535);
        assert_eq!(s.next_queued().unwrap().pkid, kept_packet_id(70_000));
    }

    #[test]
    fn restored_deliveries_resume_as_they_were() {
        let mut s = Session::new("c".into(), None, limits(4, 10));
        s.restore(kept(1, QoS::ExactlyOnce, 7), true);
        s.restore(kept(2, QoS::ExactlyOnce, 9), false);
        s.restore(kept(3, QoS::AtLeastOnce, 12), false);
        s.restore_awaiting_rel(300);
        let mut out = Vec::new();
        s.resume(&mut out);
        let Resend::Publish(second) = &out[1] else { panic!("{out:?}") };
        let Resend::Publish(third) = &out[2] else { panic!("{out:?}") };
        assert_eq!(out[0], Resend::Pubrel(kept_packet_id(7)));
        assert_eq!(
            (second.pkid, second.dup, third.pkid, third.dup),
            (kept_packet_id(9), true, kept_packet_id(12), true)
        );
        assert_eq!(s.incoming_qos2(300), Some(false), "a PUBLISH sent again is not routed again");
        assert_eq!(s.pubcomp(kept_packet_id(7)), AckResult::Done);
        assert_eq!(s.take_forgotten(), vec![7]);
    }

    /// Every connection and every kept session has one: its limits are shared, and the runs of a long
    /// queue that waits in the store are allocated only while it does.
    #[test]
    fn a_session_stays_small() {
        let size = std::mem::size_of::<Session>();
        assert!(size <= 224, "a session is {size} bytes");
    }

    #[test]
    fn packet_ids_skip_those_in_flight() {
        let mut s = Session::new("c".into(), None, limits(3, 10));
        s.next_pkid = u16::MAX;
        let mut d = false;
        let a = s.deliver(delivery(1, QoS::AtLeastOnce), &mut d).unwrap().pkid;
        let b = s.deliver(delivery(2, QoS::AtLeastOnce), &mut d).unwrap().pkid;
        assert_eq!((a, b), (u16::MAX, 1));
        s.next_pkid = u16::MAX;
        let c = s.deliver(delivery(3, QoS::AtLeastOnce), &mut d).unwrap().pkid;
        assert_eq!(c, 2);
    }
}
