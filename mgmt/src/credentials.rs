//! A short-lived memory of credentials that passed argon2, so that a dashboard polling the API does not
//! pay a full password hash (tens of milliseconds of CPU and 19 MiB) on every request.
//!
//! Only a keyed SHA-256 digest of username and password is kept (the key is random per process), it is
//! compared in constant time, it expires after a minute, and changing or deleting a user forgets it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const TTL: Duration = Duration::from_secs(60);
/// More users than this at once and the memory starts over (it is only a cache).
const MAX_ENTRIES: usize = 1024;

pub struct VerifiedCredentials {
    key: [u8; 32],
    entries: Mutex<HashMap<String, ([u8; 32], Instant)>>,
}

impl Default for VerifiedCredentials {
    fn default() -> Self {
        VerifiedCredentials { key: rand::random(), entries: Mutex::new(HashMap::new()) }
    }
}

impl VerifiedCredentials {
    fn digest(&self, username: &str, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update((username.len() as u64).to_be_bytes());
        hasher.update(username.as_bytes());
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    /// True if these exact credentials passed argon2 less than a minute ago.
    pub fn recently_verified(&self, username: &str, password: &str) -> bool {
        let digest = self.digest(username, password);
        let Ok(entries) = self.entries.lock() else { return false };
        match entries.get(username) {
            Some((known, at)) => at.elapsed() < TTL && bool::from(known.ct_eq(&digest)),
            None => false,
        }
    }

    pub fn remember(&self, username: &str, password: &str) {
        let digest = self.digest(username, password);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(username.to_string(), (digest, Instant::now()));
        }
    }

    /// After a password change or a deletion.
    pub fn forget(&self, username: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(username);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exact_credentials_until_forgotten() {
        let cache = VerifiedCredentials::default();
        assert!(!cache.recently_verified("admin", "public"));
        cache.remember("admin", "public");
        assert!(cache.recently_verified("admin", "public"));
        assert!(!cache.recently_verified("admin", "public2"));
        assert!(!cache.recently_verified("admi", "npublic"));
        cache.forget("admin");
        assert!(!cache.recently_verified("admin", "public"));
    }
}
