//! The auth plugins' credentials (`emq_auth_username`, `emq_auth_clientid`): set by the plugins as they
//! are configured and switched, read by authentication on every CONNECT without a lock.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::users::Users;

/// `None` for a plugin that is off.
#[derive(Default)]
pub struct PluginCredentials {
    by_username: ArcSwapOption<Users>,
    by_clientid: ArcSwapOption<Users>,
}

impl PluginCredentials {
    pub fn by_username(&self) -> Option<Arc<Users>> {
        self.by_username.load_full()
    }

    pub fn by_clientid(&self) -> Option<Arc<Users>> {
        self.by_clientid.load_full()
    }

    pub fn set_by_username(&self, users: Option<Users>) {
        self.by_username.store(users.map(Arc::new));
    }

    pub fn set_by_clientid(&self, users: Option<Users>) {
        self.by_clientid.store(users.map(Arc::new));
    }
}
