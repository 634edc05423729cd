//! The wire contract between `midge-broker` and `midge-mgmt`.
//!
//! Everything the two processes say to each other crosses MQTT; this crate names the topics and the
//! serde types of every payload, so neither side builds JSON by hand.

pub mod calls;
pub mod control;
pub mod prometheus;
pub mod sys;
pub mod topics;
