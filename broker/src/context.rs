//! What every connection task shares: the router, authentication, the live settings, the plugins (for
//! presence events), the counters, and the way to the control service. Built by the server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::dormitory::Dormitory;
use crate::metrics::Metrics;
use crate::ops::control::ControlJob;
use crate::ops::plugins::Plugins;
use crate::router::RouterHandle;
use crate::settings::Settings;
use crate::store::{Durable, Journal};

pub struct Context {
    pub config: Config,
    pub router: RouterHandle,
    pub auth: Authenticator,
    pub settings: Arc<Settings>,
    pub plugins: Arc<Plugins>,
    pub metrics: Arc<Metrics>,
    /// The management principal's control requests go here.
    pub control: mpsc::Sender<ControlJob>,
    pub shutdown: CancellationToken,
    /// How far the store is on disk, for acknowledgements that must wait for it (none in memory).
    pub durable: Option<Durable>,
    /// Where connections tell the store which kept deliveries their clients acknowledged.
    pub journal: Option<Journal>,
    /// The other nodes, if this one is clustered.
    pub cluster: Cluster,
    /// Where idle connections wait without a task.
    pub dormitory: Dormitory,
    next_conn_id: AtomicU64,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        router: RouterHandle,
        auth: Authenticator,
        settings: Arc<Settings>,
        plugins: Arc<Plugins>,
        metrics: Arc<Metrics>,
        control: mpsc::Sender<ControlJob>,
        shutdown: CancellationToken,
    ) -> Context {
        Context {
            config,
            router,
            auth,
            settings,
            plugins,
            metrics,
            control,
            shutdown,
            durable: None,
            journal: None,
            cluster: Cluster::Standalone,
            dormitory: Dormitory::new(std::time::Duration::ZERO),
            next_conn_id: AtomicU64::new(1),
        }
    }

    /// A number for a new connection, unique for the broker's life.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}
