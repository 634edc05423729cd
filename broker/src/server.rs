//! Start-up and the accept loop: binds the listener, starts the router, and serves each connection in a
//! task of its own until the shutdown token fires.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::{Acl, AclError};
use crate::auth::{AuthError, Users};
use crate::config::Config;
use crate::router::{Router, RouterHandle};

/// What every connection task shares.
pub struct Context {
    pub config: Config,
    pub router: RouterHandle,
    pub users: Option<Users>,
    pub acl: Acl,
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
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error(transparent)]
    Users(#[from] AuthError),
}

/// A broker bound to its port, not yet serving.
pub struct Broker {
    listener: TcpListener,
    router: Router,
    ctx: Arc<Context>,
}

impl Broker {
    /// Loads users and ACL and binds the listener; errors here are configuration errors.
    pub async fn bind(config: Config, shutdown: CancellationToken) -> Result<Broker, StartError> {
        let users = config.users_file.as_deref().map(Users::load).transpose()?;
        let acl = Acl::load(config.acl_file.as_deref(), config.acl_nomatch)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let (router, handle) = Router::new(config.session_limits());
        let ctx = Arc::new(Context {
            config,
            router: handle,
            users,
            acl,
            shutdown,
            next_conn_id: AtomicU64::new(1),
        });
        Ok(Broker {
            listener,
            router,
            ctx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the shutdown token fires, then closes every connection and returns.
    pub async fn run(self) {
        let Broker {
            listener,
            router,
            ctx,
        } = self;
        tokio::spawn(router.run());
        let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
        let connections = TaskTracker::new();
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            node = %ctx.config.node, "midge broker listening");
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
        if tokio::time::timeout(Duration::from_secs(5), connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 5 s; exiting anyway");
        }
        tracing::info!("midge broker stopped");
    }
}
