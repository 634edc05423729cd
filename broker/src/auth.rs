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
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::Read(path.display().to_string(), e))?;
        Users::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Users, AuthError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| AuthError::Line {
                line: i + 1,
                what: what.into(),
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected username:hash"))?;
            if user.is_empty() {
                return Err(err("empty username"));
            }
            if !(is_bcrypt(hash) || PasswordHash::new(hash).is_ok()) {
                return Err(err(
                    "not an argon2 or bcrypt hash (plain passwords are refused)",
                ));
            }
            hashes.insert(user.to_string(), hash.to_string());
        }
        Ok(Users {
            hashes: Arc::new(hashes),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
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
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
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
        assert!(matches!(
            Users::parse("alice:secret"),
            Err(AuthError::Line { line: 1, .. })
        ));
        assert!(matches!(
            Users::parse("alice"),
            Err(AuthError::Line { line: 1, .. })
        ));
    }
}
