//! The `$SYS/brokers/{node}/...` tree: the periodic publisher, presence events and node facts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Local;
use midge_shared::control::{NodeInfo, ShutdownCounts};
use midge_shared::sys::{uptime_text, ClientConnected, ClientDisconnected, Stat};
use midge_shared::topics;

use super::node::Node;
use crate::protocol::QoS;
use crate::session::Message;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const SYSDESCR: &str = "Midge MQTT Broker";

pub fn message(topic: String, payload: impl Into<Bytes>, retain: bool) -> Arc<Message> {
    Arc::new(Message::new(Bytes::from(topic), payload.into(), QoS::AtMostOnce, retain))
}

/// Publishes `$SYS/brokers`, version and sysdescr (retained) at once, then uptime and datetime every
/// second and everything else every `sys_interval` seconds, until shutdown.
pub async fn run(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut nodes = node.cluster.nodes();
    publish_identity(&node);
    let mut since_full = 0u64;
    loop {
        let nodes_changed = async {
            match &mut nodes {
                Some(nodes) => nodes.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            true = nodes_changed => {
                publish_brokers(&node);
                continue;
            }
            _ = ticker.tick() => {}
        }
        let interval = node.settings.sys_interval();
        if interval == 0 {
            continue;
        }
        publish_clock(&node);
        since_full += 1;
        if since_full >= interval {
            since_full = 0;
            publish_identity(&node);
            publish_counters(&node);
        }
    }
}

fn send(node: &Node, message: Arc<Message>) {
    node.router.publish(message);
}

/// `$SYS/brokers`: the live nodes' names, comma-separated, as EMQ has them.
fn publish_brokers(node: &Node) {
    let nodes = match node.cluster.nodes() {
        Some(nodes) => nodes.borrow().join(","),
        None => node.name.clone(),
    };
    send(node, message(topics::SYS_BROKERS.into(), nodes, true));
}

fn publish_identity(node: &Node) {
    let name = &node.name;
    publish_brokers(node);
    send(node, message(topics::node_topic(name, "version"), VERSION, true));
    send(node, message(topics::node_topic(name, "sysdescr"), SYSDESCR, true));
}

fn publish_clock(node: &Node) {
    let name = &node.name;
    send(node, message(topics::node_topic(name, "uptime"), uptime(node), false));
    send(node, message(topics::node_topic(name, "datetime"), datetime(), false));
}

fn publish_counters(node: &Node) {
    let name = &node.name;
    for (key, value) in node.stats.snapshot() {
        send(node, message(topics::node_topic(name, &format!("stats/{key}")), value.to_string(), false));
    }
    for (metric, value) in node.metrics.snapshot() {
        let topic = topics::node_topic(name, &format!("metrics/{}", metric.name()));
        send(node, message(topic, value.to_string(), false));
    }
    for listener in &node.listeners {
        // `listeners/mqtt:ssl/8883/current_clients`: the port tells two listeners of a kind apart.
        let prefix = format!("listeners/{}/{}", listener.protocol, listener.addr.port());
        let clients = listener.clients().to_string();
        send(node, message(topics::node_topic(name, &format!("{prefix}/current_clients")), clients, false));
        let shutdowns = ShutdownCounts(listener.shutdowns());
        let shutdowns = serde_json::to_string(&shutdowns).unwrap_or_default();
        send(node, message(topics::node_topic(name, &format!("{prefix}/shutdown_count")), shutdowns, false));
    }
}

pub fn uptime(node: &Node) -> String {
    uptime_text(node.started.elapsed().as_secs())
}

pub fn datetime() -> String {
    Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `$SYS/brokers/{node}/clients/{id}/connected`.
pub fn connected_event(node: &str, event: &ClientConnected) -> Arc<Message> {
    let payload = serde_json::to_vec(event).unwrap_or_default();
    message(topics::client_event(node, &event.clientid, "connected"), payload, false)
}

/// `$SYS/brokers/{node}/clients/{id}/disconnected`.
pub fn disconnected_event(node: &str, event: &ClientDisconnected) -> Arc<Message> {
    let payload = serde_json::to_vec(event).unwrap_or_default();
    message(topics::client_event(node, &event.clientid, "disconnected"), payload, false)
}

/// The facts `management/nodes` and `monitoring/nodes` show.
///
/// `memory_total` and `memory_used` are the broker's own heap, as EMQ's are the Erlang VM's allocated and
/// used memory: what the allocator holds from the system for it, and what of that is in live allocations.
/// `process_available` / `process_used` stand for EMQ's Erlang process limit and count: the most client
/// connections served at once (each one task), and the tasks alive in the broker's runtime now, with the
/// connections resting in the dormitory (each a task put aside, as a hibernating Erlang process is still
/// a process). See docs/monitoring.md.
pub fn node_info(node: &Node) -> NodeInfo {
    let (load1, load5, load15) = load_average();
    let memory = heap();
    NodeInfo {
        name: node.name.clone(),
        version: VERSION.into(),
        sysdescr: SYSDESCR.into(),
        uptime: uptime(node),
        datetime: datetime(),
        otp_release: format!("midge/{VERSION}"),
        node_status: "Running".into(),
        memory_total: megabytes(memory.allocated),
        memory_used: megabytes(memory.used),
        process_available: node.max_connections as u64,
        process_used: tokio::runtime::Handle::current().metrics().num_alive_tasks() as u64
            + node.dormitory.sleeping() as u64,
        max_fds: max_open_files(),
        clients: node.stats.count(Stat::Clients),
        load1,
        load5,
        load15,
        control_version: midge_shared::control::VERSION,
    }
}

/// EMQ's memory text: `"50.55M"`.
fn megabytes(bytes: u64) -> String {
    format!("{:.2}M", bytes as f64 / (1024.0 * 1024.0))
}

/// The broker's heap, in bytes.
pub struct Heap {
    /// Held from the system by the allocator: in use, free for reuse, and large blocks mapped alone.
    pub allocated: u64,
    /// In live allocations.
    pub used: u64,
}

/// glibc's own account of its heap (`mallinfo2`, summed over every arena). It walks the free lists
/// under each arena's lock, so it is for the occasional API call, never the message path.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap() -> Heap {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's state under its own locks.
    let info = unsafe { libc::mallinfo2() };
    Heap { allocated: (info.arena + info.hblkhd) as u64, used: (info.uordblks + info.hblkhd) as u64 }
}

/// Elsewhere the allocator keeps no such account: the resident set stands for both.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap() -> Heap {
    // Second field of statm: resident pages.
    let resident = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096);
    Heap { allocated: resident, used: resident }
}

fn load_average() -> (String, String, String) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(str::to_string);
    let mut next = || fields.next().unwrap_or_else(|| "0.00".into());
    (next(), next(), next())
}

fn max_open_files() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<u64>().ok()
        })
        .unwrap_or(0)
}
