//! Start-up and the accept loops: binds the listeners, starts the router, the `$SYS` publisher and the
//! control service, and serves each connection in a task of its own until the shutdown token fires.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use midge_passwords::{Hasher, Limits, Throttle};
use midge_shared::control::MIN_SECRET_LEN;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::acl::{Acl, AclError};
use crate::auth::{AuthError, Authenticator, Management, PluginCredentials, Secret, Users};
use crate::client;
use crate::cluster::{Cluster, ClusterError, Joining};
use crate::config::Config;
use crate::context::Context;
use crate::dormitory::Dormitory;
use crate::metrics::{Metrics, Stats};
use crate::ops::control;
use crate::ops::plugins::{Plugin, PluginError, Plugins};
use crate::ops::{metrics_http, sys, Node, Reloader};
use crate::router::{RouterHandle, Wiring};
use crate::settings::{LogReload, Settings};
use crate::store::{HotSetting, Store, StoreError};
use crate::transport::{Accepted, Certificates, Listener, ListenerError, ListenerKind};

/// Scheduler ticks (task polls) between two looks at socket readiness while every worker is busy.
/// tokio's default, 61, suits tasks that poll briefly; a connection's poll handles a whole read (up to
/// a batch of publishes, routed on the spot), so at 61 a subscriber's PUBACKs could wait behind dozens
/// of publishers' batches, and with an inflight window that wait is the throughput limit. Measured on
/// fan-in QoS 1 (10 → 1, window 32): the 384k msg/s step passed in 3 of 5 runs at 3, in 0 of 4 at 61;
/// QoS 0 fan-in and fan-out were no different (see BENCHMARKS.md).
const EVENT_INTERVAL: u32 = 3;

/// The runtime the broker is meant to run on: tokio's multi-threaded one, one worker per core.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().event_interval(EVENT_INTERVAL).build()
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {addr}: {source}")]
    Listener { addr: SocketAddr, source: ListenerError },
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error(transparent)]
    Users(#[from] AuthError),
    #[error("metrics listener {addr}: {source}")]
    MetricsListener { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Puts back what the management API had changed before the restart, over the configuration's values
/// (as the sidecar would push them again). One that no longer applies (an ACL file gone) is logged and
/// left at the configuration's value.
fn restore_hot_settings(kept: Vec<HotSetting>, settings: &Settings, plugins: &Plugins) {
    for setting in kept {
        let restored = match &setting {
            HotSetting::Config { app, key, value } => settings.set(app, key, value).map_err(|e| e.to_string()),
            HotSetting::PluginConfig { name, config } => {
                plugins.restore_config(name, config.clone()).map_err(|e| e.to_string())
            }
            HotSetting::PluginActive { name, active } => match plugins.set_active(name, *active) {
                Ok(()) | Err(PluginError::AlreadyActive | PluginError::AlreadyInactive) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
        };
        if let Err(error) = restored {
            tracing::warn!(?setting, %error, "a kept setting could not be put back");
        }
    }
}

/// The management secret if it is one: an empty or short secret closes the control channel, loudly, rather
/// than opening it to anyone who connects with that username and no (or a guessable) password.
fn usable_secret(secret: Option<Secret>) -> Option<Secret> {
    match secret {
        None => {
            tracing::warn!(
                "no mgmt_secret (MIDGE_MGMT_SECRET) set: the control channel is closed and the sidecar cannot connect"
            );
            None
        }
        Some(secret) if secret.expose().len() < MIN_SECRET_LEN => {
            tracing::error!(
                "mgmt_secret (MIDGE_MGMT_SECRET) is shorter than {} bytes: the control channel is closed and the sidecar cannot connect",
                MIN_SECRET_LEN
            );
            None
        }
        Some(secret) => Some(secret),
    }
}

/// A broker bound to its port, not yet serving.
pub struct Broker {
    listeners: Vec<Arc<Listener>>,
    control: control::Inbox,
    node: Arc<Node>,
    ctx: Arc<Context>,
    /// `--metrics-listen`, if set.
    metrics_listener: Option<tokio::net::TcpListener>,
    store: Option<Store>,
}

impl Broker {
    /// Loads users and ACL and binds the listeners; errors here are configuration errors.
    /// `log_reload` lets `log.console.level` change the running process's log filter.
    pub async fn bind(
        config: Config,
        shutdown: CancellationToken,
        log_reload: Option<LogReload>,
    ) -> Result<Broker, StartError> {
        let users = config.users_file.as_deref().map(Users::load).transpose()?;
        let acl = Acl::load(config.acl_file.as_deref(), config.acl_nomatch)?;
        let mut listeners = Vec::new();
        let mut certificates = Certificates::default();
        for listener in config.listeners() {
            let addr = listener.bind;
            let listener = Listener::bind(listener).await.map_err(|source| StartError::Listener { addr, source })?;
            if let Some(tls) = listener.tls() {
                certificates.add(listener.local_addr(), tls);
            }
            listeners.push(Arc::new(listener));
        }
        let metrics_listener = metrics_http::bind(config.metrics_listen).await.map_err(|source| {
            StartError::MetricsListener { addr: config.metrics_listen.expect("bound only when set"), source }
        })?;
        // Last of the configuration's checks, before anything is served: a store that cannot be read
        // stops the broker here.
        let (store, mut restored) = match config.store() {
            Some(store_config) => {
                let (store, restored) = Store::open(&store_config)?;
                (Some(store), restored)
            }
            None => (None, Default::default()),
        };
        let mut config = config;
        config.mgmt_secret = usable_secret(config.mgmt_secret.take());
        let metrics = Arc::new(Metrics::default());
        let stats = Arc::new(Stats::default());
        let joining = Joining::new(&config.cluster, metrics.clone())?;
        let credentials = Arc::new(PluginCredentials::default());
        let plugins = Arc::new(Plugins::new(sys::VERSION, credentials.clone()));
        let wiring = Wiring {
            retaining: plugins.switch(Plugin::Retainer),
            metrics: metrics.clone(),
            stats: stats.clone(),
            node: config.node.clone(),
            shared_strategy: config.shared_subscription_strategy,
            journal: store.as_ref().map(Store::journal),
            uplink: joining.as_ref().map(Joining::uplink),
        };
        let mut limits = config.session_limits();
        if let Some(store) = &store {
            limits.spill = Some((store.spill(), config.max_mqueue_in_memory.max(1)));
        }
        let router = RouterHandle::new(limits, wiring);
        let hot_settings = std::mem::take(&mut restored.hot_settings);
        router.restore(restored);
        let settings = Arc::new(Settings::new(&config, acl, log_reload));
        restore_hot_settings(hot_settings, &settings, &plugins);
        let hasher = Hasher::default();
        let (control_tx, asked_tx, control_rx) = control::channel();
        let auth = Authenticator {
            management: Management { username: config.mgmt_username.clone(), secret: config.mgmt_secret.clone() },
            users: Arc::new(arc_swap::ArcSwapOption::from(users.map(Arc::new))),
            plugins: credentials,
            hasher: hasher.clone(),
            throttle: Throttle::new(Limits { burst: config.auth_fail_burst }),
            methods: Default::default(),
        };
        let cluster = match joining {
            Some(joining) => joining.start(&config.node, router.clone(), asked_tx, shutdown.clone()).await?,
            None => Cluster::Standalone,
        };
        let dormitory = Dormitory::new(Duration::from_millis(config.dormant_after_ms));
        let node = Arc::new(Node {
            name: config.node.clone(),
            started: Instant::now(),
            router: router.clone(),
            metrics: metrics.clone(),
            stats,
            settings: settings.clone(),
            plugins: plugins.clone(),
            hasher,
            listeners: listeners.iter().map(|listener| listener.stats()).collect(),
            certificates,
            max_connections: config.max_connections,
            shutdown: shutdown.clone(),
            baseline_rss: crate::ops::recon::process_memory().0,
            dormitory: dormitory.clone(),
            store: store.as_ref().map(|store| (store.journal(), store.durable())),
            cluster: cluster.clone(),
        });
        let mut ctx = Context::new(config, router, auth, settings, plugins, metrics, control_tx, shutdown);
        ctx.durable = store.as_ref().map(Store::durable);
        ctx.journal = store.as_ref().map(Store::journal);
        ctx.cluster = cluster;
        ctx.dormitory = dormitory;
        Ok(Broker { listeners, control: control_rx, node, ctx: Arc::new(ctx), metrics_listener, store })
    }

    /// The first listener's address (the TCP one, unless configured otherwise).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0].local_addr()
    }

    /// The TLS listeners' certificates, to reload (on SIGHUP).
    pub fn certificates(&self) -> Certificates {
        self.node.certificates.clone()
    }

    /// Every listener's kind and address, in configuration order.
    pub fn listen_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.listeners.iter().map(|listener| (listener.config.kind, listener.local_addr())).collect()
    }

    /// Where this node's metrics are served for Prometheus, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// MQTT 5's enhanced authentication methods, for whoever brings one to register it.
    pub fn auth_methods(&self) -> &crate::auth::enhanced::Methods {
        &self.ctx.auth.methods
    }

    #[cfg(test)]
    pub fn parts_for_tests(&self) -> (Arc<Context>, Arc<crate::transport::ListenerStats>) {
        (self.ctx.clone(), self.listeners[0].stats())
    }

    /// Serves until the shutdown token fires, then closes every connection and returns.
    pub async fn run(self) {
        let Broker { listeners, control, node, ctx, metrics_listener, store } = self;
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(listen = %addr, "metrics for Prometheus at /metrics");
            }
            tokio::spawn(metrics_http::serve(listener, node.clone()));
        }
        let reloader = Reloader {
            node: node.clone(),
            switch: node.plugins.switch(Plugin::Reloader),
            users_file: ctx.config.users_file.clone(),
            users: ctx.auth.users.clone(),
        };
        tokio::spawn(reloader.run());
        tokio::spawn(ctx.router.clone().sweep());
        tokio::spawn(sys::run(node.clone()));
        tokio::spawn(control::run(node, control));
        let connections = TaskTracker::new();
        let acceptors = TaskTracker::new();
        connections.spawn(ctx.dormitory.run(connections.clone(), ctx.shutdown.clone()));
        for listener in &listeners {
            tracing::info!(
                listener = listener.stats().protocol,
                listen = %listener.local_addr(),
                node = %ctx.config.node,
                "midge broker listening"
            );
            for _ in 0..listener.config.acceptors.max(1) {
                acceptors.spawn(accept_loop(listener.clone(), ctx.clone(), connections.clone()));
            }
        }
        acceptors.close();
        acceptors.wait().await;
        // Every acceptor has stopped: the sockets close here, before the connections are waited for.
        drop(listeners);
        connections.close();
        if tokio::time::timeout(Duration::from_secs(5), connections.wait()).await.is_err() {
            tracing::warn!("connections still open after 5 s; exiting anyway");
        }
        ctx.cluster.leave().await;
        if let Some(store) = store {
            match store.flush().await {
                Ok(()) => tracing::info!(path = %store.path().display(), "store synced"),
                Err(e) => tracing::error!(path = %store.path().display(), error = %e, "store not synced at shutdown"),
            }
        }
        tracing::info!("midge broker stopped");
    }
}

/// Accepts connections on one listener until shutdown, each served in a task of its own. Several of
/// these may run on one listener (`acceptors`).
async fn accept_loop(listener: Arc<Listener>, ctx: Arc<Context>, connections: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => {
                connections.spawn(connection(listener.clone(), accepted, ctx.clone()));
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection's life: the listener's handshake, bounded by the connect timeout, then MQTT. The
/// listener's slot is held throughout (by the connection's state once it is served, since an idle
/// connection gives up its task: see `dormitory.rs`).
///
/// A plain function around an `async` block, not an `async fn`: an async fn's future keeps its
/// arguments for its whole life, and this future is the connection's task for as long as it is
/// connected. What happens once (handshake, CONNECT) is boxed and freed when done, so what stays is
/// the slot, two pointers and the serving loop.
fn connection(listener: Arc<Listener>, accepted: Accepted, ctx: Arc<Context>) -> impl Future<Output = ()> + Send {
    let Accepted { tcp, peer, slot } = accepted;
    let opening = Box::pin(open(listener, tcp, peer, ctx));
    async move {
        if let Some(opened) = opening.await {
            opened.serve(Some(slot)).await;
        }
    }
}

/// The listener's handshake, then the CONNECT and its answer, both by one deadline from accept.
async fn open(
    listener: Arc<Listener>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
) -> Option<client::Opened> {
    let stats = listener.stats();
    let connect_by = tokio::time::Instant::now() + Duration::from_secs(ctx.config.connect_timeout);
    let handshake = listener.handshake(tcp, peer, ctx.config.max_packet_size);
    let handshake = tokio::select! {
        handshake = tokio::time::timeout_at(connect_by, handshake) => handshake,
        _ = ctx.shutdown.cancelled() => return None,
    };
    let established = match handshake {
        Ok(Ok(established)) => established,
        Ok(Err(e)) => {
            tracing::debug!(%peer, listener = stats.protocol, error = %e, "handshake failed");
            stats.shut(e.reason());
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, listener = stats.protocol, "handshake timed out");
            stats.shut("handshake_timeout");
            return None;
        }
    };
    client::open(established, connect_by, &stats, ctx).await
}

#[cfg(test)]
mod size_tests {
    /// A connection's task is as large as its future's largest state, for the connection's whole life:
    /// this bound keeps the handshake's and CONNECT's state (boxed) from creeping back inline.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let config = crate::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
        let broker = super::Broker::bind(config, tokio_util::sync::CancellationToken::new(), None).await.unwrap();
        let _client = tokio::net::TcpStream::connect(broker.local_addr()).await.unwrap();
        let listener = broker.listeners[0].clone();
        let accepted = listener.accept().await.unwrap();
        let task = super::connection(listener, accepted, broker.ctx.clone());
        assert!(std::mem::size_of_val(&task) <= 1024, "connection future is {} bytes", std::mem::size_of_val(&task));
    }
}
