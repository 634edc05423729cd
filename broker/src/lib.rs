//! Midge, an MQTT 3.1 / 3.1.1 broker.
//!
//! A tour: [`server`] binds and accepts; each connection runs in [`client`], framing bytes through
//! [`connection`] and [`codec`]; the [`router`], behind one lock, owns subscriptions ([`subscriptions`]),
//! offline [`session`]s and retained messages. [`acl`] and [`auth`] decide who may do what; [`config`]
//! gathers settings and [`settings`] holds those that change at runtime. [`sys`] publishes the `$SYS`
//! tree from [`metrics`]; [`control`] answers the management sidecar; [`plugins`] switch features. See docs/architecture.md for why it is shaped this way.

pub mod acl;
pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod control;
pub mod metrics;
pub mod plugins;
pub mod probe;
pub mod router;
pub mod server;
pub mod session;
pub mod settings;
pub mod subscriptions;
pub mod sys;
pub mod topic;

pub use config::Config;
pub use server::{runtime, Broker, StartError};
