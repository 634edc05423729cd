//! Midge's management sidecar: EMQ 2.x's `/api/v2` served from the live broker.
//!
//! A tour: [`startup`] builds the Rocket application; [`api`] has the routes, one module per concern;
//! [`link`] is the MQTT connection to the broker's control channel and `$SYS` tree; [`db`] keeps
//! admin users and the desired configuration in SQLite.

pub mod api;
mod auth;
mod body;
pub mod config;
mod credentials;
mod dashboard;
pub mod db;
pub mod desired;
mod error;
mod history;
mod http;
pub mod link;
mod passwords;
mod prometheus;
mod request_metrics;
pub mod startup;

use std::sync::Arc;

/// The state every route shares.
pub struct App {
    pub db: db::Db,
    pub link: Arc<link::Link>,
    pub desired: Arc<desired::Desired>,
    pub dashboard: Arc<dashboard::Dashboard>,
    pub history: Arc<history::History>,
    passwords: passwords::Passwords,
}
