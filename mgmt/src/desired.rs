//! The desired state of the brokers, of which the sidecar is the source of truth: hot-config overrides,
//! plugin configs and plugin states.
//!
//! One writer at a time. A change is applied to the broker (which validates it) and stored in SQLite
//! under one lock, and a node that appears or restarts is given the stored state under the same lock. So
//! the live broker and the database take changes in the same order: two racing `PUT`s of one key cannot
//! leave the broker with one value and SQLite with the other, for a restart to flip it back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use midge_shared::calls::{Call, Done};
use midge_shared::control::{code, Request};
use tokio::sync::{mpsc, Mutex};

use crate::db::{self, Db};
use crate::error::ApiError;
use crate::link::{Appeared, Link};

/// A node the stored state could not be pushed to is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);

pub struct Desired {
    db: Db,
    link: Arc<Link>,
    writer: Mutex<()>,
}

impl Desired {
    /// Starts pushing the stored state to every node the link announces.
    pub fn start(db: Db, link: Arc<Link>, appeared: Appeared) -> Arc<Desired> {
        let desired = Arc::new(Desired { db, link, writer: Mutex::new(()) });
        tokio::spawn(desired.clone().push_to_appearing(appeared));
        desired
    }

    /// `key` of `app` on every listed node, and stored for every node, present and future.
    pub async fn set_config_everywhere(&self, app: &str, key: &str, value: &str) -> Result<(), ApiError> {
        let _writer = self.writer.lock().await;
        for node in &self.link.answering()? {
            self.link.call(node, set_config(app, key, value)).await?;
        }
        Ok(db::save_config(&self.db, db::ALL_NODES, app, key, value).await?)
    }

    pub async fn set_config(&self, node: &str, app: &str, key: &str, value: &str) -> Result<(), ApiError> {
        let _writer = self.writer.lock().await;
        self.link.call(node, set_config(app, key, value)).await?;
        Ok(db::save_config(&self.db, node, app, key, value).await?)
    }

    pub async fn set_plugin(&self, node: &str, name: &str, active: bool) -> Result<(), ApiError> {
        let _writer = self.writer.lock().await;
        self.link.call(node, Request::set_plugin(name.to_string(), active)).await?;
        Ok(db::save_plugin_state(&self.db, node, name, active).await?)
    }

    /// Stores what the broker reports after applying, so passwords are kept only as the broker's hashes.
    pub async fn set_plugin_config(
        &self,
        node: &str,
        name: &str,
        values: BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let _writer = self.writer.lock().await;
        self.link.call(node, Request::set_plugin_config(name.to_string(), values)).await?;
        let applied = self.link.call(node, Request::get_plugin_config(name.to_string())).await?;
        let rows: Vec<(String, String)> = applied.into_iter().map(|r| (r.key, r.value)).collect();
        Ok(db::save_plugin_config(&self.db, node, name, &rows).await?)
    }

    async fn push_to_appearing(self: Arc<Self>, mut appeared: Appeared) {
        let (retry, mut retries) = mpsc::unbounded_channel::<String>();
        loop {
            let node = tokio::select! {
                Some(node) = appeared.recv() => node,
                Some(node) = retries.recv() => node,
                else => return,
            };
            if let Err(e) = self.push_stored(&node).await {
                tracing::warn!(%node, error = %e, "pushing the stored settings failed; trying again shortly");
                let retry = retry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY_AFTER).await;
                    let _ = retry.send(node);
                });
            }
        }
    }

    /// Pushes the stored configs, plugin configs and plugin states to a node that has just appeared.
    async fn push_stored(&self, node: &str) -> Result<(), ApiError> {
        let _writer = self.writer.lock().await;
        let mut count = 0;
        for (app, key, value) in db::configs_for(&self.db, node).await? {
            self.link.call(node, set_config(&app, &key, &value)).await?;
            count += 1;
        }
        let mut plugins: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (plugin, key, value) in db::plugin_configs_for(&self.db, node).await? {
            plugins.entry(plugin).or_default().insert(key, value);
        }
        for (name, values) in plugins {
            self.link.call(node, Request::set_plugin_config(name, values)).await?;
            count += 1;
        }
        for (name, active) in db::plugin_states_for(&self.db, node).await? {
            match self.link.call(node, Request::set_plugin(name, active)).await {
                Ok(_) => {}
                // Already as stored.
                Err(e) if e.code == code::PLUGIN_ACTIVE || e.code == code::PLUGIN_INACTIVE => {}
                Err(e) => return Err(e),
            }
            count += 1;
        }
        if count > 0 {
            tracing::info!(%node, settings = count, "stored settings pushed");
        }
        Ok(())
    }
}

fn set_config(app: &str, key: &str, value: &str) -> Call<Done> {
    Request::set_config(app.to_string(), key.to_string(), value.to_string())
}
