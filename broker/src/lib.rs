//! Midge, an MQTT 3.1 / 3.1.1 broker.
//!
//! A tour: [`server`] binds the listeners and accepts; [`transport`] sets each connection up (TLS,
//! WebSocket, PROXY header) and frames its bytes through the [`protocol`] codec; each connection runs in
//! [`client`]; the [`router`] owns subscriptions, offline [`session`]s and retained messages; [`auth`]
//! decides who may do what; [`config`] gathers settings and [`settings`] holds those that change at
//! runtime; [`ops`] publishes the `$SYS` tree from [`metrics`], answers the management sidecar and
//! switches plugins; [`store`] keeps what must survive a restart on disk; [`cluster`] joins other nodes
//! through NATS. See docs/architecture.md for why it is shaped this way.

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod context;
pub mod dormitory;
pub mod metrics;
pub mod ops;
pub mod probe;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod settings;
pub mod store;
pub mod transport;

pub use config::Config;
pub use server::{runtime, Broker, StartError};
pub use transport::{ListenerConfig, ListenerKind};
