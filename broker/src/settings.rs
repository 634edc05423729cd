//! Hot configuration: the keys the management API can read and change on the running broker, in EMQ's
//! names (`mqtt.allow_anonymous`, ...). Each setting is an atomic or an `ArcSwap`, so the message path
//! reads it without a lock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use midge_shared::control::ConfigRow;

use crate::auth::acl::{Acl, Nomatch};
use crate::config::Config;

/// Why a key was not changed: the old value stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(String);

/// Changes the log filter of the running process; supplied by the binary, which owns the subscriber.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// EMQ's application name for these keys.
pub const APP: &str = "emqttd";

const LOG_LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

pub struct Settings {
    allow_anonymous: AtomicBool,
    cache_acl: AtomicBool,
    sys_interval: AtomicU64,
    acl: ArcSwap<Acl>,
    /// Where the ACL came from and its no-match rule, to rebuild it when either changes.
    acl_source: Mutex<(Option<PathBuf>, Nomatch)>,
    log_level: Mutex<String>,
    log_reload: Option<LogReload>,
}

impl Settings {
    pub fn new(config: &Config, acl: Acl, log_reload: Option<LogReload>) -> Settings {
        Settings {
            allow_anonymous: AtomicBool::new(config.allow_anonymous),
            cache_acl: AtomicBool::new(config.cache_acl),
            sys_interval: AtomicU64::new(config.sys_interval),
            acl: ArcSwap::from_pointee(acl),
            acl_source: Mutex::new((config.acl_file.clone(), config.acl_nomatch)),
            log_level: Mutex::new(emq_level(&config.log_level).to_string()),
            log_reload,
        }
    }

    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous.load(Ordering::Relaxed)
    }

    pub fn cache_acl(&self) -> bool {
        self.cache_acl.load(Ordering::Relaxed)
    }

    /// Seconds between periodic `$SYS` publishes; 0 turns them off.
    pub fn sys_interval(&self) -> u64 {
        self.sys_interval.load(Ordering::Relaxed)
    }

    pub fn acl(&self) -> arc_swap::Guard<Arc<Acl>> {
        self.acl.load()
    }

    pub fn list(&self) -> Vec<ConfigRow> {
        let (acl_file, nomatch) = self.acl_source.lock().map(|s| s.clone()).unwrap_or((None, Nomatch::Allow));
        let row = |key: &str, value: String, datatype: &str| ConfigRow {
            key: key.into(),
            value,
            datatpye: datatype.into(),
            app: APP.into(),
        };
        vec![
            row("log.console.level", self.log_level.lock().map(|l| l.clone()).unwrap_or_default(), "enum"),
            row("mqtt.acl_file", acl_file.map(|p| p.display().to_string()).unwrap_or_default(), "string"),
            row("mqtt.acl_nomatch", nomatch_text(nomatch).into(), "enum"),
            row("mqtt.allow_anonymous", self.allow_anonymous().to_string(), "enum"),
            row("mqtt.broker.sys_interval", self.sys_interval().to_string(), "integer"),
            row("mqtt.cache_acl", self.cache_acl().to_string(), "enum"),
        ]
    }

    /// Changes one key on the running broker, after checking its type.
    pub fn set(&self, app: &str, key: &str, value: &str) -> Result<(), SettingError> {
        let refuse = |why: String| Err(SettingError(why));
        if app != APP {
            return refuse(format!("unknown app {app}"));
        }
        match key {
            "log.console.level" => {
                if !LOG_LEVELS.contains(&value) {
                    return refuse(format!("log.console.level must be one of {}", LOG_LEVELS.join(", ")));
                }
                if let Some(reload) = &self.log_reload {
                    reload(tracing_level(value)).or_else(refuse)?;
                }
                if let Ok(mut level) = self.log_level.lock() {
                    *level = value.to_string();
                }
            }
            "mqtt.acl_file" => {
                let path = (!value.is_empty()).then(|| PathBuf::from(value));
                self.rebuild_acl(|source| source.0 = path)?;
            }
            "mqtt.acl_nomatch" => {
                let nomatch = match value {
                    "allow" => Nomatch::Allow,
                    "deny" => Nomatch::Deny,
                    _ => return refuse("mqtt.acl_nomatch must be allow or deny".into()),
                };
                self.rebuild_acl(|source| source.1 = nomatch)?;
            }
            "mqtt.allow_anonymous" => self.allow_anonymous.store(boolean(key, value)?, Ordering::Relaxed),
            "mqtt.cache_acl" => self.cache_acl.store(boolean(key, value)?, Ordering::Relaxed),
            "mqtt.broker.sys_interval" => {
                let seconds = value
                    .parse::<u64>()
                    .map_err(|_| SettingError("mqtt.broker.sys_interval must be an integer".into()))?;
                self.sys_interval.store(seconds, Ordering::Relaxed);
            }
            _ => return refuse(format!("{key} cannot be changed at runtime")),
        }
        tracing::info!(key, value, "config changed");
        Ok(())
    }

    /// The ACL file in use, if any.
    pub fn acl_file(&self) -> Option<PathBuf> {
        self.acl_source.lock().map(|s| s.0.clone()).unwrap_or(None)
    }

    /// Reads the ACL file again; on any error the running ACL stays.
    pub fn reload_acl(&self) -> Result<(), SettingError> {
        self.rebuild_acl(|_| {})
    }

    /// Loads the ACL from the changed source; on any error the old ACL and source stay.
    fn rebuild_acl(&self, change: impl FnOnce(&mut (Option<PathBuf>, Nomatch))) -> Result<(), SettingError> {
        // A panic while holding this leaves a path and a rule that are still valid.
        let mut source = self.acl_source.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = source.clone();
        change(&mut next);
        let acl = Acl::load(next.0.as_deref(), next.1).map_err(|e| SettingError(e.to_string()))?;
        self.acl.store(Arc::new(acl));
        *source = next;
        Ok(())
    }
}

fn boolean(key: &str, value: &str) -> Result<bool, SettingError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(SettingError(format!("{key} must be true or false"))),
    }
}

fn nomatch_text(n: Nomatch) -> &'static str {
    match n {
        Nomatch::Allow => "allow",
        Nomatch::Deny => "deny",
    }
}

/// EMQ's level names onto tracing's.
fn tracing_level(emq: &str) -> &'static str {
    match emq {
        "debug" => "debug",
        "info" | "notice" => "info",
        "warning" => "warn",
        _ => "error",
    }
}

/// A tracing filter from the config shown with EMQ's nearest level name.
fn emq_level(filter: &str) -> &'static str {
    match filter {
        "trace" | "debug" => "debug",
        "warn" => "warning",
        "error" => "error",
        _ => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_checks_and_changes() {
        let config = Config::default();
        let settings = Settings::new(&config, Acl::load(None, Nomatch::Allow).unwrap(), None);
        assert!(settings.allow_anonymous());
        settings.set(APP, "mqtt.allow_anonymous", "false").unwrap();
        assert!(!settings.allow_anonymous());
        assert!(settings.set(APP, "mqtt.allow_anonymous", "maybe").is_err());
        assert!(settings.set(APP, "mqtt.broker.sys_interval", "ten").is_err());
        settings.set(APP, "mqtt.broker.sys_interval", "5").unwrap();
        assert_eq!(settings.sys_interval(), 5);
        assert!(settings.set("other", "mqtt.cache_acl", "true").is_err());
        assert!(settings.set(APP, "mqtt.acl_file", "/nonexistent").is_err());
        settings.set(APP, "log.console.level", "warning").unwrap();
        let rows = settings.list();
        let get = |k: &str| rows.iter().find(|r| r.key == k).unwrap().value.clone();
        assert_eq!(get("log.console.level"), "warning");
        assert_eq!(get("mqtt.allow_anonymous"), "false");
        assert_eq!(get("mqtt.broker.sys_interval"), "5");
        assert_eq!(rows.iter().find(|r| r.key == "mqtt.broker.sys_interval").unwrap().datatpye, "integer");
    }
}
