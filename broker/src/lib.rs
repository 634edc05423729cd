//! Midge, an MQTT 3.1 / 3.1.1 broker.
//!
//! A tour: [`server`] binds and accepts; each connection runs in [`client`], framing bytes through
//! [`connection`] and [`codec`]; the [`router`], behind one lock, owns subscriptions ([`subscriptions`]),
//! offline [`session`]s and retained messages. [`acl`] and [`auth`] decide who may do what; [`config`]
//! gathers settings and [`settings`] holds those that change at runtime. [`sys`] publishes the `$SYS`
//! tree from [`metrics`]; [`control`] answers the management sidecar; [`plugins`] switch features. See docs/architecture.md for why it is shaped this way.

pub mod auth;
pub mod client;
pub mod config;
pub mod context;
pub mod metrics;
pub mod ops;
pub mod probe;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod settings;
pub mod transport;

pub use config::Config;
pub use server::{runtime, Broker, StartError};
