//! Admin passwords: argon2id through a fixed set of hashing workers with reused memory (see
//! `midge-passwords`), throttling of repeated failures per source and per user, and a short memory of
//! credentials that passed, so a dashboard polling the API does not pay a hash per request.

use std::net::IpAddr;

use midge_passwords::{HashError, Hasher, Limits, Throttle};

use crate::credentials::VerifiedCredentials;
use crate::db::{self, Db};
use crate::error::{code, ApiError};

/// What a login attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Accepted,
    /// Wrong password, or no such user (the two take the same time and look the same).
    Refused,
    /// Refused without a check: too many failures from this source or for this user lately.
    Throttled,
    /// Refused without a check: too many checks waiting already.
    Busy,
}

pub struct Passwords {
    hasher: Hasher,
    throttle: Throttle,
    verified: VerifiedCredentials,
}

impl Passwords {
    pub fn new(limits: Limits) -> Passwords {
        Passwords { hasher: Hasher::default(), throttle: Throttle::new(limits), verified: Default::default() }
    }

    /// Checks a login from `source`. Failures are logged with the user and the source, never the password.
    pub async fn login(&self, db: &Db, source: IpAddr, username: &str, password: &str) -> Result<Login, ApiError> {
        if self.verified.recently_verified(username, password) {
            return Ok(Login::Accepted);
        }
        let user = username.escape_debug();
        if self.throttle.check(source, Some(username)).is_err() {
            tracing::info!(%user, %source, "API login refused: throttled");
            return Ok(Login::Throttled);
        }
        let stored = db::user(db, username).await?.map(|u| u.password_hash);
        match self.hasher.verify(stored.as_deref(), password.as_bytes()).await {
            Ok(true) => {
                self.verified.remember(username, password);
                Ok(Login::Accepted)
            }
            Ok(false) => {
                tracing::info!(%user, %source, "API login failed");
                let _ = self.throttle.failed(source, Some(username));
                Ok(Login::Refused)
            }
            Err(e) => {
                tracing::warn!(%user, %source, error = %e, "API login refused unchecked");
                Ok(Login::Busy)
            }
        }
    }

    /// Checks a password of a known user's stored hash (an old password before a change).
    pub async fn matches(&self, stored: &str, password: &str) -> Result<bool, ApiError> {
        self.hasher.verify(Some(stored), password.as_bytes()).await.map_err(hash_error)
    }

    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        self.hasher.hash(password.as_bytes()).await.map_err(hash_error)
    }

    /// After a password change or a deletion.
    pub fn forget(&self, username: &str) {
        self.verified.forget(username);
    }
}

fn hash_error(e: HashError) -> ApiError {
    ApiError::new(code::UNKNOWN, e.to_string())
}
