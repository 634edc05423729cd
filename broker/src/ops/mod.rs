//! Operating the broker: the control service the sidecar talks to, the `$SYS` publisher, and the
//! plugins that switch features at runtime. They work on the node's shared parts (`Node`), never on a
//! connection.

pub mod control;
pub mod metrics_http;
mod node;
pub mod plugins;
pub mod recon;
mod reloader;
pub mod sys;

pub use node::Node;
pub use reloader::Reloader;
