//! Who is in the cluster. Every node says it is alive on `midge.node.<its name>` every
//! [`HEARTBEAT`] and hears every node's heartbeats; a node unheard for [`DEAD_AFTER`] is gone, and so is
//! one that said it was leaving. A node heard under a new incarnation restarted. The live nodes' names
//! are watched by whoever reports them (`$SYS/brokers`); a node gone silent, or restarted, leaves wills
//! behind for the survivors to fire (`wills.rs`). One that left in good order cleared its own.
//!
//! A node cut off from NATS hears no one: it lists itself alone until NATS is back, and fires nothing
//! meanwhile (the wills' bucket is out of reach too).

use std::collections::BTreeMap;
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

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a node may stay silent before it is taken for dead: four heartbeats, so that one lost or
/// late heartbeat is not a death, and a death is seen within [`DEAD_AFTER`] + [`HEARTBEAT`] / 2.
pub const DEAD_AFTER: Duration = Duration::from_secs(2);
const SUBJECTS: &str = "midge.node.*";

#[derive(Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    incarnation: u64,
    #[serde(default)]
    leaving: bool,
}

struct Member {
    incarnation: u64,
    heard: Instant,
}

pub struct Members {
    node: String,
    incarnation: u64,
    control: Client,
    /// The live nodes' names, sorted; this node's among them.
    live: watch::Sender<Vec<String>>,
    beating: Mutex<Option<AbortHandle>>,
    listening: AbortHandle,
}

impl Members {
    /// Starts beating and listening on the control connection.
    pub async fn start(
        control: Client,
        node: &str,
        incarnation: u64,
        wills: Arc<Wills>,
    ) -> Result<Arc<Members>, ClusterError> {
        let heard = control.subscribe(SUBJECTS).await.map_err(|e| ClusterError::Nats(e.to_string()))?;
        let (live, _) = watch::channel(vec![node.to_string()]);
        let others = Others { node: node.to_string(), members: BTreeMap::new(), live: live.clone(), wills };
        let listening = tokio::spawn(others.follow(heard, control.clone())).abort_handle();
        let beat = Heartbeat { node: node.to_string(), incarnation, leaving: false };
        let beating = tokio::spawn(beat_on(control.clone(), beat)).abort_handle();
        Ok(Arc::new(Members {
            node: node.to_string(),
            incarnation,
            control,
            live,
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

    /// Says this node is leaving, so that the others drop it at once, without firing wills.
    pub async fn leave(&self) {
        if let Some(beating) = self.beating.lock().unwrap_or_else(|e| e.into_inner()).take() {
            beating.abort();
        }
        self.listening.abort();
        let farewell = Heartbeat { node: self.node.clone(), incarnation: self.incarnation, leaving: true };
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

/// The other nodes, as this node last heard them.
struct Others {
    node: String,
    members: BTreeMap<String, Member>,
    live: watch::Sender<Vec<String>>,
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
                    // Cut off from NATS, this node hears no one: that says nothing of the others.
                    if control.connection_state() == State::Connected {
                        self.sweep();
                    }
                }
            }
        }
    }

    fn heard(&mut self, heartbeat: Heartbeat) {
        let Heartbeat { node, incarnation, leaving } = heartbeat;
        if node == self.node {
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
        match self.members.insert(node.clone(), Member { incarnation, heard: now }) {
            None => {
                tracing::info!(%node, "node joined the cluster");
                self.publish();
            }
            Some(before) if before.incarnation != incarnation => {
                tracing::info!(%node, "node restarted");
                self.fire_left_behind(node, Some(incarnation));
            }
            Some(_) => {}
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let dead: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| now.duration_since(member.heard) > DEAD_AFTER)
            .map(|(node, _)| node.clone())
            .collect();
        for node in dead {
            self.members.remove(&node);
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
        let mut live: Vec<String> = self.members.keys().cloned().collect();
        live.push(self.node.clone());
        live.sort();
        self.live.send_if_modified(|current| {
            let changed = *current != live;
            if changed {
                *current = live;
            }
            changed
        });
    }
}
