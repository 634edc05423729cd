//! Who is in the cluster. Every node says it is alive on `midge.node.<its name>` every
//! [`HEARTBEAT`] and hears every node's heartbeats; a node unheard for [`DEAD_AFTER`] is gone, and so is
//! one that said it was leaving. A node heard under a new incarnation restarted. The live nodes' names
//! are watched by whoever reports them (`$SYS/brokers`); a node gone silent, or restarted, leaves wills
//! behind for the survivors to fire (`wills.rs`). One that left in good order cleared its own.
//!
//! Silence is measured against the node's own heartbeats, which come back to it through NATS like
//! everyone's: a node that does not hear itself (cut off, or its NATS server stopped) says nothing of
//! the others, and once it hears itself again after such a gap it gives every other node a fresh
//! [`DEAD_AFTER`] to be heard before it takes any for dead. So an outage on this node's side never
//! fires the wills of clients still connected elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::Client;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::wills::Wills;
use super::{subject, ClusterError};
use crate::store::{now_wall_ms, SessionRecord};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a node may stay silent before it is taken for dead: four heartbeats, so that one lost or
/// late heartbeat is not a death, and a death is seen within [`DEAD_AFTER`] + [`HEARTBEAT`] / 2.
pub const DEAD_AFTER: Duration = Duration::from_secs(2);
const SUBJECTS: &str = "midge.node.*";
/// A gap this long between two of its own heartbeats means the node was cut off meanwhile.
const AWAY_AFTER: Duration = Duration::from_millis(1250);

#[derive(Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    incarnation: u64,
    #[serde(default)]
    leaving: bool,
    /// It answers other nodes' confirmations of new routes (`midge.echo.every`); a node of an older
    /// version, in a rolling upgrade, does not, and is not waited for.
    #[serde(default)]
    confirms: bool,
}

struct Member {
    incarnation: u64,
    heard: Instant,
    confirms: bool,
}

pub struct Members {
    node: String,
    incarnation: u64,
    control: Client,
    /// The live nodes' names, sorted; this node's among them.
    live: watch::Sender<Vec<String>>,
    /// What the listener learnt: when dead nodes were last heard, and whether this node hears itself.
    heard: Heard,
    beating: Mutex<Option<AbortHandle>>,
    listening: AbortHandle,
}

impl Members {
    /// Starts beating and listening on the control connection. `confirming` is told the other live
    /// nodes that confirm new routes (the link waits for them).
    pub async fn start(
        control: Client,
        node: &str,
        incarnation: u64,
        wills: Arc<Wills>,
        confirming: watch::Sender<Vec<String>>,
    ) -> Result<Arc<Members>, ClusterError> {
        let heartbeats = control.subscribe(SUBJECTS).await.map_err(|e| ClusterError::Nats(e.to_string()))?;
        let (live, _) = watch::channel(vec![node.to_string()]);
        let heard = Heard::default();
        let others = Others {
            node: node.to_string(),
            members: BTreeMap::new(),
            live: live.clone(),
            confirming,
            heard: heard.clone(),
            wills,
        };
        let listening = tokio::spawn(others.follow(heartbeats, control.clone())).abort_handle();
        let beat = Heartbeat { node: node.to_string(), incarnation, leaving: false, confirms: true };
        let beating = tokio::spawn(beat_on(control.clone(), beat)).abort_handle();
        Ok(Arc::new(Members {
            node: node.to_string(),
            incarnation,
            control,
            live,
            heard,
            beating: Mutex::new(Some(beating)),
            listening,
        }))
    }

    /// The live nodes' names, and each change to them.
    pub fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.live.subscribe()
    }

    /// The other live nodes' names.
    pub fn others(&self) -> Vec<String> {
        self.live.borrow().iter().filter(|name| **name != self.node).cloned().collect()
    }

    pub fn is_alive(&self, node: &str) -> bool {
        self.live.borrow().iter().any(|name| name == node)
    }

    /// When `node`, taken for dead, was last heard (ms since the epoch); `None` if this node has not
    /// seen it die.
    pub fn last_heard(&self, node: &str) -> Option<u64> {
        self.heard.lock().gone.get(node).copied()
    }

    /// Whether this node has heard itself, and so every live node, for long enough that the nodes it
    /// does not list are gone indeed.
    pub fn settled(&self) -> bool {
        let heard = self.heard.lock();
        let now = Instant::now();
        heard.in_touch_since.is_some_and(|since| now.duration_since(since) > 2 * HEARTBEAT)
            && heard.heard_self.is_some_and(|at| now.duration_since(at) <= AWAY_AFTER)
    }

    /// A session whose record says it was online on `node`, which is gone, was left when the node
    /// was last heard, or now if this node did not see it die: its expiry counts from then.
    pub fn left_with(&self, node: &str, record: &mut SessionRecord) {
        if record.parked_at_ms.is_none() {
            record.parked_at_ms = Some(self.last_heard(node).unwrap_or_else(now_wall_ms));
        }
    }

    /// Says this node is leaving, so that the others drop it at once, without firing wills.
    pub async fn leave(&self) {
        if let Some(beating) = self.beating.lock().unwrap_or_else(|e| e.into_inner()).take() {
            beating.abort();
        }
        self.listening.abort();
        let farewell =
            Heartbeat { node: self.node.clone(), incarnation: self.incarnation, leaving: true, confirms: true };
        let _ = self.control.publish(node_subject(&self.node), encode(&farewell)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.control.flush()).await;
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        if let Some(beating) = self.beating.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            beating.abort();
        }
        self.listening.abort();
    }
}

fn node_subject(node: &str) -> String {
    format!("midge.node.{}", subject::token(node))
}

fn encode(heartbeat: &Heartbeat) -> bytes::Bytes {
    serde_json::to_vec(heartbeat).unwrap_or_default().into()
}

async fn beat_on(control: Client, heartbeat: Heartbeat) {
    let subject = node_subject(&heartbeat.node);
    let body = encode(&heartbeat);
    let mut ticker = tokio::time::interval(HEARTBEAT);
    loop {
        ticker.tick().await;
        if control.connection_state() == State::Connected {
            let _ = control.publish(subject.clone(), body.clone()).await;
        }
    }
}

/// What the listener learns for `Members` to tell.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<HeardState>>);

#[derive(Default)]
struct HeardState {
    /// When each node taken for dead was last heard, by wall clock: when its clients' sessions were
    /// last known online.
    gone: HashMap<String, u64>,
    /// When this node last heard its own heartbeat, and since when it has without a gap.
    heard_self: Option<Instant>,
    in_touch_since: Option<Instant>,
}

impl Heard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeardState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The other nodes, as this node last heard them.
struct Others {
    node: String,
    members: BTreeMap<String, Member>,
    live: watch::Sender<Vec<String>>,
    confirming: watch::Sender<Vec<String>>,
    heard: Heard,
    wills: Arc<Wills>,
}

impl Others {
    async fn follow(mut self, mut heard: async_nats::Subscriber, control: Client) {
        let mut sweep = tokio::time::interval(HEARTBEAT / 4);
        loop {
            tokio::select! {
                message = heard.next() => {
                    let Some(message) = message else { return };
                    match serde_json::from_slice::<Heartbeat>(&message.payload) {
                        Ok(heartbeat) => self.heard(heartbeat),
                        Err(e) => tracing::debug!(error = %e, "unreadable heartbeat"),
                    }
                }
                _ = sweep.tick() => {
                    if control.connection_state() == State::Connected {
                        self.sweep();
                    }
                }
            }
        }
    }

    fn heard(&mut self, heartbeat: Heartbeat) {
        let Heartbeat { node, incarnation, leaving, confirms } = heartbeat;
        if node == self.node {
            self.heard_self(Instant::now());
            return;
        }
        if leaving {
            if self.members.get(&node).is_some_and(|m| m.incarnation == incarnation) {
                self.members.remove(&node);
                tracing::info!(%node, "node left the cluster");
                self.publish();
            }
            return;
        }
        let now = Instant::now();
        match self.members.insert(node.clone(), Member { incarnation, heard: now, confirms }) {
            None => {
                self.heard.lock().gone.remove(&node);
                tracing::info!(%node, "node joined the cluster");
                self.publish();
            }
            Some(before) if before.incarnation != incarnation => {
                tracing::info!(%node, "node restarted");
                self.fire_left_behind(node, Some(incarnation));
                // Perhaps as another version.
                self.publish();
            }
            Some(_) => {}
        }
    }

    /// This node's own heartbeat came back: after a gap, the others' silence meanwhile says nothing.
    fn heard_self(&mut self, now: Instant) {
        let mut heard = self.heard.lock();
        let away = heard.heard_self.is_none_or(|before| now.duration_since(before) > AWAY_AFTER);
        if away {
            if heard.heard_self.is_some() {
                tracing::info!("this node hears the cluster again: the others get {DEAD_AFTER:?} to be heard");
            }
            for member in self.members.values_mut() {
                member.heard = member.heard.max(now);
            }
            heard.in_touch_since = Some(now);
        }
        heard.heard_self = Some(now);
    }

    fn sweep(&mut self) {
        // Only silence while this node hears itself counts: else it is this node that is cut off.
        let Some(heard_self) = self.heard.lock().heard_self else { return };
        let now = Instant::now();
        if now.duration_since(heard_self) > AWAY_AFTER {
            return;
        }
        let dead: Vec<(String, Instant)> = self
            .members
            .iter()
            .filter(|(_, member)| now.duration_since(member.heard) > DEAD_AFTER)
            .map(|(node, member)| (node.clone(), member.heard))
            .collect();
        for (node, heard) in dead {
            self.members.remove(&node);
            let heard_ms = now_wall_ms().saturating_sub(now.duration_since(heard).as_millis() as u64);
            self.heard.lock().gone.insert(node.clone(), heard_ms);
            tracing::warn!(%node, "node silent for {DEAD_AFTER:?}: taken for dead");
            self.fire_left_behind(node, None);
        }
        self.publish();
    }

    fn fire_left_behind(&self, node: String, alive: Option<u64>) {
        let wills = self.wills.clone();
        tokio::spawn(async move { wills.fire_left_behind(&node, alive).await });
    }

    /// Tells the watchers, if the live nodes changed.
    fn publish(&self) {
        let confirming: Vec<String> =
            self.members.iter().filter(|(_, member)| member.confirms).map(|(node, _)| node.clone()).collect();
        let mut live: Vec<String> = self.members.keys().cloned().collect();
        live.push(self.node.clone());
        live.sort();
        for (watched, now) in [(&self.live, live), (&self.confirming, confirming)] {
            watched.send_if_modified(|current| {
                let changed = *current != now;
                if changed {
                    *current = now;
                }
                changed
            });
        }
    }
}
