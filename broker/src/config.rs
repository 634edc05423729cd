//! Configuration: defaults, then a TOML file, then `MIDGE_*` environment variables, then flags.
//!
//! Every key has one flag and one environment variable of the same name (`max_inflight` is
//! `--max-inflight` and `MIDGE_MAX_INFLIGHT`), so `--help` is the whole reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::auth::acl::Nomatch;
pub use crate::auth::Secret;
pub use crate::router::shared::SharedStrategy;
use crate::session::SessionLimits;
use crate::store::StoreConfig;
pub use crate::store::SyncPolicy;
use crate::transport::{ListenerConfig, ListenerKind};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub node: String,
    pub allow_anonymous: bool,
    pub users_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    pub acl_nomatch: Nomatch,
    pub cache_acl: bool,
    pub acl_cache_max_size: usize,
    pub acl_cache_ttl: u64,
    pub max_packet_size: usize,
    pub max_clientid_len: usize,
    pub max_connections: usize,
    pub connect_timeout: u64,
    /// Milliseconds a connection has nothing to do before it gives up its task and waits in the
    /// dormitory (0: never).
    pub dormant_after_ms: u64,
    pub auth_fail_burst: u32,
    pub session_expiry_interval: u64,
    pub max_inflight: usize,
    pub max_mqueue_len: usize,
    /// With persistence: queued messages of a kept session held in memory; the rest wait in the store.
    pub max_mqueue_in_memory: usize,
    pub mqueue_store_qos0: bool,
    pub max_awaiting_rel: usize,
    pub await_rel_timeout: u64,
    /// Topic aliases an MQTT 5 client may set up on its connection (0: none).
    pub max_topic_alias: u16,
    /// Which member of a shared subscription gets each message.
    pub shared_subscription_strategy: SharedStrategy,
    /// The keep-alive MQTT 5 clients are told to use instead of their own (0: theirs).
    pub server_keepalive: u16,
    /// Given to MQTT 5 clients that ask for response information (empty: none given).
    pub response_information: String,
    /// Topic aliases the broker uses on its way to one MQTT 5 client, at most as many as the client
    /// accepts (0: none).
    pub max_topic_alias_out: u16,
    pub sys_interval: u64,
    pub mgmt_username: String,
    #[serde(skip_serializing)]
    pub mgmt_secret: Option<Secret>,
    pub log_level: String,
    /// An `mqtt:ssl` listener here, with `certfile` and `keyfile`: the one-flag way to TLS.
    pub ssl_listen: Option<SocketAddr>,
    /// An `mqtt:ws` listener here, at `/mqtt`.
    pub ws_listen: Option<SocketAddr>,
    /// An `mqtt:wss` listener here, at `/mqtt`, with `certfile` and `keyfile`.
    pub wss_listen: Option<SocketAddr>,
    /// Serve this node's metrics and stats for Prometheus at `http://{metrics_listen}/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// The certificate chain and key (PEM) of the listeners opened by `*_listen`.
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// With it, those listeners take only clients with a certificate from this CA (PEM).
    pub cacertfile: Option<PathBuf>,
    /// Keep retained messages and persistent sessions on disk in `data_dir`, so they survive a
    /// restart or a crash. Off in
    /// `Config::default()` (an in-memory broker, as tests and embedders want); the `midge-broker`
    /// binary turns it on unless told otherwise.
    pub persistence: bool,
    pub data_dir: PathBuf,
    /// When the store's commits reach the disk, and so when what they hold is acknowledged.
    pub sync: SyncPolicy,
    /// Under `sync = interval`, how long changes gather before one commit.
    pub sync_interval_ms: u64,
    /// Listeners beyond the TCP one at `listen` (`[[listener]]` tables; a `tcp` one replaces it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listener: Vec<ListenerConfig>,
    /// NATS servers (`nats://host:port`) through which this node joins the others as one cluster;
    /// none: a single node.
    pub cluster: Vec<String>,
    /// What a clustered node does with a persistent session's connect while the cluster's registry
    /// of client ids cannot be reached.
    pub cluster_outage: ClusterOutage,
}

/// What a clustered node does with a persistent session's connect while the cluster's registry of
/// client ids cannot be reached (NATS away).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum ClusterOutage {
    /// Refuse it (CONNACK 3, MQTT 5 0x88 server unavailable): the session may be on another node.
    #[default]
    Refuse,
    /// Serve it from this node alone: the client id may then be in use on another node too.
    Local,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:1883".parse().expect("valid default address"),
            node: "midge@127.0.0.1".into(),
            allow_anonymous: true,
            users_file: None,
            acl_file: None,
            acl_nomatch: Nomatch::Allow,
            cache_acl: true,
            acl_cache_max_size: 32,
            acl_cache_ttl: 60,
            max_packet_size: 1024 * 1024,
            max_clientid_len: 1024,
            max_connections: 100_000,
            connect_timeout: 10,
            dormant_after_ms: 1000,
            auth_fail_burst: 10,
            session_expiry_interval: 7200,
            max_inflight: 32,
            max_mqueue_len: 1000,
            max_mqueue_in_memory: 1000,
            mqueue_store_qos0: true,
            max_awaiting_rel: 100,
            await_rel_timeout: 20,
            max_topic_alias: 100,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            server_keepalive: 0,
            response_information: String::new(),
            max_topic_alias_out: 0,
            sys_interval: 60,
            mgmt_username: "midge-mgmt".into(),
            mgmt_secret: None,
            log_level: "info".into(),
            ssl_listen: None,
            ws_listen: None,
            wss_listen: None,
            metrics_listen: None,
            certfile: None,
            keyfile: None,
            cacertfile: None,
            persistence: false,
            data_dir: PathBuf::from("data"),
            sync: SyncPolicy::Interval,
            sync_interval_ms: 10,
            listener: Vec::new(),
            cluster: Vec::new(),
            cluster_outage: ClusterOutage::Refuse,
        }
    }
}

impl Config {
    /// Every listener to open: the TCP one at `listen` (taking `max_connections` clients) unless a
    /// `[[listener]]` table is TCP itself, the `[[listener]]` tables, and those of `*_listen`.
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        let mut listeners = self.listener.clone();
        if !listeners.iter().any(|l| l.kind == ListenerKind::Tcp) {
            let tcp = ListenerConfig {
                max_clients: self.max_connections,
                ..ListenerConfig::new(ListenerKind::Tcp, self.listen)
            };
            listeners.insert(0, tcp);
        }
        if let Some(addr) = self.ssl_listen {
            listeners.push(self.tls_listener(ListenerKind::Ssl, addr));
        }
        if let Some(addr) = self.ws_listen {
            listeners.push(ListenerConfig::new(ListenerKind::Ws, addr));
        }
        if let Some(addr) = self.wss_listen {
            listeners.push(self.tls_listener(ListenerKind::Wss, addr));
        }
        listeners
    }

    /// A TLS listener from the flat keys: `cacertfile` means client certificates are required.
    fn tls_listener(&self, kind: ListenerKind, addr: SocketAddr) -> ListenerConfig {
        let verify = self.cacertfile.is_some();
        ListenerConfig {
            certfile: self.certfile.clone(),
            keyfile: self.keyfile.clone(),
            cacertfile: self.cacertfile.clone(),
            verify_peer: verify,
            fail_if_no_peer_cert: verify,
            ..ListenerConfig::new(kind, addr)
        }
    }

    /// How long an offline persistent 3.1/3.1.1 session is kept; `None`: until the broker stops.
    pub fn session_expiry(&self) -> Option<Duration> {
        (self.session_expiry_interval > 0).then(|| Duration::from_secs(self.session_expiry_interval))
    }

    /// Where and how to persist, if at all.
    pub fn store(&self) -> Option<StoreConfig> {
        self.persistence.then(|| StoreConfig {
            dir: self.data_dir.clone(),
            sync: self.sync,
            interval: Duration::from_millis(self.sync_interval_ms.max(1)),
        })
    }

    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            expiry: self.session_expiry(),
            max_inflight: self.max_inflight,
            max_mqueue_len: self.max_mqueue_len,
            mqueue_store_qos0: self.mqueue_store_qos0,
            max_awaiting_rel: self.max_awaiting_rel,
            await_rel_timeout: Duration::from_secs(self.await_rel_timeout),
            // The server gives it the store, if there is one.
            spill: None,
        }
    }

    /// Reads the command line (and the environment through it), then the file it names.
    pub fn from_args() -> Result<(Config, Option<Command>), ConfigError> {
        Cli::parse().into_config()
    }
}

/// The listeners that are off unless given an address; an empty one means off.
const OPTIONAL_LISTENERS: [&str; 4] = ["ssl_listen", "ws_listen", "wss_listen", "metrics_listen"];

/// A listener's address, or nothing for none.
fn listen_or_off(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Ok(String::new());
    }
    text.parse::<SocketAddr>().map(|_| text.to_string()).map_err(|e| format!("{e} (empty for no listener)"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config: {0}")]
    Invalid(#[from] toml::de::Error),
    #[error("cannot merge flags into config: {0}")]
    Merge(#[from] toml::ser::Error),
}

/// Midge MQTT broker.
///
/// Settings come from defaults, then the TOML file given by --config (keys as below, in snake_case),
/// then MIDGE_* environment variables, then flags.
#[derive(Debug, Parser, Serialize)]
#[command(name = "midge-broker", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "MIDGE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,

    /// Address of the MQTT/TCP listener [default: 0.0.0.0:1883]; port 0 picks a free port.
    #[arg(long, env = "MIDGE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,

    /// Node name that identifies this broker everywhere [default: midge@127.0.0.1].
    #[arg(long, env = "MIDGE_NODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,

    /// Let clients connect without a username [default: true].
    #[arg(long, env = "MIDGE_ALLOW_ANONYMOUS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_anonymous: Option<bool>,

    /// Users file: one `username:hash` a line, argon2 or bcrypt hashes (see `hash-password`).
    #[arg(long, env = "MIDGE_USERS_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    users_file: Option<PathBuf>,

    /// ACL file in EMQ's acl.conf syntax [default: EMQ's default rules].
    #[arg(long, env = "MIDGE_ACL_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    acl_file: Option<PathBuf>,

    /// What to do when no ACL rule matches: allow or deny [default: allow].
    #[arg(long, env = "MIDGE_ACL_NOMATCH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    acl_nomatch: Option<Nomatch>,

    /// Cache each client's publish ACL decisions [default: true].
    #[arg(long, env = "MIDGE_CACHE_ACL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_acl: Option<bool>,

    /// Most topics in one client's ACL cache [default: 32].
    #[arg(long, env = "MIDGE_ACL_CACHE_MAX_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    acl_cache_max_size: Option<usize>,

    /// Seconds an ACL cache entry lives [default: 60].
    #[arg(long, env = "MIDGE_ACL_CACHE_TTL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    acl_cache_ttl: Option<u64>,

    /// Largest packet accepted, in bytes; a larger one closes the connection [default: 1048576].
    #[arg(long, env = "MIDGE_MAX_PACKET_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_packet_size: Option<usize>,

    /// Longest client id accepted, in bytes [default: 1024].
    #[arg(long, env = "MIDGE_MAX_CLIENTID_LEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_clientid_len: Option<usize>,

    /// Most simultaneous connections on the TCP listener at --listen; more are refused [default: 100000].
    #[arg(long, env = "MIDGE_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,

    /// Seconds a new connection has to send CONNECT [default: 10].
    #[arg(long, env = "MIDGE_CONNECT_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_timeout: Option<u64>,

    /// Milliseconds a connection has nothing to do (no packet in or out) before it gives up its task
    /// and waits in the dormitory, woken by its socket, its outbox or its keep-alive; 0: never
    /// [default: 1000].
    #[arg(long, env = "MIDGE_DORMANT_AFTER_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    dormant_after_ms: Option<u64>,

    /// Failed logins one address may make at once (and per minute after that) before its CONNECTs are
    /// refused (CONNACK 4) without a password check for a while; a username gets twice as many. 0 turns
    /// throttling off [default: 10].
    #[arg(long, env = "MIDGE_AUTH_FAIL_BURST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_fail_burst: Option<u32>,

    /// Seconds an offline persistent session (clean session 0) is kept; 0 keeps it forever [default: 7200].
    #[arg(long, env = "MIDGE_SESSION_EXPIRY_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    session_expiry_interval: Option<u64>,

    /// QoS 1/2 messages in flight to one client before the rest queue [default: 32].
    #[arg(long, env = "MIDGE_MAX_INFLIGHT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_inflight: Option<usize>,

    /// Messages queued for one session; beyond it the oldest are dropped [default: 1000].
    #[arg(long, env = "MIDGE_MAX_MQUEUE_LEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_mqueue_len: Option<usize>,

    /// With persistence, queued messages of a kept session held in memory; beyond it they wait in the
    /// store and are read back as the queue drains [default: 1000].
    #[arg(long, env = "MIDGE_MAX_MQUEUE_IN_MEMORY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_mqueue_in_memory: Option<usize>,

    /// Queue QoS 0 messages for offline persistent sessions [default: true].
    #[arg(long, env = "MIDGE_MQUEUE_STORE_QOS0")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mqueue_store_qos0: Option<bool>,

    /// Incoming QoS 2 messages awaiting PUBREL per client; beyond it they are dropped [default: 100].
    #[arg(long, env = "MIDGE_MAX_AWAITING_REL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_awaiting_rel: Option<usize>,

    /// Seconds to wait for a PUBREL before forgetting the packet id [default: 20].
    #[arg(long, env = "MIDGE_AWAIT_REL_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    await_rel_timeout: Option<u64>,

    /// Topic aliases an MQTT 5 client may set up on its connection; 0 allows none [default: 100].
    #[arg(long, env = "MIDGE_MAX_TOPIC_ALIAS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_topic_alias: Option<u16>,

    /// Which member of a shared subscription ($share/{group}/..., $queue/...) gets each message
    /// [default: round_robin].
    #[arg(long, env = "MIDGE_SHARED_SUBSCRIPTION_STRATEGY", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_subscription_strategy: Option<SharedStrategy>,

    /// Keep-alive in seconds that MQTT 5 clients are told to use instead of their own; 0 leaves them
    /// theirs [default: 0].
    #[arg(long, env = "MIDGE_SERVER_KEEPALIVE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    server_keepalive: Option<u16>,

    /// Response information for MQTT 5 clients that ask for it (a topic prefix for their replies, by
    /// convention); empty gives none [default: empty].
    #[arg(long, env = "MIDGE_RESPONSE_INFORMATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    response_information: Option<String>,

    /// Topic aliases the broker uses on its way to one MQTT 5 client, within what the client accepts;
    /// 0 uses none [default: 0].
    #[arg(long, env = "MIDGE_MAX_TOPIC_ALIAS_OUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_topic_alias_out: Option<u16>,

    /// Keep retained messages and persistent sessions on disk in --data-dir, across restarts and
    /// crashes; false runs the broker in memory only [default: true].
    #[arg(long, env = "MIDGE_PERSISTENCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    persistence: Option<bool>,

    /// NATS servers to cluster through, comma-separated (nats://127.0.0.1:4222) [default: none, a
    /// single node].
    #[arg(long, env = "MIDGE_CLUSTER", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Vec<String>>,

    /// With NATS away, a persistent session's connect is refused (refuse: CONNACK 3 / 0x88, as its
    /// session may be on another node) or served by this node alone (local) [default: refuse].
    #[arg(long, env = "MIDGE_CLUSTER_OUTAGE", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_outage: Option<ClusterOutage>,

    /// Directory that holds the store (in its `store` subdirectory) [default: data].
    #[arg(long, env = "MIDGE_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,

    /// When the store's writes reach the disk: every_message (each acknowledged publish is synced
    /// first), interval (synced together every --sync-interval-ms, acknowledged after), none (synced
    /// once a second; a crash loses up to that) [default: interval].
    #[arg(long, env = "MIDGE_SYNC", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<SyncPolicy>,

    /// Milliseconds changes gather before one synced commit, under --sync interval [default: 10].
    #[arg(long, env = "MIDGE_SYNC_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_interval_ms: Option<u64>,

    /// Seconds between $SYS stats/metrics/uptime publishes; 0 turns them off [default: 60].
    #[arg(long, env = "MIDGE_SYS_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    sys_interval: Option<u64>,

    /// Username of the management principal (the sidecar) [default: midge-mgmt].
    #[arg(long, env = "MIDGE_MGMT_USERNAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mgmt_username: Option<String>,

    /// Shared secret of the management principal, at least 16 bytes; without it the control channel is closed.
    #[arg(long, env = "MIDGE_MGMT_SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mgmt_secret: Option<Secret>,

    /// Log filter, e.g. info, debug, midge_broker=trace [default: info].
    #[arg(long, env = "MIDGE_LOG_LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,

    /// Address of an MQTT/TLS listener (mqtt:ssl, usually port 8883), with --certfile and --keyfile.
    #[arg(long, env = "MIDGE_SSL_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(value_parser = listen_or_off)]
    ssl_listen: Option<String>,

    /// Address to serve this node's metrics and stats for Prometheus at (GET /metrics, no
    /// authentication: bind it to a private address); off by default.
    #[arg(long, env = "MIDGE_METRICS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(value_parser = listen_or_off)]
    metrics_listen: Option<String>,

    /// Address of an MQTT over WebSocket listener (mqtt:ws at /mqtt, usually port 8083).
    #[arg(long, env = "MIDGE_WS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(value_parser = listen_or_off)]
    ws_listen: Option<String>,

    /// Address of an MQTT over secure WebSocket listener (mqtt:wss at /mqtt, usually port 8084), with
    /// --certfile and --keyfile.
    #[arg(long, env = "MIDGE_WSS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(value_parser = listen_or_off)]
    wss_listen: Option<String>,

    /// Certificate chain (PEM) of the listeners opened by --*-listen.
    #[arg(long, env = "MIDGE_CERTFILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    certfile: Option<PathBuf>,

    /// Private key (PEM) of the listeners opened by --*-listen.
    #[arg(long, env = "MIDGE_KEYFILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    keyfile: Option<PathBuf>,

    /// CA (PEM) that the TLS listeners opened by --*-listen require client certificates from.
    #[arg(long, env = "MIDGE_CACERTFILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cacertfile: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Read a password from standard input and print its argon2id hash for the users file.
    HashPassword,
    /// Exit 0 if a broker answers MQTT CONNECT at ADDRESS (default: this config's listener, on
    /// loopback); for health checks.
    Probe {
        /// host:port to probe.
        address: Option<String>,
    },
}

impl Cli {
    fn into_config(self) -> Result<(Config, Option<Command>), ConfigError> {
        let mut table = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                text.parse::<toml::Table>()?
            }
            None => toml::Table::new(),
        };
        // Flags and environment (already folded together by clap) override the file key by key.
        table.extend(toml::Table::try_from(&self)?);
        // An empty address turns that listener off, from the file, the environment (compose files pass
        // `MIDGE_WS_LISTEN=` for "none") or a flag.
        for key in OPTIONAL_LISTENERS {
            if table.get(key).and_then(toml::Value::as_str) == Some("") {
                table.remove(key);
            }
        }
        // The binary keeps its state on disk unless told not to (the library's default is in memory).
        table.entry("persistence").or_insert(toml::Value::Boolean(true));
        let config = Config::deserialize(toml::Value::Table(table))?;
        Ok((config, self.command))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as `midge.toml` in a directory of this process's own: (the directory, the file).
    fn config_file(tag: &str, text: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("midge.toml");
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let (dir, file) =
            config_file("midge-config", "node = \"from-file@h\"\nmax_inflight = 7\nlisten = \"127.0.0.1:1\"\n");
        let cli = Cli::try_parse_from([
            "midge-broker",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--allow-anonymous",
            "false",
        ])
        .unwrap();
        let (config, _) = cli.into_config().unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.node, "from-file@h");
        assert_eq!(config.max_inflight, 7);
        assert!(!config.allow_anonymous);
        assert_eq!(config.max_mqueue_len, Config::default().max_mqueue_len);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn listener_tables_add_listeners_and_a_tcp_table_replaces_listen() {
        let text = r#"
            listen = "127.0.0.1:1883"
            [[listener]]
            kind = "ws"
            bind = "0.0.0.0:8083"
            max_clients = 500
            acceptors = 4
        "#;
        let config = Config::deserialize(toml::Value::Table(text.parse().unwrap())).unwrap();
        let listeners = config.listeners();
        assert_eq!(
            listeners.iter().map(|l| (l.kind, l.bind.port())).collect::<Vec<_>>(),
            [(ListenerKind::Tcp, 1883), (ListenerKind::Ws, 8083)]
        );
        assert_eq!((listeners[1].max_clients, listeners[1].acceptors, listeners[1].path.as_str()), (500, 4, "/mqtt"));
        assert_eq!(listeners[0].max_clients, config.max_connections);

        let text = "[[listener]]\nkind = \"tcp\"\nbind = \"0.0.0.0:2883\"\n";
        let config = Config::deserialize(toml::Value::Table(text.parse().unwrap())).unwrap();
        assert_eq!(config.listeners().iter().map(|l| l.bind.port()).collect::<Vec<_>>(), [2883]);

        let typo = "[[listener]]\nkind = \"tcp\"\nbind = \"0.0.0.0:2883\"\nmax_client = 5\n";
        assert!(Config::deserialize(toml::Value::Table(typo.parse().unwrap())).is_err());
        let limited = "[[listener]]\nkind = \"tcp\"\nbind = \"0.0.0.0:2883\"\nrate_limit = \"100KB,10KB\"\n";
        let config = Config::deserialize(toml::Value::Table(limited.parse().unwrap())).unwrap();
        let limit = config.listeners()[0].rate_limit.expect("a limit");
        assert_eq!((limit.burst, limit.rate), (100 * 1024, 10 * 1024));
        let wrong = "[[listener]]\nkind = \"tcp\"\nbind = \"0.0.0.0:2883\"\nrate_limit = \"fast\"\n";
        let error = Config::deserialize(toml::Value::Table(wrong.parse().unwrap())).unwrap_err();
        assert!(error.to_string().contains("BURST,RATE"), "{error}");
    }

    #[test]
    fn an_empty_address_turns_a_listener_off() {
        let (dir, file) = config_file("midge-config-off", "ws_listen = \"127.0.0.1:8083\"\nwss_listen = \"\"\n");
        let parse = |args: &[&str]| {
            let mut argv = vec!["midge-broker", "--config", file.to_str().unwrap()];
            argv.extend(args);
            Cli::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|cli| cli.into_config().map_err(|e| e.to_string()))
        };
        let (config, _) = parse(&[]).unwrap();
        assert_eq!((config.ws_listen, config.wss_listen), (Some("127.0.0.1:8083".parse().unwrap()), None));
        let (config, _) = parse(&["--ws-listen", "", "--ssl-listen", "127.0.0.1:8883"]).unwrap();
        assert_eq!((config.ws_listen, config.ssl_listen), (None, Some("127.0.0.1:8883".parse().unwrap())));
        let wrong = parse(&["--ws-listen", "8083"]).unwrap_err();
        assert!(wrong.contains("empty for no listener"), "{wrong}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let table: toml::Table = "no_such_key = 1".parse().unwrap();
        assert!(Config::deserialize(toml::Value::Table(table)).is_err());
    }
}
