//! The router: one task that owns who is connected, every subscription, offline sessions and retained
//! messages. Connections talk to it through one bounded inbox; it answers each connection through that
//! connection's own outbox. It never awaits a connection, so a slow client cannot stall it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::codec::{QoS, Suback, SubackCode};
use crate::session::{Delivery, Message, Session, SessionLimits};
use crate::subscriptions::{ClientId, SubscriptionTree};
use crate::topic;

/// Capacity of the router's inbox. Publishers wait when it is full, which is the broker's backpressure.
const INBOX_CAPACITY: usize = 16 * 1024;

/// What connections ask of the router.
#[derive(Debug)]
pub enum Request {
    Connect {
        client_id: ClientId,
        clean_session: bool,
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
        rest: mpsc::UnboundedReceiver<Outbound>,
    },
}

#[derive(Debug)]
pub enum ConnectOutcome {
    /// A session to use: resumed (`present`) or new.
    Accepted {
        session: Box<Session>,
        present: bool,
    },
    /// Another connection with the same client id arrived while this one waited.
    Superseded,
}

/// What the router sends to one connection, in order.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Delivery),
    /// A SUBACK to write, then retained messages for the new subscriptions.
    Subscribed {
        suback: Suback,
        retained: Vec<Delivery>,
    },
    Unsubscribed(u16),
    /// Another connection took this client id over: end without a DISCONNECT (the will is published).
    TakenOver,
}

/// The router's handle on one connection: its outbox and a count of deliveries not yet taken, which
/// bounds the outbox even though the channel itself is unbounded.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub conn_id: u64,
    tx: mpsc::UnboundedSender<Outbound>,
    pending: Arc<AtomicUsize>,
}

/// The connection's end of its outbox.
#[derive(Debug)]
pub struct OutboxReceiver {
    pub rx: mpsc::UnboundedReceiver<Outbound>,
    pending: Arc<AtomicUsize>,
}

impl OutboxReceiver {
    /// Call once per `Outbound::Deliver` taken from `rx`.
    pub fn took_delivery(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn outbox(conn_id: u64) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            conn_id,
            tx,
            pending: pending.clone(),
        },
        OutboxReceiver { rx, pending },
    )
}

/// A cheap, cloneable way to reach the router.
#[derive(Debug, Clone)]
pub struct RouterHandle {
    tx: mpsc::Sender<Request>,
}

impl RouterHandle {
    /// Fails only when the router has stopped (the broker is shutting down).
    pub async fn send(&self, request: Request) -> Result<(), RouterGone> {
        self.tx.send(request).await.map_err(|_| RouterGone)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the router has stopped")]
pub struct RouterGone;

enum Presence {
    Online(Outbox),
    Offline(Box<Session>),
}

struct PendingConnect {
    clean_session: bool,
    outbox: Outbox,
    reply: oneshot::Sender<ConnectOutcome>,
}

struct Client {
    presence: Presence,
    /// The client's filters and granted QoS, so a discarded session can leave the trie.
    filters: HashMap<String, QoS>,
    /// A connection waiting for this one to hand its session over (takeover).
    pending: Option<PendingConnect>,
}

pub struct Router {
    inbox: mpsc::Receiver<Request>,
    clients: HashMap<ClientId, Client>,
    subscriptions: SubscriptionTree,
    retained: BTreeMap<String, Arc<Message>>,
    limits: SessionLimits,
    /// Reused for every publish, so matching does not allocate.
    matched: Vec<(ClientId, QoS)>,
}

impl Router {
    pub fn new(limits: SessionLimits) -> (Router, RouterHandle) {
        let (tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let router = Router {
            inbox,
            clients: HashMap::new(),
            subscriptions: SubscriptionTree::new(),
            retained: BTreeMap::new(),
            limits,
            matched: Vec::new(),
        };
        (router, RouterHandle { tx })
    }

    /// Runs until every handle is dropped.
    pub async fn run(mut self) {
        while let Some(request) = self.inbox.recv().await {
            self.handle(request);
        }
        tracing::debug!("router stopped");
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Connect {
                client_id,
                clean_session,
                outbox,
                reply,
            } => self.connect(client_id, clean_session, outbox, reply),
            Request::Publish(message) => self.publish(message),
            Request::Subscribe {
                client_id,
                conn_id,
                pkid,
                filters,
            } => self.subscribe(client_id, conn_id, pkid, filters),
            Request::Unsubscribe {
                client_id,
                conn_id,
                pkid,
                filters,
            } => self.unsubscribe(client_id, conn_id, pkid, filters),
            Request::Disconnected {
                client_id,
                conn_id,
                session,
                rest,
            } => self.disconnected(client_id, conn_id, session, rest),
        }
    }

    fn connect(
        &mut self,
        client_id: ClientId,
        clean: bool,
        outbox: Outbox,
        reply: oneshot::Sender<ConnectOutcome>,
    ) {
        let Some(client) = self.clients.get_mut(&client_id) else {
            let session = Box::new(Session::new(client_id.clone(), clean, self.limits.clone()));
            self.clients.insert(
                client_id,
                Client {
                    presence: Presence::Online(outbox),
                    filters: HashMap::new(),
                    pending: None,
                },
            );
            let _ = reply.send(ConnectOutcome::Accepted {
                session,
                present: false,
            });
            return;
        };
        match &client.presence {
            Presence::Online(old) => {
                // Ask the old connection to hand its session back; answer the new one then.
                if client.pending.is_none() && old.tx.send(Outbound::TakenOver).is_err() {
                    // Its task is gone without handing the session back: start afresh.
                    tracing::warn!(client = %client_id, "previous connection vanished; session lost");
                    client.presence = Presence::Online(outbox);
                    self.drop_subscriptions(&client_id);
                    let session = Box::new(Session::new(client_id, clean, self.limits.clone()));
                    let _ = reply.send(ConnectOutcome::Accepted {
                        session,
                        present: false,
                    });
                    return;
                }
                let pending = PendingConnect {
                    clean_session: clean,
                    outbox,
                    reply,
                };
                if let Some(superseded) = client.pending.replace(pending) {
                    let _ = superseded.reply.send(ConnectOutcome::Superseded);
                }
            }
            Presence::Offline(_) => {
                let Presence::Offline(session) =
                    std::mem::replace(&mut client.presence, Presence::Online(outbox))
                else {
                    unreachable!("matched Offline above")
                };
                self.resume(client_id, session, clean, reply);
            }
        }
    }

    /// Hands a stored session to a connecting client, or discards it for a clean start.
    fn resume(
        &mut self,
        client_id: ClientId,
        old: Box<Session>,
        clean: bool,
        reply: oneshot::Sender<ConnectOutcome>,
    ) {
        if clean || old.clean_session {
            self.drop_subscriptions(&client_id);
            let session = Box::new(Session::new(client_id, clean, self.limits.clone()));
            let _ = reply.send(ConnectOutcome::Accepted {
                session,
                present: false,
            });
        } else {
            let _ = reply.send(ConnectOutcome::Accepted {
                session: old,
                present: true,
            });
        }
    }

    fn disconnected(
        &mut self,
        client_id: ClientId,
        conn_id: u64,
        mut session: Box<Session>,
        mut rest: mpsc::UnboundedReceiver<Outbound>,
    ) {
        let Some(client) = self.clients.get_mut(&client_id) else {
            return;
        };
        match &client.presence {
            Presence::Online(outbox) if outbox.conn_id == conn_id => {}
            _ => return, // A stale connection; the client has moved on.
        }
        // Deliveries the connection never read stay with the session.
        rest.close();
        while let Ok(outbound) = rest.try_recv() {
            if let Outbound::Deliver(d) = outbound {
                session.enqueue_offline(d);
            }
        }
        if let Some(pending) = client.pending.take() {
            client.presence = Presence::Online(pending.outbox);
            self.resume(client_id, session, pending.clean_session, pending.reply);
        } else if session.clean_session {
            self.drop_subscriptions(&client_id);
            self.clients.remove(&client_id);
        } else {
            client.presence = Presence::Offline(session);
        }
    }

    fn drop_subscriptions(&mut self, client_id: &ClientId) {
        let Some(client) = self.clients.get_mut(client_id) else {
            return;
        };
        for filter in std::mem::take(&mut client.filters).into_keys() {
            self.subscriptions.unsubscribe(&filter, client_id);
        }
    }

    fn publish(&mut self, message: Arc<Message>) {
        if message.retain {
            self.retain(&message);
        }
        let mut matched = std::mem::take(&mut self.matched);
        matched.clear();
        self.subscriptions
            .matches(message.topic_str(), &mut matched);
        // A client with overlapping filters gets the message once, at its highest granted QoS.
        matched.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        matched.dedup_by(|later, first| later.0 == first.0);
        for (client_id, granted) in &matched {
            let qos = message.qos.min(*granted);
            self.deliver(
                client_id,
                Delivery {
                    message: message.clone(),
                    qos,
                    retain: false,
                },
            );
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
    }

    fn deliver(&mut self, client_id: &ClientId, delivery: Delivery) {
        let Some(client) = self.clients.get_mut(client_id) else {
            return;
        };
        match &mut client.presence {
            Presence::Online(outbox) => {
                // Count first: the connection decrements when it takes the delivery.
                if outbox.pending.fetch_add(1, Ordering::Relaxed)
                    >= self.limits.max_mqueue_len.max(1)
                {
                    outbox.pending.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!(client = %client_id, "outbox full, message dropped");
                    return;
                }
                let _ = outbox.tx.send(Outbound::Deliver(delivery));
            }
            Presence::Offline(session) => {
                session.enqueue_offline(delivery);
            }
        }
    }

    fn subscribe(
        &mut self,
        client_id: ClientId,
        conn_id: u64,
        pkid: u16,
        filters: Vec<(String, SubackCode)>,
    ) {
        let Some(client) = self.clients.get_mut(&client_id) else {
            return;
        };
        let Presence::Online(outbox) = &client.presence else {
            return;
        };
        if outbox.conn_id != conn_id {
            return;
        }
        let mut retained = Vec::new();
        for (filter, code) in &filters {
            let Some(qos) = code else { continue };
            self.subscriptions.subscribe(filter, &client_id, *qos);
            client.filters.insert(filter.clone(), *qos);
            for (topic, message) in &self.retained {
                if topic::matches(filter, topic) {
                    let qos = message.qos.min(*qos);
                    retained.push(Delivery {
                        message: message.clone(),
                        qos,
                        retain: true,
                    });
                }
            }
        }
        let suback = Suback {
            pkid,
            codes: filters.into_iter().map(|(_, c)| c).collect(),
        };
        let _ = outbox.tx.send(Outbound::Subscribed { suback, retained });
    }

    fn unsubscribe(&mut self, client_id: ClientId, conn_id: u64, pkid: u16, filters: Vec<String>) {
        let Some(client) = self.clients.get_mut(&client_id) else {
            return;
        };
        let Presence::Online(outbox) = &client.presence else {
            return;
        };
        if outbox.conn_id != conn_id {
            return;
        }
        for filter in &filters {
            if client.filters.remove(filter).is_some() {
                self.subscriptions.unsubscribe(filter, &client_id);
            }
        }
        let _ = outbox.tx.send(Outbound::Unsubscribed(pkid));
    }
}
