//! Usernames (or client ids) and their password hashes: the users file, and the auth plugins' sets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use midge_passwords::is_password_hash;

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
    use midge_passwords::Hasher;

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
