//! Plugins: parts of the broker that can be switched on and off at runtime, listed under EMQ's names.
//! Only plugins that really work are listed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use arc_swap::ArcSwap;
use midge_shared::control::{code, ControlError, PluginConfigRow, PluginRow};

use crate::auth::{self, Users};
use midge_passwords::Hasher;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Plugin {
    AuthClientid,
    AuthUsername,
    Modules,
    Retainer,
}

impl Plugin {
    pub const ALL: [Plugin; 4] = [Plugin::AuthClientid, Plugin::AuthUsername, Plugin::Modules, Plugin::Retainer];

    pub fn name(self) -> &'static str {
        match self {
            Plugin::AuthClientid => "emq_auth_clientid",
            Plugin::AuthUsername => "emq_auth_username",
            Plugin::Modules => "emq_modules",
            Plugin::Retainer => "emq_retainer",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Plugin::AuthClientid => "Authentication with ClientId/Password",
            Plugin::AuthUsername => "Authentication with Username/Password",
            Plugin::Modules => "EMQ Modules",
            Plugin::Retainer => "EMQ Retainer",
        }
    }

    pub fn from_name(name: &str) -> Option<Plugin> {
        Plugin::ALL.into_iter().find(|p| p.name() == name)
    }

    fn active_by_default(self) -> bool {
        matches!(self, Plugin::Modules | Plugin::Retainer)
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
            Plugin::Retainer => &[],
        }
    }

    fn defaults(self) -> BTreeMap<String, String> {
        let pairs: &[(&str, &str)] = match self {
            Plugin::AuthClientid => &[("auth.client.password_hash", "argon2id")],
            Plugin::AuthUsername => &[("auth.user.password_hash", "argon2id")],
            Plugin::Modules => &[("module.presence", "on")],
            Plugin::Retainer => &[],
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
    active: [AtomicBool; 4],
    version: String,
    configs: Mutex<BTreeMap<Plugin, BTreeMap<String, String>>>,
    /// Credentials of the two auth plugins, rebuilt whenever their config changes.
    by_username: ArcSwap<Users>,
    by_clientid: ArcSwap<Users>,
}

impl Plugins {
    pub fn new(version: &str) -> Plugins {
        Plugins {
            active: Plugin::ALL.map(|p| AtomicBool::new(p.active_by_default())),
            version: version.to_string(),
            configs: Mutex::new(Plugin::ALL.into_iter().map(|p| (p, p.defaults())).collect()),
            by_username: ArcSwap::from_pointee(Users::default()),
            by_clientid: ArcSwap::from_pointee(Users::default()),
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

    /// Switches a plugin; 110 if it is already active, 111 if already inactive.
    pub fn set_active(&self, name: &str, active: bool) -> Result<(), ControlError> {
        let plugin =
            Plugin::from_name(name).ok_or_else(|| ControlError::new(code::UNKNOWN, format!("no plugin {name}")))?;
        let was = self.active[Self::index(plugin)].swap(active, Ordering::Relaxed);
        match (was, active) {
            (true, true) => Err(ControlError::new(code::PLUGIN_ACTIVE, "plugin already active")),
            (false, false) => Err(ControlError::new(code::PLUGIN_INACTIVE, "plugin already inactive")),
            _ => {
                tracing::info!(plugin = name, active, "plugin switched");
                Ok(())
            }
        }
    }

    fn config_value(&self, plugin: Plugin, key: &str) -> Option<String> {
        self.configs.lock().ok()?.get(&plugin)?.get(key).cloned()
    }

    pub fn config(&self, name: &str) -> Result<Vec<PluginConfigRow>, ControlError> {
        let plugin =
            Plugin::from_name(name).ok_or_else(|| ControlError::new(code::UNKNOWN, format!("no plugin {name}")))?;
        let configs = self.configs.lock().map_err(|_| ControlError::new(code::UNKNOWN, "config lock poisoned"))?;
        let values = configs.get(&plugin).cloned().unwrap_or_default();
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
    ) -> Result<(), ControlError> {
        let plugin =
            Plugin::from_name(name).ok_or_else(|| ControlError::new(code::UNKNOWN, format!("no plugin {name}")))?;
        for key in values.keys() {
            if !plugin.keys().iter().any(|(pattern, _, _)| key_matches(pattern, key)) {
                return Err(ControlError::new(code::UNKNOWN, format!("{name} has no config key {key}")));
            }
        }
        if let Some(v) = values.get("module.presence") {
            if v != "on" && v != "off" {
                return Err(ControlError::new(code::UNKNOWN, "module.presence is on or off"));
            }
        }
        let mut prepared = BTreeMap::new();
        for (key, value) in values {
            let value = if key.ends_with(".password") && !value.is_empty() && !auth::is_password_hash(&value) {
                hasher.hash(value.as_bytes()).await.map_err(|e| ControlError::new(code::UNKNOWN, e.to_string()))?
            } else {
                value
            };
            prepared.insert(key, value);
        }
        let merged = {
            let mut configs =
                self.configs.lock().map_err(|_| ControlError::new(code::UNKNOWN, "config lock poisoned"))?;
            let config = configs.entry(plugin).or_default();
            for (key, value) in prepared {
                if value.is_empty() {
                    config.remove(&key);
                } else {
                    config.insert(key, value);
                }
            }
            config.clone()
        };
        match plugin {
            Plugin::AuthUsername => self.by_username.store(credentials(&merged, "auth.user.", "username").into()),
            Plugin::AuthClientid => self.by_clientid.store(credentials(&merged, "auth.client.", "clientid").into()),
            _ => {}
        }
        Ok(())
    }

    /// Credentials of an active auth plugin: `(by username, by client id)`.
    pub fn username_credentials(&self) -> Option<arc_swap::Guard<std::sync::Arc<Users>>> {
        self.is_active(Plugin::AuthUsername).then(|| self.by_username.load())
    }

    pub fn clientid_credentials(&self) -> Option<arc_swap::Guard<std::sync::Arc<Users>>> {
        self.is_active(Plugin::AuthClientid).then(|| self.by_clientid.load())
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
        let plugins = Plugins::new("0.1.0");
        assert!(plugins.is_active(Plugin::Retainer));
        assert_eq!(plugins.set_active("emq_retainer", true).unwrap_err().code, 110);
        plugins.set_active("emq_retainer", false).unwrap();
        assert_eq!(plugins.set_active("emq_retainer", false).unwrap_err().code, 111);
        assert_eq!(plugins.set_active("emq_nope", true).unwrap_err().code, 102);
    }

    #[tokio::test]
    async fn auth_username_config_hashes_passwords() {
        let plugins = Plugins::new("0.1.0");
        let values = BTreeMap::from([
            ("auth.user.1.username".to_string(), "alice".to_string()),
            ("auth.user.1.password".to_string(), "s3cret".to_string()),
        ]);
        let hasher = Hasher::new(1, 4);
        plugins.set_config(&hasher, "emq_auth_username", values).await.unwrap();
        let rows = plugins.config("emq_auth_username").unwrap();
        let password = rows.iter().find(|r| r.key == "auth.user.1.password").unwrap();
        assert!(password.value.starts_with("$argon2id$"), "{}", password.value);
        assert!(plugins.username_credentials().is_none(), "inactive plugin answers nothing");
        plugins.set_active("emq_auth_username", true).unwrap();
        let users = plugins.username_credentials().unwrap();
        assert!(hasher.verify(users.hash_of("alice"), b"s3cret").await.unwrap());
        let bad = BTreeMap::from([("auth.user.x.username".to_string(), "bob".to_string())]);
        assert_eq!(plugins.set_config(&hasher, "emq_auth_username", bad).await.unwrap_err().code, 102);
    }
}
