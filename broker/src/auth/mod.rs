//! Who a client is: the management principal (by its shared secret), a user of the users file or of an
//! auth plugin (argon2 or bcrypt hashes), or an anonymous client.
//!
//! Password checks run on the bounded workers of `midge-passwords` (reused memory, a queue with a limit),
//! an unknown user is checked against a dummy hash so that timing does not tell which usernames exist,
//! and repeated failures from one address or for one name are refused without a check for a while.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use midge_passwords::{HashError, Hasher, Throttle};
use subtle::ConstantTimeEq;

use crate::protocol::{Connect, ConnectReturnCode};

pub mod acl;
mod credentials;
pub mod enhanced;
mod secret;
mod users;

pub use credentials::PluginCredentials;
pub use midge_passwords::is_password_hash;
pub use secret::Secret;
pub use users::{AuthError, Users};

/// Who a client turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// An ordinary client, subject to the ACL.
    Client,
    /// The management sidecar: may use the control topics, and is not subject to the ACL.
    Management,
}

/// Who may log in as the management principal.
#[derive(Debug, Clone)]
pub struct Management {
    pub username: String,
    /// `None`: the control channel is closed, nobody is the management principal.
    pub secret: Option<Secret>,
}

/// Everything that decides who a client is.
pub struct Authenticator {
    pub management: Management,
    /// The users file, replaced whole when the reloader reads it again.
    pub users: Arc<ArcSwapOption<Users>>,
    /// The auth plugins' credentials, as the plugins set them.
    pub plugins: Arc<PluginCredentials>,
    pub hasher: Hasher,
    pub throttle: Throttle,
    /// MQTT 5's enhanced authentication methods (none by default).
    pub methods: enhanced::Methods,
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
        connect: &Connect,
        source: IpAddr,
        allow_anonymous: bool,
    ) -> Result<Principal, ConnectReturnCode> {
        use ConnectReturnCode::{BadUsernameOrPassword, NotAuthorized};
        let password = connect.password.as_deref().unwrap_or_default();
        let by_username = self.plugins.by_username();
        if let Some(username) = connect.username.as_deref() {
            if username == self.management.username {
                // Throttled per source only: per username, anyone could lock the sidecar out, and a
                // secret of 16 bytes or more is not guessed at any rate a throttle would let through.
                self.throttled(source, None)?;
                let secret = self.management.secret.as_ref().map(|s| s.expose().as_bytes());
                return match secret {
                    Some(secret) if bool::from(secret.ct_eq(password)) => Ok(Principal::Management),
                    _ => Err(self.failed(source, None)),
                };
            }
            let from_file = self.users.load();
            if let Some(users) = from_file.as_deref().filter(|u| u.contains(username)) {
                return self.check(source, username, users.hash_of(username), password).await;
            }
            if let Some(users) = by_username.as_ref().filter(|u| u.contains(username)) {
                return self.check(source, username, users.hash_of(username), password).await;
            }
        }
        if let Some(users) = self.plugins.by_clientid().filter(|u| u.contains(&connect.client_id)) {
            return self.check(source, &connect.client_id, users.hash_of(&connect.client_id), password).await;
        }
        if let Some(username) = connect.username.as_deref() {
            if self.users.load().is_some() || by_username.is_some() {
                // Spend a verification's time so that unknown names cannot be told from wrong passwords.
                self.check(source, username, None, password).await?;
                return Err(BadUsernameOrPassword);
            }
        }
        if allow_anonymous {
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
