//! Where connections come in. A listener knows what it speaks, where, how many clients it takes at most
//! and how many it holds now; the listeners API reads those (`ListenerStats`). Excess connections wait
//! in the kernel's backlog: a slot is taken before a connection is accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection::Stream;

/// A listener as operators see it.
#[derive(Debug)]
pub struct ListenerStats {
    /// EMQ's protocol name: `mqtt:tcp`.
    pub protocol: &'static str,
    pub addr: SocketAddr,
    pub max_clients: usize,
    /// Clients connected through it now (past CONNECT, the sidecar's own connection left out).
    clients: AtomicU64,
}

impl ListenerStats {
    pub fn clients(&self) -> u64 {
        self.clients.load(Ordering::Relaxed)
    }

    /// Counts a client in until the returned guard is dropped.
    pub fn client_connected(self: &Arc<Self>) -> Connected {
        self.clients.fetch_add(1, Ordering::Relaxed);
        Connected(self.clone())
    }
}

/// One client counted in its listener's figures while it lives.
#[derive(Debug)]
pub struct Connected(Arc<ListenerStats>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection just accepted, with the slot it holds until it ends.
pub struct Accepted {
    pub stream: Stream,
    pub peer: SocketAddr,
    pub slot: OwnedSemaphorePermit,
}

pub struct Listener {
    tcp: TcpListener,
    slots: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
}

impl Listener {
    /// A plain TCP listener (`mqtt:tcp`); port 0 picks a free port.
    pub async fn bind_tcp(addr: SocketAddr, max_clients: usize) -> std::io::Result<Listener> {
        let tcp = TcpListener::bind(addr).await?;
        let addr = tcp.local_addr()?;
        let stats = Arc::new(ListenerStats { protocol: "mqtt:tcp", addr, max_clients, clients: AtomicU64::new(0) });
        Ok(Listener { tcp, slots: Arc::new(Semaphore::new(max_clients)), stats })
    }

    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stats.addr
    }

    /// Waits for a free slot, then for the next connection. Cancel-safe.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        let slot = self.slots.clone().acquire_owned().await.expect("the slots are never closed");
        let (stream, peer) = self.tcp.accept().await?;
        Ok(Accepted { stream: Stream::Tcp(stream), peer, slot })
    }
}
