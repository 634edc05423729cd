//! MQTT 5's enhanced authentication (§4.12): a CONNECT names a method, and client and server trade AUTH
//! packets until the method is satisfied or refuses. No method ships yet (SCRAM and JWT are the likely
//! first); the exchange is here, so adding one is implementing [`Method`] and registering it. A CONNECT
//! that names a method nobody registered gets CONNACK 0x8C (bad authentication method).

use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// An authentication method, by the name clients give it in CONNECT.
pub trait Method: Send + Sync {
    fn name(&self) -> &str;

    /// A new exchange with one client.
    fn start(&self) -> Box<dyn Exchange>;
}

/// One client's run through a method: each step takes the client's authentication data (CONNECT's
/// first, then each AUTH's) and says what comes next.
pub trait Exchange: Send {
    fn step(&mut self, data: Option<&[u8]>) -> Step;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this in an AUTH (0x18, continue) and wait for the client's answer.
    Continue(Bytes),
    /// Authenticated: as `username` if the method names one (the ACL sees it), with `data` for the
    /// CONNACK.
    Done { username: Option<String>, data: Option<Bytes> },
    /// Not authenticated: CONNACK 0x87.
    Refused,
}

/// The methods this broker knows; empty unless something registers one.
#[derive(Default)]
pub struct Methods(RwLock<Vec<Arc<dyn Method>>>);

impl Methods {
    /// Adds a method, or replaces the one of the same name.
    pub fn register(&self, method: Arc<dyn Method>) {
        let mut methods = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        methods.retain(|m| m.name() != method.name());
        methods.push(method);
    }

    pub fn find(&self, name: &str) -> Option<Arc<dyn Method>> {
        let methods = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        methods.iter().find(|m| m.name() == name).cloned()
    }
}
