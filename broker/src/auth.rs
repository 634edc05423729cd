//! Who a client is: the management principal (by its shared secret), a user of the users file or of an
//! auth plugin (argon2 or bcrypt hashes), or an anonymous client.
//!
//! Password checks run on the bounded workers of `midge-passwords` (reused memory, a queue with a limit),
//! an unknown user is checked against a dummy hash so that timing does not tell which usernames exist,
//! and repeated failures from one address or for one name are refused without a check for a while.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use midge_passwords::{HashError, Hasher, Throttle};
use subtle::ConstantTimeEq;

use crate::codec::{Connect, ConnectReturnCode};
use crate::config::Config;
use crate::plugins::Plugins;
use crate::settings::Settings;

pub use midge_passwords::is_password_hash;

/// Who a client turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// An ordinary client, subject to the ACL.
    Client,
    /// The management sidecar: may use the control topics, and is not subject to the ACL.
    Management,
}

/// What authentication needs from the rest of the broker.
pub struct Authenticator {
    pub users: Option<Users>,
    pub hasher: Hasher,
    pub throttle: Throttle,
}

impl Authenticator {
    /// Decides whether a CONNECT from `source` may proceed: `Err` carries the CONNACK code that refuses it.
    ///
    /// The management username is reserved: only the shared secret opens it. Otherwise the first source
    /// that knows the client decides: the users file, then `emq_auth_username`, then `emq_auth_clientid`.
    /// A username no source knows is refused when a username source exists; otherwise clients that
    /// present nothing known are anonymous, and `allow_anonymous` decides.
    pub async fn authenticate(
        &self,
        config: &Config,
        settings: &Settings,
        plugins: &Plugins,
        connect: &Connect,
        source: IpAddr,
    ) -> Result<Principal, ConnectReturnCode> {
        use ConnectReturnCode::{BadUsernameOrPassword, NotAuthorized};
        let password = connect.password.as_deref().unwrap_or_default();
        if let Some(username) = connect.username.as_deref() {
            if username == config.mgmt_username {
                // Throttled per source only: per username, anyone could lock the sidecar out, and a
                // secret of 16 bytes or more is not guessed at any rate a throttle would let through.
                self.throttled(source, None)?;
                let secret = config.mgmt_secret.as_ref().map(|s| s.expose().as_bytes());
                return match secret {
                    Some(secret) if bool::from(secret.ct_eq(password)) => Ok(Principal::Management),
                    _ => Err(self.failed(source, None)),
                };
            }
            if let Some(users) = self.users.as_ref().filter(|u| u.contains(username)) {
                return self.check(source, username, users.hash_of(username), password).await;
            }
            if let Some(users) = plugins.username_credentials().filter(|u| u.contains(username)) {
                return self.check(source, username, users.hash_of(username), password).await;
            }
        }
        if let Some(users) = plugins.clientid_credentials().filter(|u| u.contains(&connect.client_id)) {
            return self.check(source, &connect.client_id, users.hash_of(&connect.client_id), password).await;
        }
        if let Some(username) = connect.username.as_deref() {
            if self.users.is_some() || plugins.username_credentials().is_some() {
                // Spend a verification's time so that unknown names cannot be told from wrong passwords.
                self.check(source, username, None, password).await?;
                return Err(BadUsernameOrPassword);
            }
        }
        if settings.allow_anonymous() {
            Ok(Principal::Client)
        } else {
            Err(NotAuthorized)
        }
    }

    /// Checks `password` against `hash` (`None`: an unknown user, always refused), unless `who` has
    /// failed too often lately.
    async fn check(
        &self,
        source: IpAddr,
        who: &str,
        hash: Option<&str>,
        password: &[u8],
    ) -> Result<Principal, ConnectReturnCode> {
        self.throttled(source, Some(who))?;
        match self.hasher.verify(hash, password).await {
            Ok(true) => Ok(Principal::Client),
            Ok(false) => Err(self.failed(source, Some(who))),
            Err(HashError::Busy) => {
                tracing::warn!(%source, "too many password checks waiting: connection refused unchecked");
                Err(ConnectReturnCode::ServerUnavailable)
            }
            Err(e) => {
                tracing::warn!(%source, error = %e, "password check failed");
                Err(ConnectReturnCode::BadUsernameOrPassword)
            }
        }
    }

    fn throttled(&self, source: IpAddr, who: Option<&str>) -> Result<(), ConnectReturnCode> {
        self.throttle.check(source, who).map_err(|_| ConnectReturnCode::BadUsernameOrPassword)
    }

    fn failed(&self, source: IpAddr, who: Option<&str>) -> ConnectReturnCode {
        let _ = self.throttle.failed(source, who);
        ConnectReturnCode::BadUsernameOrPassword
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read users file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("users file line {line}: {what}")]
    Line { line: usize, what: String },
}

/// Usernames (or client ids) and their password hashes.
#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: Arc<HashMap<String, String>>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read(path.display().to_string(), e))?;
        Users::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Users, AuthError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| AuthError::Line { line: i + 1, what: what.into() };
            let (user, hash) = line.split_once(':').ok_or_else(|| err("expected username:hash"))?;
            if user.is_empty() {
                return Err(err("empty username"));
            }
            if !is_password_hash(hash) {
                return Err(err("not an argon2 or bcrypt hash (plain passwords are refused)"));
            }
            hashes.insert(user.to_string(), hash.to_string());
        }
        Ok(Users { hashes: Arc::new(hashes) })
    }

    /// Users from `name → hash` pairs whose hashes were already checked.
    pub fn from_hashes(hashes: HashMap<String, String>) -> Users {
        Users { hashes: Arc::new(hashes) }
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn contains(&self, username: &str) -> bool {
        self.hashes.contains_key(username)
    }

    pub fn hash_of(&self, username: &str) -> Option<&str> {
        self.hashes.get(username).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_and_bcrypt_lines() {
        let hasher = Hasher::new(1, 4);
        let argon = hasher.hash(b"s3cret").await.unwrap();
        let bcrypt = bcrypt::hash("hunter2", 4).unwrap();
        let users = Users::parse(&format!("# users\nalice:{argon}\nbob:{bcrypt}\n")).unwrap();
        assert!(hasher.verify(users.hash_of("alice"), b"s3cret").await.unwrap());
        assert!(!hasher.verify(users.hash_of("alice"), b"wrong").await.unwrap());
        assert!(hasher.verify(users.hash_of("bob"), b"hunter2").await.unwrap());
        assert!(users.hash_of("carol").is_none());
    }

    #[test]
    fn plain_passwords_are_refused() {
        assert!(matches!(Users::parse("alice:secret"), Err(AuthError::Line { line: 1, .. })));
        assert!(matches!(Users::parse("alice"), Err(AuthError::Line { line: 1, .. })));
    }
}
