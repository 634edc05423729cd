//! This node as its operators see it: what the control service answers from and changes, and what the
//! `$SYS` publisher reports. Built by the server; nothing here knows about connections.

use std::sync::Arc;
use std::time::Instant;

use midge_passwords::Hasher;
use tokio_util::sync::CancellationToken;

use super::plugins::Plugins;
use crate::cluster::Cluster;
use crate::dormitory::Dormitory;
use crate::metrics::{Metrics, Stats};
use crate::router::RouterHandle;
use crate::settings::Settings;
use crate::store::{Durable, HotSetting, Journal, NotDurable};
use crate::transport::{Certificates, ListenerStats};

pub struct Node {
    pub name: String,
    pub started: Instant,
    pub router: RouterHandle,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Stats>,
    pub settings: Arc<Settings>,
    pub plugins: Arc<Plugins>,
    /// For the passwords of plugin configs.
    pub hasher: Hasher,
    pub listeners: Vec<Arc<ListenerStats>>,
    /// The TLS listeners' certificates, reloaded on request.
    pub certificates: Certificates,
    /// The most client connections served at once, over every listener.
    pub max_connections: usize,
    pub shutdown: CancellationToken,
    /// The process's resident memory before any connection: what each connection adds is measured from
    /// here (`emq_recon`).
    pub baseline_rss: u64,
    /// Where idle connections wait without a task (how many do, for `emq_recon`).
    pub dormitory: Dormitory,
    /// Where what the management API changes is kept, with persistence on.
    pub store: Option<(Journal, Durable)>,
    /// The other nodes, if this one is clustered.
    pub cluster: Cluster,
}

impl Node {
    /// Keeps a change the management API made, and waits until it is on disk: a broker restarted
    /// without its sidecar comes back with it.
    pub async fn keep(&self, setting: HotSetting) -> Result<(), NotDurable> {
        match &self.store {
            Some((journal, durable)) => durable.reached(journal.record(setting.change())).await.map(|_| ()),
            None => Ok(()),
        }
    }
}
