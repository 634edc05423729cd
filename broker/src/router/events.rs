//! What the router's tables do, told as it happens, for whoever keeps a copy of them: a store on disk, a
//! cluster link. Sent without waiting (a broadcast channel of bounded size), so a slow follower never
//! holds the router up; one that falls behind is told how many events it missed (`Lagged`) and must
//! read the tables again. Nothing is built while nobody follows.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::session::{ClientId, Message};

/// How many events wait for the slowest follower before it misses some.
const BACKLOG: usize = 4096;

#[derive(Debug, Clone)]
pub enum RouterEvent {
    /// The first client on this node subscribed to this filter.
    RouteAdded(Arc<str>),
    /// The last client on this node with this filter left it.
    RouteRemoved(Arc<str>),
    /// A retained message was stored (replacing any other on its topic).
    RetainedSet(Arc<Message>),
    /// The retained message on this topic was removed.
    RetainedCleared(Arc<str>),
    /// A persistent session's client went away; the session is kept.
    SessionParked(ClientId),
    /// A kept session's client came back.
    SessionResumed(ClientId),
    /// A kept session passed its expiry interval and was dropped.
    SessionExpired(ClientId),
    /// A kept session was dropped for a clean start.
    SessionDiscarded(ClientId),
}

pub(super) struct Events {
    sender: broadcast::Sender<RouterEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Events { sender: broadcast::channel(BACKLOG).0 }
    }
}

impl Events {
    /// Sends the event `make` builds, if anyone follows.
    pub(super) fn emit(&self, make: impl FnOnce() -> RouterEvent) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(make());
        }
    }

    pub(super) fn follow(&self) -> broadcast::Receiver<RouterEvent> {
        self.sender.subscribe()
    }
}
