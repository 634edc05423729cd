//! Start-up and the accept loop: binds the listener, starts the router, the `$SYS` publisher and the
//! control service, and serves each connection in a task of its own until the shutdown token fires.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use midge_passwords::{Hasher, Limits, Throttle};
use midge_shared::control::MIN_SECRET_LEN;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::{Acl, AclError};
use crate::auth::{AuthError, Authenticator, Users};
use crate::config::{Config, Secret};
use crate::control::{self, ControlJob};
use crate::metrics::{Metrics, Stats};
use crate::plugins::Plugins;
use crate::router::{RouterHandle, Shared};
use crate::settings::{LogReload, Settings};

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

/// What every connection task shares.
pub struct Context {
    pub config: Config,
    pub local_addr: SocketAddr,
    pub router: RouterHandle,
    pub auth: Authenticator,
    pub settings: Settings,
    pub plugins: Arc<Plugins>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Stats>,
    pub control: mpsc::Sender<ControlJob>,
    pub started: Instant,
    pub shutdown: CancellationToken,
    next_conn_id: AtomicU64,
}

impl Context {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
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
    listener: TcpListener,
    router: RouterHandle,
    control: mpsc::Receiver<ControlJob>,
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
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let mut config = config;
        config.mgmt_secret = usable_secret(config.mgmt_secret.take());
        let metrics = Arc::new(Metrics::default());
        let stats = Arc::new(Stats::default());
        let plugins = Arc::new(Plugins::new(crate::sys::VERSION));
        let shared = Shared {
            metrics: metrics.clone(),
            stats: stats.clone(),
            plugins: plugins.clone(),
            node: config.node.clone(),
        };
        let router = RouterHandle::new(config.session_limits(), shared);
        let (control_tx, control_rx) = control::channel();
        let auth = Authenticator {
            users,
            hasher: Hasher::default(),
            throttle: Throttle::new(Limits { burst: config.auth_fail_burst }),
        };
        let ctx = Arc::new(Context {
            settings: Settings::new(&config, acl, log_reload),
            config,
            local_addr,
            router: router.clone(),
            auth,
            plugins,
            metrics,
            stats,
            control: control_tx,
            started: Instant::now(),
            shutdown,
            next_conn_id: AtomicU64::new(1),
        });
        Ok(Broker { listener, router, control: control_rx, ctx })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.local_addr
    }

    #[cfg(test)]
    pub fn ctx_for_tests(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Serves until the shutdown token fires, then closes every connection and returns.
    pub async fn run(self) {
        let Broker { listener, router, control, ctx } = self;
        tokio::spawn(router.sweep());
        tokio::spawn(crate::sys::run(ctx.clone()));
        tokio::spawn(control::run(ctx.clone(), control));
        let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
        let connections = TaskTracker::new();
        tracing::info!(listen = %ctx.local_addr, node = %ctx.config.node, "midge broker listening");
        loop {
            // Hold a permit before accepting, so excess clients wait in the kernel's backlog.
            let permit = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                permit = limit.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let accepted = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let ctx = ctx.clone();
                    connections.spawn(async move {
                        crate::client::serve(stream, peer, ctx).await;
                        drop(permit);
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
