//! Username/password authentication against a users file of `username:hash` lines.
//!
//! Hashes are argon2 (PHC strings, `$argon2id$...`) or bcrypt (`$2b$...`); a plain-text password in
//! the file is refused at load time. Verification runs on the blocking pool, and an unknown user is
//! checked against a dummy hash so that timing does not tell which usernames exist.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use subtle::ConstantTimeEq;

use crate::codec::{Connect, ConnectReturnCode};
use crate::server::Context;

/// Who a client turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// An ordinary client, subject to the ACL.
    Client,
    /// The management sidecar: may use the control topics, and is not subject to the ACL.
    Management,
}

/// Decides whether a CONNECT may proceed: `Err` carries the CONNACK code that refuses it.
///
/// The management username is reserved: only the shared secret opens it. Otherwise the first source
/// that knows the client decides: the users file, then `emq_auth_username`, then `emq_auth_clientid`.
/// A username no source knows is refused when a username source exists; otherwise clients that
/// present nothing known are anonymous, and `allow_anonymous` decides.
pub async fn authenticate(ctx: &Context, connect: &Connect) -> Result<Principal, ConnectReturnCode> {
    use ConnectReturnCode::{BadUsernameOrPassword, NotAuthorized};
    let password = connect.password.as_deref().unwrap_or_default();
    if let Some(username) = connect.username.as_deref() {
        if username == ctx.config.mgmt_username {
            let secret = ctx.config.mgmt_secret.as_ref().map(|s| s.expose().as_bytes());
            return match secret {
                Some(secret) if bool::from(secret.ct_eq(password)) => Ok(Principal::Management),
                _ => Err(BadUsernameOrPassword),
            };
        }
        if let Some(users) = ctx.users.as_ref().filter(|u| u.contains(username)) {
            return verified(users.verify(username, password).await);
        }
        if let Some(users) = ctx.plugins.username_credentials().filter(|u| u.contains(username)) {
            return verified(users.verify(username, password).await);
        }
    }
    if let Some(users) = ctx.plugins.clientid_credentials().filter(|u| u.contains(&connect.client_id)) {
        return verified(users.verify(&connect.client_id, password).await);
    }
    if connect.username.is_some() && (ctx.users.is_some() || ctx.plugins.username_credentials().is_some()) {
        // Spend a verification's time so that unknown names cannot be told from wrong passwords.
        Users::default().verify("", password).await;
        return Err(BadUsernameOrPassword);
    }
    if ctx.settings.allow_anonymous() {
        Ok(Principal::Client)
    } else {
        Err(NotAuthorized)
    }
}

fn verified(ok: bool) -> Result<Principal, ConnectReturnCode> {
    if ok {
        Ok(Principal::Client)
    } else {
        Err(ConnectReturnCode::BadUsernameOrPassword)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read users file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("users file line {line}: {what}")]
    Line { line: usize, what: String },
    #[error("cannot hash password: {0}")]
    Hash(String),
}

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

    /// Checks a password off the async executor.
    pub async fn verify(&self, username: &str, password: &[u8]) -> bool {
        let hash = self.hashes.get(username).cloned();
        let password = password.to_vec();
        tokio::task::spawn_blocking(move || match hash {
            Some(hash) => verify_hash(&hash, &password),
            None => {
                // Spend the same work as for a real user, then refuse.
                verify_hash(dummy_hash(), &password);
                false
            }
        })
        .await
        .unwrap_or(false)
    }
}

/// Is this an argon2 PHC string or a bcrypt hash (as opposed to a plain password)?
pub fn is_password_hash(text: &str) -> bool {
    is_bcrypt(text) || (text.starts_with("$argon2") && PasswordHash::new(text).is_ok())
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

fn verify_hash(hash: &str, password: &[u8]) -> bool {
    if is_bcrypt(hash) {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(b"midge-dummy-password").unwrap_or_default())
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default().hash_password(password, &salt).map(|h| h.to_string()).map_err(|e| AuthError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_and_bcrypt() {
        let argon = hash_password(b"s3cret").unwrap();
        let bcrypt = bcrypt::hash("hunter2", 4).unwrap();
        let users = Users::parse(&format!("# users\nalice:{argon}\nbob:{bcrypt}\n")).unwrap();
        assert!(users.verify("alice", b"s3cret").await);
        assert!(!users.verify("alice", b"wrong").await);
        assert!(users.verify("bob", b"hunter2").await);
        assert!(!users.verify("carol", b"s3cret").await);
    }

    #[test]
    fn plain_passwords_are_refused() {
        assert!(matches!(Users::parse("alice:secret"), Err(AuthError::Line { line: 1, .. })));
        assert!(matches!(Users::parse("alice"), Err(AuthError::Line { line: 1, .. })));
    }
}
