//! Where connections come in. A listener knows what it speaks (`mqtt:tcp`, `mqtt:ssl`, `mqtt:ws`,
//! `mqtt:wss`), where, how many clients it takes at most and how many it holds now, and counts the
//! connections it shut by reason; the listeners API and `$SYS` read those (`ListenerStats`).
//!
//! Accepting is all an acceptor does: a connection over `max_clients` is closed at once (and counted),
//! and every other is handed over with its slot, to be set up (TLS, WebSocket, PROXY header: see
//! `handshake.rs`) by the task that will serve it, so a slow handshake never holds up the next accept.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::rate_limit::RateLimit;
use super::tls::{Tls, TlsError};

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Tcp,
    Ssl,
    Ws,
    Wss,
}

impl ListenerKind {
    /// EMQ's protocol name for it.
    pub fn protocol(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "mqtt:tcp",
            ListenerKind::Ssl => "mqtt:ssl",
            ListenerKind::Ws => "mqtt:ws",
            ListenerKind::Wss => "mqtt:wss",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Ssl | ListenerKind::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// Which part of a client certificate stands for the username (EMQ's `peer_cert_as_username`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerCertField {
    /// The subject's common name.
    Cn,
    /// The whole subject, as `CN=...,O=...`.
    Dn,
}

/// One listener, a `[[listener]]` table in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub kind: ListenerKind,
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Tasks accepting connections at once.
    #[serde(default = "one")]
    pub acceptors: usize,
    /// Expect a PROXY protocol header (v1 or v2) before MQTT, from a load balancer; without this a
    /// connection that sends one is refused.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// EMQ's `rate_limit`, `"BURST,RATE"` per connection (`"100KB,10KB"`): reads slow down to the
    /// rate once a burst is spent.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// TLS (ssl, wss): the certificate chain and key, PEM.
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// TLS: the CA that client certificates must chain to, PEM.
    #[serde(default)]
    pub cacertfile: Option<PathBuf>,
    /// TLS: ask clients for a certificate and check it against `cacertfile`.
    #[serde(default)]
    pub verify_peer: bool,
    /// TLS with `verify_peer`: refuse clients that send no certificate.
    #[serde(default)]
    pub fail_if_no_peer_cert: bool,
    /// TLS with `verify_peer`: the certificate's CN (or DN) is the username that auth and ACL see.
    #[serde(default)]
    pub peer_cert_as_username: Option<PeerCertField>,
    /// WebSocket (ws, wss): the HTTP path of the upgrade.
    #[serde(default = "default_path")]
    pub path: String,
}

fn default_max_clients() -> usize {
    100_000
}

fn one() -> usize {
    1
}

fn default_path() -> String {
    "/mqtt".into()
}

impl ListenerConfig {
    /// A listener of `kind` at `bind` with everything else at its default.
    pub fn new(kind: ListenerKind, bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            kind,
            bind,
            max_clients: default_max_clients(),
            acceptors: 1,
            proxy_protocol: false,
            rate_limit: None,
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
            peer_cert_as_username: None,
            path: default_path(),
        }
    }
}

impl ListenerConfig {
    /// What is wrong with this listener's settings, if anything; checked before anything is bound.
    pub fn check(&self) -> Result<(), String> {
        if self.max_clients == 0 || self.acceptors == 0 {
            return Err("max_clients and acceptors must be at least 1".into());
        }
        if self.kind.is_websocket() && !self.path.starts_with('/') {
            return Err(format!("path must start with '/': {:?}", self.path));
        }
        if !self.kind.is_tls() && (self.certfile.is_some() || self.keyfile.is_some() || self.verify_peer) {
            return Err("certfile, keyfile and verify_peer are for ssl and wss listeners".into());
        }
        if (self.fail_if_no_peer_cert || self.peer_cert_as_username.is_some()) && !self.verify_peer {
            return Err("fail_if_no_peer_cert and peer_cert_as_username need verify_peer = true".into());
        }
        Ok(())
    }
}

/// A listener as operators see it.
#[derive(Debug)]
pub struct ListenerStats {
    /// EMQ's protocol name: `mqtt:tcp`.
    pub protocol: &'static str,
    pub addr: SocketAddr,
    pub max_clients: usize,
    pub acceptors: usize,
    /// Clients connected through it now (past CONNECT, the sidecar's own connection left out).
    clients: AtomicU64,
    /// Connections it shut, by reason: refused over `max_clients`, failed handshakes, and how served
    /// connections ended.
    shutdowns: Mutex<BTreeMap<&'static str, u64>>,
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

    /// Counts a connection shut for `reason`.
    pub fn shut(&self, reason: &'static str) {
        *self.shutdowns.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// Connections shut so far, by reason.
    pub fn shutdowns(&self) -> BTreeMap<String, u64> {
        let shutdowns = self.shutdowns.lock().unwrap_or_else(|e| e.into_inner());
        shutdowns.iter().map(|(reason, count)| (reason.to_string(), *count)).collect()
    }
}

/// One client counted in its listener's figures while it lives.
#[derive(Debug)]
pub struct Connected(Arc<ListenerStats>);

impl Connected {
    pub fn listener(&self) -> &ListenerStats {
        &self.0
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection just accepted, with its listener's slot, still to be set up (see `handshake.rs`).
pub struct Accepted {
    pub tcp: TcpStream,
    pub peer: SocketAddr,
    pub slot: OwnedSemaphorePermit,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
}

pub struct Listener {
    pub config: ListenerConfig,
    tcp: TcpListener,
    /// For ssl and wss.
    pub(super) tls: Option<Arc<Tls>>,
    slots: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
}

impl Listener {
    /// Checks the settings, loads the certificates if any and binds the socket.
    pub async fn bind(config: ListenerConfig) -> Result<Listener, ListenerError> {
        config.check().map_err(ListenerError::Config)?;
        let tls = config.kind.is_tls().then(|| Tls::load(&config).map(Arc::new)).transpose()?;
        let tcp = TcpListener::bind(config.bind).await?;
        let addr = tcp.local_addr()?;
        let stats = Arc::new(ListenerStats {
            protocol: config.kind.protocol(),
            addr,
            max_clients: config.max_clients,
            acceptors: config.acceptors.max(1),
            clients: AtomicU64::new(0),
            shutdowns: Mutex::new(BTreeMap::new()),
        });
        Ok(Listener { slots: Arc::new(Semaphore::new(config.max_clients)), config, tcp, tls, stats })
    }

    /// Its TLS settings, for reloading (ssl and wss listeners).
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stats.addr
    }

    /// The next connection with a free slot. One over `max_clients` is closed at once and counted.
    /// Cancel-safe.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        loop {
            let (tcp, peer) = self.tcp.accept().await?;
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => return Ok(Accepted { tcp, peer, slot }),
                Err(_) => {
                    tracing::debug!(%peer, listener = self.stats.protocol, "connection refused: max_clients reached");
                    self.stats.shut("maxlimit");
                }
            }
        }
    }
}
