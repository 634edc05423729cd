//! Point-to-point latency at a low rate, interleaved: every broker is measured in alternating short
//! rounds over the same span of time, so a second in which the machine is busier than the next (a VM's
//! neighbours, the host's timers) falls on both brokers alike. A single run per broker, one after the
//! other, moved medians by ±15 µs between repeats, more than the difference being measured.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use midge_broker::protocol::{self, Ack, Packet, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::mqtt::{drain_in_background, histogram, probe, sent_at, Conn, Writer};
use crate::scenarios::Target;

/// One broker's figures over all rounds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub samples: u64,
    /// The median of each round, in order.
    pub round_p50s: Vec<u64>,
    /// p10, p25, p50, p75, p90 of all rounds, for the shape of the distribution.
    pub spread: [u64; 5],
}

/// Two-sided exact sign test over paired rounds: how likely a split at least as uneven as `a` rounds
/// to `b` would be if each broker were as likely as the other to have the lower round median. A small
/// value says the difference is real; a large one, that these rounds cannot tell the brokers apart.
pub fn sign_test(a: usize, b: usize) -> f64 {
    let n = a + b;
    let mut binomial = 1.0f64; // C(n, 0)
    let mut tail = 0.0;
    for i in 0..=a.min(b) {
        if i > 0 {
            binomial = binomial * (n - i + 1) as f64 / i as f64;
        }
        tail += binomial;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

/// A publisher and a subscriber on one broker, kept for the whole measurement.
struct Probe {
    writer: Writer,
    wbuf: BytesMut,
    topic: Bytes,
    /// The round the subscriber files its samples under.
    round: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    subscriber: JoinHandle<Vec<Histogram<u64>>>,
}

const TOPIC: &str = "bench/latency/0";
/// Long enough for the last message of a round to arrive before the next round starts.
const GAP: Duration = Duration::from_millis(50);

/// Measures every target in `rounds` alternating rounds of `round_time` at `rate` messages/s.
pub async fn interleaved(
    targets: &[Target],
    qos: QoS,
    rate: f64,
    rounds: usize,
    round_time: Duration,
) -> anyhow::Result<Vec<Latency>> {
    let epoch = Instant::now();
    let mut probes = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        probes.push(Probe::connect(target, i, qos, rounds, epoch).await?);
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut pkid: u16 = 0;
    for round in 0..rounds {
        for probe in probes.iter_mut() {
            probe.round.store(round, Ordering::Release);
            let started = Instant::now();
            let mut next = tokio::time::Instant::now();
            while started.elapsed() < round_time {
                tokio::time::sleep_until(next).await;
                pkid = pkid.checked_add(1).unwrap_or(1);
                probe.publish(qos, pkid, epoch).await?;
                // Evenly spaced, never in bursts: `tokio::time::interval` treats a tick up to 5 ms
                // late as on time and fires the next one at once to catch up, so with its 1 ms timer
                // a sixth of the probes went out in pairs, and the second of a pair measured
                // queueing behind the first rather than the broker's path.
                next = (next + period).max(tokio::time::Instant::now() + period / 2);
            }
            tokio::time::sleep(GAP).await;
        }
    }
    let mut results = Vec::new();
    for probe in probes {
        results.push(probe.finish().await?);
    }
    Ok(results)
}

impl Probe {
    async fn connect(target: &Target, index: usize, qos: QoS, rounds: usize, epoch: Instant) -> anyhow::Result<Probe> {
        let mut subscriber = Conn::connect(&target.endpoint, &format!("bench-lat-sub-{index}"), 300).await?;
        subscriber.subscribe("bench/latency/+", qos).await?;
        let publisher = Conn::connect(target.publish_endpoint(), &format!("bench-lat-pub-{index}"), 300).await?;
        let Conn { reader, writer, wbuf, .. } = publisher;
        drain_in_background(reader);
        let round = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel();
        let subscriber = tokio::spawn(record(subscriber, round.clone(), rounds, epoch, stopped));
        Ok(Probe { writer, wbuf, topic: Bytes::from_static(TOPIC.as_bytes()), round, stop, subscriber })
    }

    async fn publish(&mut self, qos: QoS, pkid: u16, epoch: Instant) -> anyhow::Result<()> {
        let sent = epoch.elapsed().as_nanos() as u64;
        protocol::encode(&probe(self.topic.clone(), qos, pkid, sent), Protocol::V311, &mut self.wbuf);
        self.writer.write_all(&self.wbuf).await.context("publish")?;
        self.writer.flush().await.context("publish")?;
        self.wbuf.clear();
        Ok(())
    }

    async fn finish(self) -> anyhow::Result<Latency> {
        let _ = self.stop.send(());
        let per_round = self.subscriber.await?;
        let mut all = histogram();
        for round in &per_round {
            all.add(round)?;
        }
        Ok(Latency {
            p50_us: all.value_at_quantile(0.50),
            p99_us: all.value_at_quantile(0.99),
            samples: all.len(),
            round_p50s: per_round.iter().map(|h| h.value_at_quantile(0.50)).collect(),
            spread: [0.10, 0.25, 0.50, 0.75, 0.90].map(|q| all.value_at_quantile(q)),
        })
    }
}

/// Reads publishes until stopped, acknowledging QoS 1, and files each latency under the current round.
async fn record(
    mut conn: Conn,
    round: Arc<AtomicUsize>,
    rounds: usize,
    epoch: Instant,
    mut stopped: oneshot::Receiver<()>,
) -> Vec<Histogram<u64>> {
    let mut hists: Vec<Histogram<u64>> = (0..rounds).map(|_| histogram()).collect();
    loop {
        tokio::select! {
            _ = &mut stopped => return hists,
            read = conn.reader.read_buf(&mut conn.rbuf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return hists;
                }
            }
        }
        let now = epoch.elapsed().as_nanos() as u64;
        let hist = &mut hists[round.load(Ordering::Acquire).min(rounds - 1)];
        while let Ok(Some(packet)) = protocol::decode(&mut conn.rbuf, Protocol::V311, usize::MAX) {
            if let Packet::Publish(p) = packet {
                if let Some(sent) = sent_at(&p.payload) {
                    let _ = hist.record((now.saturating_sub(sent) / 1000).max(1));
                }
                if p.qos == QoS::AtLeastOnce {
                    conn.queue(&Packet::Puback(Ack::new(p.pkid)));
                }
            }
        }
        if conn.flush().await.is_err() {
            return hists;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sign_test;

    #[test]
    fn sign_test_matches_the_binomial_tails() {
        assert_eq!(sign_test(0, 0), 1.0);
        assert_eq!(sign_test(5, 5), 1.0);
        assert!((sign_test(0, 6) - 2.0 / 64.0).abs() < 1e-12);
        assert!((sign_test(9, 1) - 2.0 * 11.0 / 1024.0).abs() < 1e-12);
        assert!(sign_test(3, 17) < 0.01 && sign_test(8, 12) > 0.5);
    }
}
