//! Counters (EMQ's metrics) and gauges with high-water marks (EMQ's stats), as plain atomics: counting a
//! packet is one relaxed add, never a lock.
//!
//! The counters are sharded by thread. Every message bumps a dozen of them; shared by all worker
//! threads, their cache lines bounced between cores on every packet, which cost fan-in QoS 1 about an
//! eighth of its throughput. Each thread now adds to a shard of its own and a read sums the shards.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub use midge_shared::sys::{Metric, Stat};

use crate::protocol::{Packet, QoS};

/// The size of one connection's task (its `serve` future), noted at each connection for `emq_recon`:
/// fixed when the broker is built, but only known once one exists.
pub static CONNECTION_TASK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// More than a 2-core machine's worker threads and the few others that count; threads beyond this
/// share shards, which is still correct, only slower.
const SHARDS: usize = 8;

/// One thread's counters, on cache lines of their own (128 bytes covers adjacent-line prefetch).
#[repr(align(128))]
struct Shard([AtomicU64; Metric::COUNT]);

pub struct Metrics {
    shards: Box<[Shard; SHARDS]>,
}

impl Default for Metrics {
    fn default() -> Self {
        let shard = || Shard(std::array::from_fn(|_| AtomicU64::new(0)));
        Metrics { shards: Box::new(std::array::from_fn(|_| shard())) }
    }
}

/// This thread's shard, handed out round-robin as threads first count.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|index| *index)
}

impl Metrics {
    pub fn inc(&self, metric: Metric) {
        self.add(metric, 1);
    }

    pub fn add(&self, metric: Metric, n: u64) {
        self.shards[shard_index()].0[metric as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// For a metric that is a level rather than a count (`messages/retained`): it is only ever set,
    /// never added to, so it lives in the first shard alone.
    pub fn set(&self, metric: Metric, value: u64) {
        self.shards[0].0[metric as usize].store(value, Ordering::Relaxed);
    }

    pub fn get(&self, metric: Metric) -> u64 {
        self.shards.iter().map(|shard| shard.0[metric as usize].load(Ordering::Relaxed)).sum()
    }

    pub fn snapshot(&self) -> Vec<(Metric, u64)> {
        Metric::ALL.iter().map(|m| (*m, self.get(*m))).collect()
    }

    /// Counts a packet read from a client, `size` bytes on the wire.
    pub fn packet_received(&self, packet: &Packet, size: usize) {
        self.add(Metric::BytesReceived, size as u64);
        self.inc(Metric::PacketsReceived);
        let specific = match packet {
            Packet::Connect(_) => Metric::PacketsConnect,
            Packet::Disconnect(_) => Metric::PacketsDisconnect,
            Packet::Pingreq => Metric::PacketsPingreq,
            Packet::Subscribe(_) => Metric::PacketsSubscribe,
            Packet::Unsubscribe(_) => Metric::PacketsUnsubscribe,
            Packet::Publish(p) => {
                self.inc(Metric::MessagesReceived);
                self.inc(match p.qos {
                    QoS::AtMostOnce => Metric::MessagesQos0Received,
                    QoS::AtLeastOnce => Metric::MessagesQos1Received,
                    QoS::ExactlyOnce => Metric::MessagesQos2Received,
                });
                Metric::PacketsPublishReceived
            }
            Packet::Puback(_) => Metric::PacketsPubackReceived,
            Packet::Pubrec(_) => Metric::PacketsPubrecReceived,
            Packet::Pubrel(_) => Metric::PacketsPubrelReceived,
            Packet::Pubcomp(_) => Metric::PacketsPubcompReceived,
            // Server-to-client packets from a client end the connection; the totals above still count them.
            Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => return,
            // EMQ 2.x has no AUTH packet and so no metric of its own for it.
            Packet::Auth(_) => return,
        };
        self.inc(specific);
    }

    /// Counts a CONNECT of `size` bytes (once its sender is known: the sidecar's counts in nothing).
    pub fn connect_received(&self, size: usize) {
        self.add(Metric::BytesReceived, size as u64);
        self.inc(Metric::PacketsReceived);
        self.inc(Metric::PacketsConnect);
    }

    /// Counts a packet written to a client, `size` bytes on the wire.
    pub fn packet_sent(&self, packet: &Packet, size: usize) {
        self.add(Metric::BytesSent, size as u64);
        self.inc(Metric::PacketsSent);
        let specific = match packet {
            Packet::Connack(_) => Metric::PacketsConnack,
            Packet::Pingresp => Metric::PacketsPingresp,
            Packet::Suback(_) => Metric::PacketsSuback,
            Packet::Unsuback(_) => Metric::PacketsUnsuback,
            Packet::Publish(p) => {
                self.inc(Metric::MessagesSent);
                self.inc(match p.qos {
                    QoS::AtMostOnce => Metric::MessagesQos0Sent,
                    QoS::AtLeastOnce => Metric::MessagesQos1Sent,
                    QoS::ExactlyOnce => Metric::MessagesQos2Sent,
                });
                Metric::PacketsPublishSent
            }
            Packet::Puback(_) => Metric::PacketsPubackSent,
            Packet::Pubrec(_) => Metric::PacketsPubrecSent,
            Packet::Pubrel(_) => Metric::PacketsPubrelSent,
            Packet::Pubcomp(_) => Metric::PacketsPubcompSent,
            Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::Pingreq
            | Packet::Disconnect(_)
            | Packet::Auth(_) => return,
        };
        self.inc(specific);
    }
}

/// A gauge and its high-water mark.
#[derive(Default)]
struct Gauge {
    count: AtomicU64,
    max: AtomicU64,
}

#[derive(Default)]
pub struct Stats {
    gauges: [Gauge; Stat::COUNT],
}

impl Stats {
    pub fn set(&self, stat: Stat, value: u64) {
        let gauge = &self.gauges[stat as usize];
        gauge.count.store(value, Ordering::Relaxed);
        gauge.max.fetch_max(value, Ordering::Relaxed);
    }

    pub fn count(&self, stat: Stat) -> u64 {
        self.gauges[stat as usize].count.load(Ordering::Relaxed)
    }

    pub fn max(&self, stat: Stat) -> u64 {
        self.gauges[stat as usize].max.load(Ordering::Relaxed)
    }

    /// `("clients/count", n), ("clients/max", m), ...` in EMQ's key form.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        Stat::ALL
            .iter()
            .flat_map(|s| {
                [(format!("{}/count", s.name()), self.count(*s)), (format!("{}/max", s.name()), self.max(*s))]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..2 * SHARDS)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        metrics.inc(Metric::MessagesReceived);
                    }
                    metrics.add(Metric::BytesReceived, 7);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(metrics.get(Metric::MessagesReceived), 2000 * SHARDS as u64);
        assert_eq!(metrics.get(Metric::BytesReceived), 14 * SHARDS as u64);
        metrics.set(Metric::MessagesRetained, 3);
        metrics.set(Metric::MessagesRetained, 2);
        assert_eq!(metrics.get(Metric::MessagesRetained), 2);
    }

    #[test]
    fn stats_keep_the_high_water_mark() {
        let stats = Stats::default();
        stats.set(Stat::Clients, 5);
        stats.set(Stat::Clients, 2);
        assert_eq!((stats.count(Stat::Clients), stats.max(Stat::Clients)), (2, 5));
        assert!(stats.snapshot().contains(&("clients/max".to_string(), 5)));
    }
}
