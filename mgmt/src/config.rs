//! The sidecar's settings, from flags or `MIDGE_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Midge management sidecar: EMQ 2.x /api/v2 over the broker's control channel.
#[derive(Debug, Clone, Parser)]
#[command(name = "midge-mgmt", version)]
pub struct Config {
    /// HTTP listener; port 0 picks a free port.
    #[arg(long, env = "MIDGE_MGMT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// The broker's MQTT address (host:port; a host name such as a compose service works). Several,
    /// comma-separated, for a cluster: the sidecar uses the first that answers and moves on to the
    /// next when it loses it.
    #[arg(long, env = "MIDGE_BROKER", default_value = "127.0.0.1:1883")]
    pub broker: String,

    /// SQLite database file (created if missing).
    #[arg(long, env = "MIDGE_MGMT_DB", default_value = "midge-mgmt.db")]
    pub db: PathBuf,

    /// Username of the management principal on the broker.
    #[arg(long, env = "MIDGE_MGMT_USERNAME", default_value = "midge-mgmt")]
    pub mgmt_username: String,

    /// Shared secret of the management principal (the broker reads the same variable); at least 16 bytes.
    #[arg(long, env = "MIDGE_MGMT_SECRET", hide_env_values = true)]
    pub mgmt_secret: Option<String>,

    /// Password of the `admin` user created on first start [default: public, with a warning].
    #[arg(long, env = "MIDGE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Milliseconds to wait for a broker's reply before answering 101.
    #[arg(long, env = "MIDGE_MGMT_REQUEST_TIMEOUT_MS", default_value_t = 2000)]
    pub request_timeout_ms: u64,

    /// Seconds a client has to send a request's head, and then its body; a connection idle this long
    /// between requests is closed too.
    #[arg(long, env = "MIDGE_MGMT_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub http_request_timeout_ms: u64,

    /// Most HTTP connections at once; at the cap a new one replaces the connection waiting longest for
    /// a request.
    #[arg(long, env = "MIDGE_MGMT_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// Failed logins one address may make at once (and per minute after that) before its logins are
    /// refused unchecked for a while; a username gets twice as many. 0 turns throttling off.
    #[arg(long, env = "MIDGE_MGMT_AUTH_FAIL_BURST", default_value_t = 10)]
    pub auth_fail_burst: u32,

    /// Milliseconds between two checks that each listed node still answers; one that does not is no
    /// longer listed (its routes answer 101 at once instead of after the request timeout).
    #[arg(long, env = "MIDGE_MGMT_HEARTBEAT_MS", default_value_t = 5000)]
    pub heartbeat_ms: u64,

    /// The dashboard's own port (emq_dashboard; it is also served at / of --listen), or `off`.
    #[arg(long, env = "MIDGE_DASHBOARD_LISTEN", default_value = "0.0.0.0:18083", value_parser = listen_or_off)]
    pub dashboard_listen: Listen,

    /// Milliseconds between two samples of each node's figures for the dashboard's charts (120 are kept).
    #[arg(long, env = "MIDGE_MGMT_HISTORY_INTERVAL_MS", default_value_t = 5000)]
    pub history_interval_ms: u64,

    /// Log filter, e.g. info or debug.
    #[arg(long, env = "MIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 if this sidecar answers GET /status on its listener (via loopback) and a broker has answered
    /// it within --max-silence seconds; for health checks.
    Healthcheck {
        /// Seconds without an answer from any broker after which the sidecar counts as unhealthy.
        #[arg(long, default_value_t = 30)]
        max_silence: u64,
    },
}

/// An address to listen on, or none (`off`).
pub type Listen = Option<SocketAddr>;

fn listen_or_off(value: &str) -> Result<Listen, String> {
    match value {
        "off" | "" => Ok(None),
        _ => value.parse().map(Some).map_err(|e| format!("{value}: {e} (an address such as 0.0.0.0:18083, or off)")),
    }
}

impl Config {
    pub fn history_interval(&self) -> Duration {
        Duration::from_millis(self.history_interval_ms.max(100))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(100))
    }

    /// `(host, port)` of each broker, in the order given.
    pub fn brokers(&self) -> Result<Vec<(String, u16)>, String> {
        self.broker
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(host_port)
            .collect::<Result<Vec<_>, _>>()
            .and_then(
                |brokers| if brokers.is_empty() { Err("--broker names no broker".to_string()) } else { Ok(brokers) },
            )
    }
}

fn host_port(broker: &str) -> Result<(String, u16), String> {
    let (host, port) = broker.rsplit_once(':').ok_or_else(|| format!("--broker {broker} is not host:port"))?;
    let port = port.parse().map_err(|_| format!("--broker {broker} has a bad port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn several_brokers_in_order() {
        let config = Config::parse_from(["midge-mgmt", "--broker", "a:1883, [::1]:1884,b:1"]);
        let want = [("a".to_string(), 1883), ("::1".to_string(), 1884), ("b".to_string(), 1)];
        assert_eq!(config.brokers().unwrap(), want);
        assert!(Config::parse_from(["midge-mgmt", "--broker", "a"]).brokers().is_err());
        assert!(Config::parse_from(["midge-mgmt", "--broker", ","]).brokers().is_err());
    }
}
