//! The scenarios. Each builds its connections fresh, paces its publishers, and measures delivery and
//! latency at the subscribers; the throughput scenarios step the rate up until a step fails.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use midge_broker::protocol::{Ack, Packet, Protocol, Publish, QoS};
use tokio::io::AsyncReadExt;

use crate::mqtt::{
    drain_in_background, histogram, probe, read_ready, read_ready_into, sent_at, Conn, Endpoint, Reader, Writer,
};
use crate::proc;

/// What one run at one rate gave.
#[derive(Debug, Clone)]
pub struct Step {
    /// Messages per second offered by the publishers.
    pub offered: f64,
    /// Deliveries per second that arrived.
    pub delivered_rate: f64,
    pub delivered_ratio: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Load generator CPU, in cores.
    pub generator_cpu: f64,
    /// Broker CPU, in cores.
    pub broker_cpu: f64,
}

impl Step {
    fn print(&self) {
        eprintln!(
            "    offered {:>9.0}/s  delivered {:>10.0}/s ({:>5.1}%)  p50 {:>6} µs  p99 {:>7} µs  generator {:.2} cores  broker {:.2} cores",
            self.offered,
            self.delivered_rate,
            self.delivered_ratio * 100.0,
            self.p50_us,
            self.p99_us,
            self.generator_cpu,
            self.broker_cpu
        );
    }

    pub fn passed(&self) -> bool {
        self.delivered_ratio >= 0.99 && self.p99_us <= 100_000
    }
}

#[derive(Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    pub pid: u32,
    /// Where publishers connect, if not to `endpoint` (another node of a cluster).
    pub publish: Option<Endpoint>,
}

impl Target {
    pub fn publish_endpoint(&self) -> &Endpoint {
        self.publish.as_ref().unwrap_or(&self.endpoint)
    }
}

const STEP_TIME: Duration = Duration::from_secs(2);
const DRAIN_TIME: Duration = Duration::from_millis(1500);

/// Reads publishes until `deadline`, acknowledging QoS 1, recording latency. Returns (count, histogram).
async fn subscribe_loop(mut conn: Conn, epoch: Instant, deadline: tokio::time::Instant) -> (u64, Histogram<u64>) {
    let mut hist = histogram();
    let mut count = 0u64;
    // One timer for the whole loop: a timeout per read would register a timer for every read, and
    // this loop is on the path of every QoS 1 round trip it measures.
    let end = tokio::time::sleep_until(deadline);
    tokio::pin!(end);
    loop {
        loop {
            match midge_broker::protocol::decode(&mut conn.rbuf, conn.level, usize::MAX) {
                Ok(Some(Packet::Publish(p))) => {
                    count += 1;
                    record(&mut hist, epoch, &p);
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => conn.queue(&Packet::Puback(Ack::new(p.pkid))),
                        QoS::ExactlyOnce => conn.queue(&Packet::Pubrec(Ack::new(p.pkid))),
                    }
                }
                Ok(Some(Packet::Pubrel(rel))) => conn.queue(&Packet::Pubcomp(Ack::new(rel.pkid))),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return (count, hist),
            }
        }
        if conn.flush().await.is_err() {
            return (count, hist);
        }
        tokio::select! {
            read = conn.reader.read_buf(&mut conn.rbuf) => match read {
                Ok(n) if n > 0 => {}
                _ => return (count, hist),
            },
            _ = &mut end => return (count, hist),
        }
    }
}

fn record(hist: &mut Histogram<u64>, epoch: Instant, p: &Publish) {
    if let Some(sent) = sent_at(&p.payload) {
        let now = epoch.elapsed().as_nanos() as u64;
        let _ = hist.record((now.saturating_sub(sent) / 1000).max(1));
    }
}

/// Most QoS 2 messages a publisher has sent and not seen completed (PUBCOMP): the broker's limit of
/// incoming messages awaiting PUBREL per client is 100 in Midge (EMQ's `max_awaiting_rel`), and a
/// real client keeps such a window too.
const QOS2_WINDOW: usize = 100;

/// One publishing connection of [`publish_loop`].
struct Publisher {
    reader: Reader,
    writer: Writer,
    wbuf: BytesMut,
    /// Unread acknowledgements, kept only at QoS 2 (the others are read and dropped).
    rbuf: BytesMut,
    level: Protocol,
    topic: Bytes,
    sent: u64,
    next_pkid: u16,
    /// QoS 2: the packet ids sent and not yet completed.
    in_flight: HashSet<u16>,
}

impl Publisher {
    fn new(conn: Conn, topic: String) -> Publisher {
        let Conn { reader, writer, wbuf, rbuf, level } = conn;
        let topic = Bytes::from(topic);
        Publisher { reader, writer, wbuf, rbuf, level, topic, sent: 0, next_pkid: 0, in_flight: HashSet::new() }
    }

    /// Reads what the broker has sent without waiting. At QoS 2 each PUBREC is answered with its
    /// PUBREL and each PUBCOMP opens the window; otherwise the acknowledgements are dropped unread.
    fn read_acknowledgements(&mut self, qos: QoS, sink: &mut [u8]) {
        if qos != QoS::ExactlyOnce {
            read_ready(&mut self.reader, sink);
            return;
        }
        read_ready_into(&mut self.reader, &mut self.rbuf);
        self.answer();
    }

    /// Answers the QoS 2 acknowledgements read so far.
    fn answer(&mut self) {
        while let Ok(Some(packet)) = midge_broker::protocol::decode(&mut self.rbuf, self.level, usize::MAX) {
            match packet {
                Packet::Pubrec(rec) => {
                    midge_broker::protocol::encode(&Packet::Pubrel(Ack::new(rec.pkid)), self.level, &mut self.wbuf)
                }
                Packet::Pubcomp(comp) => {
                    self.in_flight.remove(&comp.pkid);
                }
                _ => {}
            }
        }
    }

    /// The next packet id not in flight, or `None` when the QoS 2 window is full.
    fn take_pkid(&mut self, qos: QoS) -> Option<u16> {
        if qos == QoS::ExactlyOnce && self.in_flight.len() >= QOS2_WINDOW {
            return None;
        }
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if qos != QoS::ExactlyOnce || self.in_flight.insert(self.next_pkid) {
                return Some(self.next_pkid);
            }
        }
    }

    /// Once the publishing ends: QoS 2 handshakes go on until the broker closes or `until` (Mosquitto
    /// routes a QoS 2 message only at its PUBREL); otherwise the acknowledgements are drained.
    fn finish(mut self, qos: QoS, until: tokio::time::Instant) {
        if qos != QoS::ExactlyOnce {
            drain_in_background(self.reader);
            return;
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout_at(until, async {
                loop {
                    self.answer();
                    if !self.wbuf.is_empty() {
                        use tokio::io::AsyncWriteExt;
                        self.writer.write_all(&self.wbuf).await?;
                        self.wbuf.clear();
                    }
                    if self.reader.read_buf(&mut self.rbuf).await? == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                }
            })
            .await;
        });
    }
}

/// Publishes on every connection at `rate_each` messages/s for `duration`, all from this one task.
/// The acknowledgements are read by the same task at each tick (and at QoS 1 dropped): a reader task
/// per connection would be woken for every PUBACK the broker writes, thousands of task switches a
/// second in the generator that compete with the broker for the machine's two cores. Once the
/// publishing ends, the readers go on in the background until the broker closes. A QoS 2 publisher
/// whose window is full falls behind its rate, and so the step fails.
async fn publish_loop(conns: Vec<(Conn, String)>, rate_each: f64, qos: QoS, epoch: Instant, duration: Duration) -> u64 {
    let mut publishers: Vec<Publisher> = conns.into_iter().map(|(conn, topic)| Publisher::new(conn, topic)).collect();
    let mut sink = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut total = 0;
    'publishing: loop {
        ticker.tick().await;
        let elapsed = start.elapsed().min(duration);
        for publisher in publishers.iter_mut() {
            publisher.read_acknowledgements(qos, &mut sink);
            let due = (rate_each * elapsed.as_secs_f64()) as u64;
            let now = epoch.elapsed().as_nanos() as u64;
            while publisher.sent < due {
                let Some(pkid) = publisher.take_pkid(qos) else { break };
                let packet = probe(publisher.topic.clone(), qos, pkid, now);
                midge_broker::protocol::encode(&packet, publisher.level, &mut publisher.wbuf);
                publisher.sent += 1;
                total += 1;
            }
            if !publisher.wbuf.is_empty() {
                use tokio::io::AsyncWriteExt;
                let writer = &mut publisher.writer;
                if writer.write_all(&publisher.wbuf).await.is_err() || writer.flush().await.is_err() {
                    break 'publishing;
                }
                publisher.wbuf.clear();
            }
        }
        if elapsed >= duration {
            break;
        }
    }
    // Dropped with acknowledgements unread, a socket would be reset, and the broker could lose the
    // last publishes it had not read yet.
    let until = tokio::time::Instant::now() + DRAIN_TIME;
    for publisher in publishers {
        publisher.finish(qos, until);
    }
    total
}

/// The shape of a throughput scenario: `subscribers` on `filter`, `publishers` on `{prefix}/{i}`.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub subscribers: usize,
    pub filter: &'static str,
    pub publishers: usize,
    pub prefix: &'static str,
    pub qos: QoS,
    /// Subscribers with persistent sessions (clean session 0), which a broker that persists keeps on
    /// disk; each step ends their sessions, so the next starts afresh.
    pub persistent: bool,
}

/// One step of `load` at `rate` messages/s in all.
async fn step(target: &Target, load: Load, rate: f64) -> anyhow::Result<Step> {
    let Load { subscribers, filter, publishers, prefix, qos, persistent } = load;
    let epoch = Instant::now();
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut conn = Conn::connect_session(&target.endpoint, &format!("bench-sub-{i}"), 300, !persistent).await?;
        conn.subscribe(filter, qos).await?;
        subs.push(conn);
    }
    let mut pubs = Vec::new();
    for i in 0..publishers {
        let publisher = Conn::connect(target.publish_endpoint(), &format!("bench-pub-{i}"), 300).await?;
        pubs.push((publisher, format!("{prefix}/{i}")));
    }
    let cpu_before = (proc::cpu_seconds(None), proc::cpu_seconds(Some(target.pid)));
    let wall = Instant::now();
    let deadline = tokio::time::Instant::now() + STEP_TIME + DRAIN_TIME;
    let readers: Vec<_> = subs.into_iter().map(|c| tokio::spawn(subscribe_loop(c, epoch, deadline))).collect();
    let sent = publish_loop(pubs, rate / publishers as f64, qos, epoch, STEP_TIME).await;
    let mut received = 0;
    let mut hist = histogram();
    for reader in readers {
        let (count, h) = reader.await?;
        received += count;
        hist.add(h)?;
    }
    let elapsed = wall.elapsed().as_secs_f64();
    let cpu_after = (proc::cpu_seconds(None), proc::cpu_seconds(Some(target.pid)));
    if persistent {
        // A clean start ends each kept session, with whatever it still held.
        for i in 0..subscribers {
            Conn::connect(&target.endpoint, &format!("bench-sub-{i}"), 300).await?;
        }
    }
    // Let the broker forget these clients before the next step.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A QoS 2 publisher whose window stays full sends less than it was offered: that is a shortfall too.
    let offered = (rate * STEP_TIME.as_secs_f64()) as u64;
    let expected = (sent.max(offered) * subscribers as u64).max(1);
    Ok(Step {
        offered: rate,
        delivered_rate: received as f64 / STEP_TIME.as_secs_f64(),
        delivered_ratio: received as f64 / expected as f64,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        generator_cpu: (cpu_after.0 - cpu_before.0) / elapsed,
        broker_cpu: (cpu_after.1 - cpu_before.1) / elapsed,
    })
}

/// Steps the rate up by half each time from `start` (down by a third while nothing has passed, when
/// `start` was already too much); once there is both a pass and a failure, bisects (geometrically)
/// between the best pass and the lowest failure while they are more than 10 % apart. Stops after
/// `budget`. Returns the best passing step, if any.
pub async fn find_max(target: &Target, load: Load, start: f64, budget: Duration) -> anyhow::Result<Option<Step>> {
    let began = Instant::now();
    let mut rate = start;
    let mut best: Option<Step> = None;
    let mut failed_at: Option<f64> = None;
    while began.elapsed() + STEP_TIME * 2 < budget {
        let result = step(target, load, rate).await?;
        result.print();
        if result.passed() {
            best = Some(result);
        } else {
            failed_at = Some(failed_at.map_or(rate, |f| f.min(rate)));
        }
        match next_rate(rate, best.as_ref().map(|b| b.offered), failed_at) {
            Some(next) => rate = next,
            None => break,
        }
    }
    Ok(best)
}

/// The search's next rate after a step at `rate`, given the best rate passed and the lowest failed so
/// far; `None` once those are within 10 % of each other.
fn next_rate(rate: f64, passed_at: Option<f64>, failed_at: Option<f64>) -> Option<f64> {
    match (passed_at, failed_at) {
        (_, None) => Some(rate * 1.5),
        (None, Some(fail)) => Some(fail / 1.5),
        (Some(pass), Some(fail)) if fail / pass > 1.1 => Some((pass * fail).sqrt()),
        _ => None,
    }
}

/// Runs `load` at `rate` step after step until `budget` is spent, for profiling a steady load;
/// prints each step and the mean delivered rate.
pub async fn hold(target: &Target, load: Load, rate: f64, budget: Duration) -> anyhow::Result<()> {
    let began = Instant::now();
    let mut delivered = Vec::new();
    while began.elapsed() + STEP_TIME * 2 < budget {
        let result = step(target, load, rate).await?;
        result.print();
        delivered.push(result.delivered_rate);
    }
    let mean = delivered.iter().sum::<f64>() / delivered.len().max(1) as f64;
    eprintln!("    mean delivered {mean:.0}/s over {} steps", delivered.len());
    Ok(())
}

pub struct Idle {
    pub connections: usize,
    pub connect_rate: f64,
    pub rss_per_connection: f64,
}

/// Opens `n` idle connections (`concurrency` at a time) and measures the broker's memory for them.
pub async fn idle(target: &Target, n: usize, concurrency: usize) -> anyhow::Result<Idle> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = proc::rss_bytes(target.pid);
    let started = Instant::now();
    let conns = open_idle(&target.endpoint, n, concurrency).await?;
    let elapsed = started.elapsed().as_secs_f64();
    // Idle long enough for a broker that treats idle connections differently to have done so (Midge's
    // `dormant_after_ms`, 1 s, looked at each second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = proc::rss_bytes(target.pid);
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Idle {
        connections: n,
        connect_rate: n as f64 / elapsed,
        rss_per_connection: rss_after.saturating_sub(rss_before) as f64 / n as f64,
    })
}

/// `n` connected clients that do nothing, opened `concurrency` at a time.
pub async fn open_idle(endpoint: &Endpoint, n: usize, concurrency: usize) -> anyhow::Result<Vec<Conn>> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = semaphore.clone().acquire_owned().await?;
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let conn = Conn::connect(&endpoint, &format!("idle-{i}"), 600).await;
            drop(permit);
            conn
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for task in tasks {
        conns.push(task.await??);
    }
    Ok(conns)
}

/// A subscriber that never reads while a publisher floods it for five seconds: how much does the
/// broker's memory grow? Bounded queues keep it flat; an unbounded one would hold every message.
pub async fn overload(target: &Target, rate: f64) -> anyhow::Result<u64> {
    let epoch = Instant::now();
    let mut sleeper = Conn::connect(&target.endpoint, "bench-slow-sub", 300).await?;
    sleeper.subscribe("bench/overload/+", QoS::AtMostOnce).await?;
    let publisher = Conn::connect(&target.endpoint, "bench-flood", 300).await?;
    let before = proc::rss_bytes(target.pid);
    publish_loop(vec![(publisher, "bench/overload/0".into())], rate, QoS::AtMostOnce, epoch, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = proc::rss_bytes(target.pid);
    drop(sleeper);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(after.saturating_sub(before))
}

#[cfg(test)]
mod tests {
    use super::next_rate;

    #[test]
    fn the_search_steps_up_until_a_failure_then_bisects() {
        assert_eq!(next_rate(100.0, Some(100.0), None), Some(150.0));
        assert_eq!(next_rate(150.0, Some(100.0), Some(150.0)), Some((100.0f64 * 150.0).sqrt()));
        assert_eq!(next_rate(105.0, Some(100.0), Some(105.0)), None);
    }

    #[test]
    fn a_first_step_that_fails_steps_down_until_one_passes() {
        assert_eq!(next_rate(300.0, None, Some(300.0)), Some(200.0));
        assert_eq!(next_rate(200.0, Some(200.0), Some(300.0)), Some((200.0f64 * 300.0).sqrt()));
    }
}
