//! Plugins: parts of the broker that can be switched on and off at runtime, listed under EMQ's names.
//! Only plugins that really work are listed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use midge_passwords::Hasher;
use midge_shared::control::{PluginConfigRow, PluginRow};

use crate::auth::{is_password_hash, PluginCredentials, Users};

/// Why a plugin could not be switched or configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("no plugin {0}")]
    Unknown(String),
    #[error("plugin already active")]
    AlreadyActive,
    #[error("plugin already inactive")]
    AlreadyInactive,
    #[error("{plugin} has no config key {key}")]
    NoSuchKey { plugin: String, key: String },
    #[error("{0}")]
    BadValue(&'static str),
    #[error("cannot hash a password: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Plugin {
    AuthClientid,
    AuthUsername,
    Modules,
    Retainer,
    Reloader,
    Recon,
    /// Served by the sidecar, which follows this switch: the broker only keeps its state, so that it is
    /// listed, switched and restored per node like every other plugin.
    Dashboard,
}

impl Plugin {
    pub const ALL: [Plugin; 7] = [
        Plugin::AuthClientid,
        Plugin::AuthUsername,
        Plugin::Modules,
        Plugin::Retainer,
        Plugin::Reloader,
        Plugin::Recon,
        Plugin::Dashboard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Plugin::AuthClientid => "emq_auth_clientid",
            Plugin::AuthUsername => "emq_auth_username",
            Plugin::Modules => "emq_modules",
            Plugin::Retainer => "emq_retainer",
            Plugin::Reloader => "emq_reloader",
            Plugin::Recon => "emq_recon",
            Plugin::Dashboard => "emq_dashboard",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Plugin::AuthClientid => "Authentication with ClientId/Password",
            Plugin::AuthUsername => "Authentication with Username/Password",
            Plugin::Modules => "EMQ Modules",
            Plugin::Retainer => "EMQ Retainer",
            Plugin::Reloader => "Reloads the ACL file, users file and TLS certificates when they change on disk",
            Plugin::Recon => "Runtime diagnostics: memory, tasks, queue depths, the clients with the longest queues",
            Plugin::Dashboard => "EMQ Web Dashboard (served by the management sidecar)",
        }
    }

    pub fn from_name(name: &str) -> Option<Plugin> {
        Plugin::ALL.into_iter().find(|p| p.name() == name)
    }

    fn active_by_default(self) -> bool {
        matches!(self, Plugin::Modules | Plugin::Retainer | Plugin::Recon | Plugin::Dashboard)
    }

    /// The keys this plugin's config takes, with a description and whether EMQ marks them required.
    /// Keys with `{n}` take any positive number there.
    fn keys(self) -> &'static [(&'static str, &'static str, bool)] {
        match self {
            Plugin::AuthClientid => &[
                ("auth.client.password_hash", "password hash (stored passwords are always argon2id)", false),
                ("auth.client.{n}.clientid", "client id", false),
                ("auth.client.{n}.password", "password (stored as an argon2id hash)", false),
            ],
            Plugin::AuthUsername => &[
                ("auth.user.password_hash", "password hash (stored passwords are always argon2id)", false),
                ("auth.user.{n}.username", "username", false),
                ("auth.user.{n}.password", "password (stored as an argon2id hash)", false),
            ],
            Plugin::Modules => &[("module.presence", "publish client connected/disconnected events: on | off", true)],
            Plugin::Retainer | Plugin::Reloader | Plugin::Recon | Plugin::Dashboard => &[],
        }
    }

    fn defaults(self) -> BTreeMap<String, String> {
        let pairs: &[(&str, &str)] = match self {
            Plugin::AuthClientid => &[("auth.client.password_hash", "argon2id")],
            Plugin::AuthUsername => &[("auth.user.password_hash", "argon2id")],
            Plugin::Modules => &[("module.presence", "on")],
            Plugin::Retainer | Plugin::Reloader | Plugin::Recon | Plugin::Dashboard => &[],
        };
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

/// Does `key` fit `pattern`, where `{n}` stands for a positive number?
fn key_matches(pattern: &str, key: &str) -> bool {
    match pattern.split_once("{n}") {
        None => pattern == key,
        Some((head, tail)) => key
            .strip_prefix(head)
            .and_then(|rest| rest.strip_suffix(tail))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    }
}

pub struct Plugins {
    /// Shared with whoever acts on a switch without asking here (the router, for the retainer).
    active: [Arc<AtomicBool>; Plugin::ALL.len()],
    version: String,
    configs: Mutex<BTreeMap<Plugin, BTreeMap<String, String>>>,
    /// Where the auth plugins' credentials go, for authentication to read: set while the plugin is on.
    credentials: Arc<PluginCredentials>,
}

impl Plugins {
    pub fn new(version: &str, credentials: Arc<PluginCredentials>) -> Plugins {
        Plugins {
            active: Plugin::ALL.map(|p| Arc::new(AtomicBool::new(p.active_by_default()))),
            version: version.to_string(),
            configs: Mutex::new(Plugin::ALL.into_iter().map(|p| (p, p.defaults())).collect()),
            credentials,
        }
    }

    /// The flag that says whether `plugin` is on, for a part of the broker that acts on it directly.
    pub fn switch(&self, plugin: Plugin) -> Arc<AtomicBool> {
        self.active[Self::index(plugin)].clone()
    }

    fn configs(&self) -> MutexGuard<'_, BTreeMap<Plugin, BTreeMap<String, String>>> {
        // A panic while holding this leaves maps of strings that are still valid.
        self.configs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the auth plugins' credentials to authentication: built from the config, while active.
    fn publish_credentials(&self, plugin: Plugin) {
        let built = |prefix, id_field| {
            let configs = self.configs();
            let config = configs.get(&plugin).cloned().unwrap_or_default();
            self.is_active(plugin).then(|| credentials(&config, prefix, id_field))
        };
        match plugin {
            Plugin::AuthUsername => self.credentials.set_by_username(built("auth.user.", "username")),
            Plugin::AuthClientid => self.credentials.set_by_clientid(built("auth.client.", "clientid")),
            Plugin::Modules | Plugin::Retainer | Plugin::Reloader | Plugin::Recon | Plugin::Dashboard => {}
        }
    }

    fn index(plugin: Plugin) -> usize {
        Plugin::ALL.iter().position(|p| *p == plugin).expect("every plugin is in ALL")
    }

    pub fn is_active(&self, plugin: Plugin) -> bool {
        self.active[Self::index(plugin)].load(Ordering::Relaxed)
    }

    /// Presence events need the modules plugin with its presence module on.
    pub fn presence_enabled(&self) -> bool {
        self.is_active(Plugin::Modules)
            && self.config_value(Plugin::Modules, "module.presence").as_deref() != Some("off")
    }

    pub fn list(&self) -> Vec<PluginRow> {
        Plugin::ALL
            .iter()
            .map(|p| PluginRow {
                name: p.name().into(),
                version: self.version.clone(),
                description: p.description().into(),
                active: self.is_active(*p),
            })
            .collect()
    }

    /// Switches a plugin on or off.
    pub fn set_active(&self, name: &str, active: bool) -> Result<(), PluginError> {
        let plugin = Plugin::from_name(name).ok_or_else(|| PluginError::Unknown(name.to_string()))?;
        let was = self.active[Self::index(plugin)].swap(active, Ordering::Relaxed);
        match (was, active) {
            (true, true) => Err(PluginError::AlreadyActive),
            (false, false) => Err(PluginError::AlreadyInactive),
            _ => {
                self.publish_credentials(plugin);
                tracing::info!(plugin = name, active, "plugin switched");
                Ok(())
            }
        }
    }

    fn config_value(&self, plugin: Plugin, key: &str) -> Option<String> {
        self.configs().get(&plugin)?.get(key).cloned()
    }

    /// A plugin's configuration as it is (passwords hashed), to keep.
    pub fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.configs().get(&Plugin::from_name(name)?).cloned()
    }

    /// Puts back a plugin's configuration as it was kept, whole.
    pub fn restore_config(&self, name: &str, config: BTreeMap<String, String>) -> Result<(), PluginError> {
        let plugin = Plugin::from_name(name).ok_or_else(|| PluginError::Unknown(name.to_string()))?;
        self.configs().insert(plugin, config);
        self.publish_credentials(plugin);
        Ok(())
    }

    pub fn config(&self, name: &str) -> Result<Vec<PluginConfigRow>, PluginError> {
        let plugin = Plugin::from_name(name).ok_or_else(|| PluginError::Unknown(name.to_string()))?;
        let values = self.configs().get(&plugin).cloned().unwrap_or_default();
        Ok(values
            .into_iter()
            .map(|(key, value)| {
                let (desc, required) = plugin
                    .keys()
                    .iter()
                    .find(|(pattern, _, _)| key_matches(pattern, &key))
                    .map(|(_, d, r)| (d.to_string(), *r))
                    .unwrap_or_default();
                PluginConfigRow { key, value, desc, required }
            })
            .collect())
    }

    /// Merges new values into a plugin's config (an empty value removes the key) and applies it.
    /// Passwords are hashed here, so neither the broker nor the sidecar ever stores them in clear.
    pub async fn set_config(
        &self,
        hasher: &Hasher,
        name: &str,
        values: BTreeMap<String, String>,
    ) -> Result<(), PluginError> {
        let plugin = Plugin::from_name(name).ok_or_else(|| PluginError::Unknown(name.to_string()))?;
        for key in values.keys() {
            if !plugin.keys().iter().any(|(pattern, _, _)| key_matches(pattern, key)) {
                return Err(PluginError::NoSuchKey { plugin: name.to_string(), key: key.clone() });
            }
        }
        if let Some(v) = values.get("module.presence") {
            if v != "on" && v != "off" {
                return Err(PluginError::BadValue("module.presence is on or off"));
            }
        }
        let mut prepared = BTreeMap::new();
        for (key, value) in values {
            let value = if key.ends_with(".password") && !value.is_empty() && !is_password_hash(&value) {
                hasher.hash(value.as_bytes()).await.map_err(|e| PluginError::Hash(e.to_string()))?
            } else {
                value
            };
            prepared.insert(key, value);
        }
        {
            let mut configs = self.configs();
            let config = configs.entry(plugin).or_default();
            for (key, value) in prepared {
                if value.is_empty() {
                    config.remove(&key);
                } else {
                    config.insert(key, value);
                }
            }
        }
        self.publish_credentials(plugin);
        Ok(())
    }
}

/// Pairs `{prefix}{n}.{id_field}` with `{prefix}{n}.password`.
fn credentials(config: &BTreeMap<String, String>, prefix: &str, id_field: &str) -> Users {
    let mut hashes = HashMap::new();
    for (key, id) in config {
        let Some(n) = key.strip_prefix(prefix).and_then(|r| r.strip_suffix(&format!(".{id_field}"))) else {
            continue;
        };
        if let Some(hash) = config.get(&format!("{prefix}{n}.password")) {
            hashes.insert(id.clone(), hash.clone());
        }
    }
    Users::from_hashes(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_reports_110_and_111() {
        let plugins = Plugins::new("0.1.0", Default::default());
        assert!(plugins.is_active(Plugin::Retainer));
        assert_eq!(plugins.set_active("emq_retainer", true), Err(PluginError::AlreadyActive));
        let retainer = plugins.switch(Plugin::Retainer);
        plugins.set_active("emq_retainer", false).unwrap();
        assert!(!retainer.load(Ordering::Relaxed), "the shared flag follows the switch");
        assert_eq!(plugins.set_active("emq_retainer", false), Err(PluginError::AlreadyInactive));
        assert!(matches!(plugins.set_active("emq_nope", true), Err(PluginError::Unknown(_))));
    }

    #[tokio::test]
    async fn auth_username_config_hashes_passwords() {
        let plugins = Plugins::new("0.1.0", Default::default());
        let values = BTreeMap::from([
            ("auth.user.1.username".to_string(), "alice".to_string()),
            ("auth.user.1.password".to_string(), "s3cret".to_string()),
        ]);
        let hasher = Hasher::new(1, 4);
        plugins.set_config(&hasher, "emq_auth_username", values).await.unwrap();
        let rows = plugins.config("emq_auth_username").unwrap();
        let password = rows.iter().find(|r| r.key == "auth.user.1.password").unwrap();
        assert!(password.value.starts_with("$argon2id$"), "{}", password.value);
        assert!(plugins.credentials.by_username().is_none(), "inactive plugin answers nothing");
        plugins.set_active("emq_auth_username", true).unwrap();
        let users = plugins.credentials.by_username().unwrap();
        assert!(hasher.verify(users.hash_of("alice"), b"s3cret").await.unwrap());
        let bad = BTreeMap::from([("auth.user.x.username".to_string(), "bob".to_string())]);
        let refused = plugins.set_config(&hasher, "emq_auth_username", bad).await;
        assert!(matches!(refused, Err(PluginError::NoSuchKey { .. })));
        plugins.set_active("emq_auth_username", false).unwrap();
        assert!(plugins.credentials.by_username().is_none(), "switched off: none again");
    }
}
