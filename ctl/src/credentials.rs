//! Where midge-ctl finds the sidecar and its login: flags first, then the environment (`MIDGE_CTL_URL`,
//! `MIDGE_CTL_USER`, `MIDGE_CTL_PASSWORD`), then a config file (`--config`, or `$HOME/.config/midge/ctl.toml`
//! if it exists, with `url`, `user` and `password`), then the defaults of a fresh install.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Clone)]
pub struct Credentials {
    pub url: String,
    pub user: String,
    pub password: String,
}

/// What one source says; unset fields fall through to the next.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Partial {
    fn or(self, other: Partial) -> Partial {
        Partial {
            url: self.url.or(other.url),
            user: self.user.or(other.user),
            password: self.password.or(other.password),
        }
    }
}

/// The credentials from `flags` (which clap has already folded the environment into), then the file.
pub fn resolve(flags: Partial, file: Option<&Path>) -> anyhow::Result<Credentials> {
    let from_file = match file.map(PathBuf::from).or_else(default_file) {
        Some(path) if path.exists() || file.is_some() => {
            let text =
                std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        _ => Partial::default(),
    };
    let merged = flags.or(from_file);
    Ok(Credentials {
        url: merged.url.unwrap_or_else(|| DEFAULT_URL.into()),
        user: merged.user.unwrap_or_else(|| "admin".into()),
        password: merged.password.unwrap_or_else(|| "public".into()),
    })
}

fn default_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".config/midge/ctl.toml"))
}
