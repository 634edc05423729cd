//! Start-up and the accept loop: binds the listener, starts the router, the `$SYS` publisher and the
//! control service, and serves each connection in a task of its own until the shutdown token fires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use midge_passwords::{Hasher, Limits, Throttle};
use midge_shared::control::MIN_SECRET_LEN;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::acl::{Acl, AclError};
use crate::auth::{AuthError, Authenticator, Management, PluginCredentials, Secret, Users};
use crate::config::Config;
use crate::context::Context;
use crate::metrics::{Metrics, Stats};
use crate::ops::control::{self, ControlJob};
use crate::ops::plugins::{Plugin, Plugins};
use crate::ops::{sys, Node};
use crate::router::{RouterHandle, Wiring};
use crate::settings::{LogReload, Settings};
use crate::transport::Listener;

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
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error(transparent)]
    Users(#[from] AuthError),
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
    listener: Listener,
    control: mpsc::Receiver<ControlJob>,
    node: Arc<Node>,
    ctx: Arc<Context>,
}

impl Broker {
    /// Loads users and ACL and binds the listener; errors here are configuration errors.
    /// `log_reload` lets `log.console.level` change the running process's log filter.
    pub async fn bind(
        config: Config,
        shutdown: CancellationToken,
        log_reload: Option<LogReload>,
    ) -> Result<Broker, StartError> {
        let users = config.users_file.as_deref().map(Users::load).transpose()?;
        let acl = Acl::load(config.acl_file.as_deref(), config.acl_nomatch)?;
        let listener = Listener::bind_tcp(config.listen, config.max_connections)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let mut config = config;
        config.mgmt_secret = usable_secret(config.mgmt_secret.take());
        let metrics = Arc::new(Metrics::default());
        let stats = Arc::new(Stats::default());
        let credentials = Arc::new(PluginCredentials::default());
        let plugins = Arc::new(Plugins::new(sys::VERSION, credentials.clone()));
        let wiring = Wiring {
            retaining: plugins.switch(Plugin::Retainer),
            metrics: metrics.clone(),
            stats: stats.clone(),
            node: config.node.clone(),
        };
        let router = RouterHandle::new(config.session_limits(), wiring);
        let settings = Arc::new(Settings::new(&config, acl, log_reload));
        let hasher = Hasher::default();
        let (control_tx, control_rx) = control::channel();
        let auth = Authenticator {
            management: Management { username: config.mgmt_username.clone(), secret: config.mgmt_secret.clone() },
            users,
            plugins: credentials,
            hasher: hasher.clone(),
            throttle: Throttle::new(Limits { burst: config.auth_fail_burst }),
        };
        let node = Arc::new(Node {
            name: config.node.clone(),
            started: Instant::now(),
            router: router.clone(),
            metrics: metrics.clone(),
            stats,
            settings: settings.clone(),
            plugins: plugins.clone(),
            hasher,
            listeners: vec![listener.stats()],
            max_connections: config.max_connections,
            shutdown: shutdown.clone(),
        });
        let ctx = Arc::new(Context::new(config, router, auth, settings, plugins, metrics, control_tx, shutdown));
        Ok(Broker { listener, control: control_rx, node, ctx })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    #[cfg(test)]
    pub fn parts_for_tests(&self) -> (Arc<Context>, Arc<crate::transport::ListenerStats>) {
        (self.ctx.clone(), self.listener.stats())
    }

    /// Serves until the shutdown token fires, then closes every connection and returns.
    pub async fn run(self) {
        let Broker { listener, control, node, ctx } = self;
        tokio::spawn(ctx.router.clone().sweep());
        tokio::spawn(sys::run(node.clone()));
        tokio::spawn(control::run(node, control));
        let connections = TaskTracker::new();
        let stats = listener.stats();
        tracing::info!(listen = %listener.local_addr(), node = %ctx.config.node, "midge broker listening");
        loop {
            let accepted = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(accepted) => {
                    let (ctx, stats) = (ctx.clone(), stats.clone());
                    connections.spawn(async move {
                        crate::client::serve(accepted.stream, accepted.peer, stats, ctx).await;
                        drop(accepted.slot);
                    });
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(listener);
        connections.close();
        if tokio::time::timeout(Duration::from_secs(5), connections.wait()).await.is_err() {
            tracing::warn!("connections still open after 5 s; exiting anyway");
        }
        tracing::info!("midge broker stopped");
    }
}
