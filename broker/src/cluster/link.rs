//! This node's link to the others, through NATS: what its clients publish goes out, what the others'
//! clients publish for its subscribers comes in, and its filters are NATS subscriptions (one or two
//! subjects each, see `subject.rs`), so that NATS sends it only what it wants.
//!
//! Four tasks, so that the router, which calls [`Link`] under its lock, never waits on the network:
//! - `forward`: publishes the messages the router hands over, in the order they were routed, what
//!   came at once for one topic as one NATS message (a batch, see `wire.rs`), with this node's origin
//!   and a sequence number in its headers. The hand-over is bounded: while NATS is slow or away, what
//!   does not fit is dropped and counted, and local traffic goes on.
//! - `interest`: follows the router's route changes, subscribing and unsubscribing, and confirms
//!   each batch of new routes by a round trip through the NATS server (a request this node's control
//!   connection answers, sent after the subscriptions on the same connection): then the server has
//!   them, and a SUBACK held for them can go.
//! - one pump per subscription, into one channel, and `inbound`: drops the copies of a message that
//!   several of this node's subscriptions matched, and routes the rest to local subscribers only.
//!
//! Messages go on the data connection, which does not hear its own publishes (`no_echo`); the control
//! connection answers the round trips.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, HeaderMap, ServerAddr};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::dedupe::Dedupe;
use super::registry::Registry;
use super::{records, retained, subject, wills, wire, ClusterError};
use crate::metrics::{Metric, Metrics};
use crate::protocol::topic;
use crate::router::{RouterHandle, Uplink};
use crate::session::{ClientId, Message};
use crate::store::SessionRecord;

/// Messages waiting to go out; past this, while NATS is slow or away, they are dropped and counted.
const FORWARD_QUEUE: usize = 65_536;
/// Messages come in from all subscriptions through one channel of this size.
const INBOUND_QUEUE: usize = 65_536;
const ORIGIN: &str = "Midge-Origin";
const SEQ: &str = "Midge-Seq";
/// A batch of messages for one subject is cut past this: NATS refuses messages over its
/// `max_payload` (1 MB by default).
const BATCH_BYTES: usize = 256 * 1024;
/// How long a SUBACK waits for NATS to confirm a new route: past it (NATS away), it goes anyway.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// Every node's data connection answers here with its name: a request sent after new subscriptions
/// reaches each node through its data connection's server, after the subscriptions did.
const EVERY_ECHO: &str = "midge.echo.every";

/// How long a starting node waits for NATS before it serves its clients alone.
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

enum RouteChange {
    /// A route, and its number among those added.
    Added(Box<str>, u64),
    Removed(Box<str>),
}

/// The router's side of the link: cheap, non-blocking hand-overs.
pub struct Link {
    messages: mpsc::Sender<Arc<Message>>,
    routes: mpsc::UnboundedSender<RouteChange>,
    /// Routes added so far.
    added: AtomicU64,
    /// How many of those the NATS server is known to have.
    known: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    /// Persistent sessions' records, for `records.rs`.
    sessions: mpsc::UnboundedSender<records::Change>,
    /// Retained messages published here, for `retained.rs` to keep cluster-wide.
    retained: mpsc::Sender<Arc<Message>>,
    /// Delayed wills the router settled, for `wills.rs`.
    wills: mpsc::UnboundedSender<wills::Change>,
}

/// The other ends of the link's channels, until the tasks take them.
pub struct Pending {
    messages: mpsc::Receiver<Arc<Message>>,
    routes: mpsc::UnboundedReceiver<RouteChange>,
    known: watch::Sender<u64>,
    servers: Vec<ServerAddr>,
    sessions: mpsc::UnboundedReceiver<records::Change>,
    retained: mpsc::Receiver<Arc<Message>>,
    metrics: Arc<Metrics>,
    wills: (mpsc::UnboundedSender<wills::Change>, mpsc::UnboundedReceiver<wills::Change>),
}

impl Link {
    pub fn new(servers: &[String], metrics: Arc<Metrics>) -> Result<(Arc<Link>, Pending), ClusterError> {
        let servers = servers
            .iter()
            .map(|url| url.parse().map_err(|e| ClusterError::Url { url: url.clone(), reason: format!("{e}") }))
            .collect::<Result<Vec<ServerAddr>, _>>()?;
        let (messages_tx, messages) = mpsc::channel(FORWARD_QUEUE);
        let (routes_tx, routes) = mpsc::unbounded_channel();
        let (known_tx, known) = watch::channel(0);
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let (retained_tx, retained) = mpsc::channel(FORWARD_QUEUE);
        let (wills_tx, wills_rx) = wills::channel();
        let link = Link {
            messages: messages_tx,
            routes: routes_tx,
            added: AtomicU64::new(0),
            known,
            metrics: metrics.clone(),
            sessions: sessions_tx,
            retained: retained_tx,
            wills: wills_tx.clone(),
        };
        Ok((
            Arc::new(link),
            Pending {
                messages,
                routes,
                known: known_tx,
                servers,
                sessions,
                retained,
                metrics,
                wills: (wills_tx, wills_rx),
            },
        ))
    }

    /// Returns once the NATS server has every route added before the call (or NATS is too slow to
    /// say so: a client's SUBACK is not held past [`CONFIRM_TIMEOUT`]).
    pub async fn routes_known(&self) {
        let wanted = self.added.load(Ordering::Acquire);
        let mut known = self.known.clone();
        let _ = tokio::time::timeout(CONFIRM_TIMEOUT, known.wait_for(|known| *known >= wanted)).await;
    }
}

impl Uplink for Link {
    fn forward(&self, message: &Arc<Message>) {
        if self.messages.try_send(message.clone()).is_err() {
            self.metrics.inc(Metric::MessagesDropped);
        }
        if message.retain && self.retained.try_send(message.clone()).is_err() {
            tracing::warn!(topic = %message.topic_str().escape_debug(), "retained message not kept cluster-wide: too many waiting");
        }
    }

    fn route(&self, filter: &str, added: bool) {
        let change = if added {
            RouteChange::Added(filter.into(), self.added.fetch_add(1, Ordering::AcqRel) + 1)
        } else {
            RouteChange::Removed(filter.into())
        };
        let _ = self.routes.send(change);
    }

    fn session(&self, client_id: &ClientId, record: Option<&SessionRecord>) {
        let _ = self.sessions.send((client_id.clone(), records::encode(record)));
    }

    fn will_settled(&self, client_id: &ClientId) {
        let _ = self.wills.send(wills::Change::Settled(client_id.clone()));
    }
}

impl Pending {
    /// Connects to NATS (in the background: a node starts, and serves its own clients, while NATS is
    /// away) and starts the link's tasks, until `shutdown`.
    pub async fn start(
        self,
        node: &str,
        router: RouterHandle,
        shutdown: CancellationToken,
    ) -> Result<Joined, ClusterError> {
        let incarnation: u64 = rand::random();
        let origin = format!("{node}#{incarnation:016x}");
        let data = connect(&self.servers, format!("{node} data"), true).await?;
        let control = connect(&self.servers, format!("{node} control"), false).await?;
        // A node joins before it serves, unless NATS is away: then it serves its own clients and joins
        // when NATS comes.
        let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
            while [&data, &control].iter().any(|c| c.connection_state() != State::Connected) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        if joined.await.is_err() {
            tracing::warn!(servers = ?self.servers, "NATS not reached: serving this node's clients alone until it is");
        }
        let echo = format!("midge.echo.{incarnation:016x}");
        let answers = control.subscribe(echo.clone()).await.map_err(|e| ClusterError::Nats(e.to_string()))?;
        let every = data.subscribe(EVERY_ECHO).await.map_err(|e| ClusterError::Nats(e.to_string()))?;
        let (peers, peers_watch) = watch::channel(Vec::new());
        let registry = Arc::new(Registry::new(data.clone(), control.clone(), node));
        let releases = registry.clone().answer_releases(router.clone()).await?;
        let (inbound_tx, arrivals) = mpsc::channel(INBOUND_QUEUE);
        let pumps = Pumps { data: data.clone(), queues: control.clone(), inbound: inbound_tx };
        // Every node hears long topics, whatever its filters.
        pumps.subscribe(subject::LONG_SUBJECT.to_string()).await?;
        let retained = retained::start(data.clone(), self.retained, router.clone());
        let tasks = [
            releases,
            tokio::spawn(answer(control.clone(), answers)),
            tokio::spawn(answer_every(data.clone(), every, node.to_string())),
            tokio::spawn(forward(data.clone(), self.messages, origin.clone(), self.metrics)),
            tokio::spawn(interest(pumps, self.routes, self.known, Echoes { own: echo.clone(), peers: peers_watch })),
            tokio::spawn(inbound(arrivals, origin, router)),
        ];
        tokio::spawn(async move {
            shutdown.cancelled().await;
            for task in tasks.into_iter().chain(retained) {
                task.abort();
            }
        });
        // Until the server has this node's own subscriptions, another node would find no one to ask
        // for a client id held here, and retained messages would pass it by.
        for client in [&data, &control] {
            confirm(client, &echo, "this node's subscriptions").await;
        }
        Ok(Joined { data, control, incarnation, registry, sessions: self.sessions, wills: self.wills, peers })
    }
}

/// A node's connections to NATS, once its link runs.
pub struct Joined {
    pub data: Client,
    pub control: Client,
    /// This run of the node: a node restarted under its old name is told apart by it.
    pub incarnation: u64,
    pub registry: Arc<Registry>,
    /// The router's changes to persistent sessions' records.
    pub sessions: mpsc::UnboundedReceiver<records::Change>,
    /// The wills' channel (the router's end of it is the link's).
    pub wills: (mpsc::UnboundedSender<wills::Change>, mpsc::UnboundedReceiver<wills::Change>),
    /// The other live nodes that confirm new routes, for the link to wait for: the membership's to tell.
    pub peers: watch::Sender<Vec<String>>,
}

async fn connect(servers: &[ServerAddr], name: String, no_echo: bool) -> Result<Client, ClusterError> {
    let mut options = ConnectOptions::new()
        .name(name)
        // A server that hangs (rather than closes) is noticed after two unanswered pings.
        .ping_interval(Duration::from_secs(1))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move { tracing::info!(%event, "cluster link") });
    if no_echo {
        options = options.no_echo();
    }
    options.connect(servers.to_vec()).await.map_err(|e| ClusterError::Nats(e.to_string()))
}

/// Answers the round trips that confirm new routes.
async fn answer(control: Client, mut requests: async_nats::Subscriber) {
    while let Some(request) = requests.next().await {
        if let Some(reply) = request.reply {
            let _ = control.publish(reply, Bytes::new()).await;
        }
    }
}

/// Answers other nodes' confirmations of their new routes with this node's name.
async fn answer_every(data: Client, mut requests: async_nats::Subscriber, node: String) {
    let name = Bytes::from(node);
    while let Some(request) = requests.next().await {
        if let Some(reply) = request.reply {
            let _ = data.publish(reply, name.clone()).await;
        }
    }
}

/// Where new routes are confirmed: this node's control connection, and every other live node.
struct Echoes {
    own: String,
    peers: watch::Receiver<Vec<String>>,
}

async fn forward(data: Client, mut messages: mpsc::Receiver<Arc<Message>>, origin: String, metrics: Arc<Metrics>) {
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(256);
    while messages.recv_many(&mut batch, 256).await > 0 {
        // Away from NATS they would wait in the client's buffer and arrive late, after the outage,
        // or not at all: they are dropped, and counted, at once.
        if data.connection_state() != State::Connected {
            metrics.add(Metric::MessagesDropped, batch.len() as u64);
            batch.clear();
            continue;
        }
        // One NATS message per subject (topic) in what came at once, in order within each, so the
        // order per topic holds; a batch is cut where it would grow past BATCH_BYTES.
        let mut bodies: Vec<(String, BytesMut)> = Vec::new();
        let mut open: HashMap<String, usize> = HashMap::new();
        for message in batch.drain(..) {
            let subject = subject::for_topic(message.topic_str());
            let at = match open.get(&subject) {
                Some(&at) if bodies[at].1.len() + message.payload.len() < BATCH_BYTES => at,
                _ => {
                    bodies.push((subject.clone(), BytesMut::new()));
                    open.insert(subject, bodies.len() - 1);
                    bodies.len() - 1
                }
            };
            wire::push_to_batch(&mut bodies[at].1, &message);
        }
        for (subject, body) in bodies {
            seq += 1;
            let mut headers = HeaderMap::new();
            headers.insert(ORIGIN, origin.as_str());
            headers.insert(SEQ, seq.to_string());
            if let Err(e) = data.publish_with_headers(subject, headers, body.freeze()).await {
                tracing::debug!(error = %e, "messages not forwarded");
            }
        }
    }
}

/// A message from another node, and the shared subscription (route) NATS's queue group chose this
/// node for, if it came through one.
struct Arrival {
    message: async_nats::Message,
    group: Option<Arc<str>>,
}

/// Starts subscriptions whose messages all go into one channel.
struct Pumps {
    data: Client,
    /// Shared subscriptions' queue groups are joined on the control connection, which hears this
    /// node's own messages too: NATS then picks among every node with members, this one included.
    queues: Client,
    inbound: mpsc::Sender<Arrival>,
}

impl Pumps {
    /// Subscribes to `subject`; dropping the handle's task (abort) unsubscribes.
    async fn subscribe(&self, subject: String) -> Result<AbortHandle, ClusterError> {
        let subscriber = self.data.subscribe(subject).await.map_err(|e| ClusterError::Nats(e.to_string()))?;
        Ok(self.pump(subscriber, None))
    }

    /// Joins the queue group of the shared subscription `route` on `subject`.
    async fn join(&self, subject: String, route: Arc<str>) -> Result<AbortHandle, ClusterError> {
        let queue = subject::queue_group(&route);
        let subscriber =
            self.queues.queue_subscribe(subject, queue).await.map_err(|e| ClusterError::Nats(e.to_string()))?;
        Ok(self.pump(subscriber, Some(route)))
    }

    fn pump(&self, mut subscriber: async_nats::Subscriber, group: Option<Arc<str>>) -> AbortHandle {
        let inbound = self.inbound.clone();
        let pump = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if inbound.send(Arrival { message, group: group.clone() }).await.is_err() {
                    break;
                }
            }
        });
        pump.abort_handle()
    }
}

/// Which filters become NATS subscriptions: those of clients on this node, but `$local/` ones and
/// those of the broker's own topics, which stay on their node.
fn clustered(filter: &str) -> bool {
    !filter.starts_with("$local/")
        && topic::parse_subscription(filter).is_some_and(|s| !topic::reaches_broker_owned(s.filter()))
}

async fn interest(
    pumps: Pumps,
    mut changes: mpsc::UnboundedReceiver<RouteChange>,
    known: watch::Sender<u64>,
    echoes: Echoes,
) {
    let mut subscriptions: HashMap<Box<str>, Vec<AbortHandle>> = HashMap::new();
    let mut batch = Vec::new();
    while changes.recv_many(&mut batch, 1024).await > 0 {
        // The last route added in this batch, and whether any of them became a NATS subscription.
        let (mut last_added, mut subscribed) = (None, false);
        for change in batch.drain(..) {
            match change {
                RouteChange::Added(filter, number) => {
                    last_added = Some(number);
                    if !clustered(&filter) {
                        continue;
                    }
                    let Some(parsed) = topic::parse_subscription(&filter) else { continue };
                    let mut handles = Vec::new();
                    let mut subjects = subject::for_filter(parsed.filter());
                    let group = parsed.is_shared().then(|| Arc::<str>::from(&*filter));
                    if group.is_some() {
                        // A shared subscription's members take long topics too, once per group.
                        subjects.push(subject::LONG_SUBJECT.to_string());
                    }
                    for subject in subjects {
                        let made = match &group {
                            Some(route) => pumps.join(subject, route.clone()).await,
                            None => pumps.subscribe(subject).await,
                        };
                        match made {
                            Ok(handle) => {
                                handles.push(handle);
                                subscribed = true;
                            }
                            Err(e) => {
                                tracing::warn!(filter = %filter.escape_debug(), error = %e, "route not subscribed in NATS")
                            }
                        }
                    }
                    for old in subscriptions.insert(filter, handles).into_iter().flatten() {
                        old.abort();
                    }
                }
                RouteChange::Removed(filter) => {
                    for handle in subscriptions.remove(&filter).into_iter().flatten() {
                        handle.abort();
                    }
                }
            }
        }
        let Some(number) = last_added else { continue };
        // Away from NATS, a SUBACK has nothing to wait for: the subscriptions are made again on
        // reconnecting, and nothing crosses meanwhile.
        if subscribed {
            // Four independent round trips: waited for together, not one after another.
            let peers = echoes.peers.borrow().clone();
            tokio::join!(
                confirm(&pumps.data, &echoes.own, "new routes"),
                confirm(&pumps.queues, &echoes.own, "new shared routes"),
                confirm_with_every(&pumps.data, &peers, "new routes"),
                confirm_with_every(&pumps.queues, &peers, "new shared routes"),
            );
        }
        known.send_replace(number);
    }
}

/// Returns once the NATS server has processed what `client` sent before (its SUBs): a request sent
/// after them on the same connection, answered by this node's control connection. At once while
/// NATS is away (subscriptions are made again on reconnecting), and at most after `CONFIRM_TIMEOUT`.
///
/// In a NATS cluster the control connection may be on another server, which passes the request on
/// over its route after the subscriptions (routes keep order), so the answer means that server has
/// them too; "no responders" there only means the control connection's own subscription has not
/// reached this server yet, and the request is sent again.
async fn confirm(client: &Client, echo: &str, what: &str) {
    if client.connection_state() != State::Connected {
        return;
    }
    let answered = tokio::time::timeout(CONFIRM_TIMEOUT, async {
        loop {
            match client.request(echo.to_string(), Bytes::new()).await {
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                answer => return answer,
            }
        }
    });
    match answered.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "{what} not confirmed by NATS"),
        Err(_) => tracing::warn!("{what} not confirmed by NATS in time"),
    }
}

/// Returns once every node in `peers` has answered a request sent on `client` after its SUBs: each
/// answers through its data connection, so its data connection's server (where its publishes enter
/// NATS) had the subscriptions first, as servers pass on subscriptions and messages over a route in
/// the order they came. Without it a SUBACK would cover only this node's servers, and in a NATS
/// cluster a publish entering through a third server right after it could find no interest there
/// yet. At most [`CONFIRM_TIMEOUT`] (a node that died meanwhile does not answer).
async fn confirm_with_every(client: &Client, peers: &[String], what: &str) {
    if peers.is_empty() || client.connection_state() != State::Connected {
        return;
    }
    let inbox = client.new_inbox();
    let Ok(mut answers) = client.subscribe(inbox.clone()).await else { return };
    let mut waiting: std::collections::HashSet<&str> = peers.iter().map(String::as_str).collect();
    // Asked again now and then: a node that just joined may be heard before its answering
    // subscription has reached this node's server.
    let mut ask = tokio::time::interval(Duration::from_millis(100));
    let all = tokio::time::timeout(CONFIRM_TIMEOUT, async {
        loop {
            tokio::select! {
                _ = ask.tick() => {
                    if client.publish_with_reply(EVERY_ECHO, inbox.clone(), Bytes::new()).await.is_err() {
                        return;
                    }
                    let _ = client.flush().await;
                }
                answer = answers.next() => {
                    let Some(answer) = answer else { return };
                    waiting.remove(std::str::from_utf8(&answer.payload).unwrap_or_default());
                    if waiting.is_empty() {
                        return;
                    }
                }
            }
        }
    });
    if all.await.is_err() {
        tracing::warn!(unanswered = ?waiting, "{what} not confirmed by every node in time");
    }
    let _ = answers.unsubscribe().await;
}

/// Routes what other nodes sent to this node's subscribers, each message once; what a queue group
/// brought, to one member of its shared subscription (which may be this node's own message).
async fn inbound(mut arrivals: mpsc::Receiver<Arrival>, origin: String, router: RouterHandle) {
    let mut dedupe = Dedupe::default();
    let mut batch = Vec::with_capacity(256);
    let mut routed = Vec::with_capacity(256);
    while arrivals.recv_many(&mut batch, 256).await > 0 {
        for Arrival { message, group } in batch.drain(..) {
            let Some(headers) = &message.headers else { continue };
            let (Some(from), Some(seq)) = (headers.get(ORIGIN), headers.get(SEQ)) else { continue };
            let Ok(seq) = seq.as_str().parse::<u64>() else { continue };
            // A queue group delivers each message once per group; plain subscriptions may overlap.
            if group.is_none() && (from.as_str() == origin || !dedupe.first_time(from.as_str(), seq)) {
                continue;
            }
            let decoded = match wire::decode_batch(&message.payload) {
                Ok(decoded) => decoded.into_iter().map(Arc::new),
                Err(e) => {
                    tracing::warn!(from = %from.as_str(), error = %e, "messages from another node could not be read");
                    continue;
                }
            };
            match group {
                Some(route) => {
                    router.publish_remote(&mut routed);
                    router.publish_to_group(&route, &mut decoded.collect());
                }
                None => routed.extend(decoded),
            }
        }
        router.publish_remote(&mut routed);
    }
}
