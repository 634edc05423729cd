//! Overload: publishers at QoS 1 that never wait (no window, no pacing: each writes as fast as the
//! broker reads) into one subscriber that reads and acknowledges as fast as it can, while a separate
//! client measures how long its own messages take through the same broker. What counts is the
//! subscriber's goodput against what the broker sustains when paced, the broker's memory, the other
//! client's latency, and whether anything acknowledged to a publisher never arrived.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use midge_broker::protocol::{self, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mqtt::{histogram, probe, sent_at, Conn};
use crate::proc;
use crate::scenarios::Target;

const PUBLISHERS: usize = 10;
/// Publishes written per write: enough that the generator's syscalls are not what limits it.
const BURST: usize = 64;
/// The other client's messages, one every this long.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// After the flood: how long the subscriber goes on reading what the broker still holds for it.
const DRAIN: Duration = Duration::from_secs(3);

pub struct Flood {
    /// Deliveries per second to the subscriber while the publishers flooded.
    pub goodput: f64,
    /// Publishes per second the broker took from the publishers' sockets.
    pub offered: f64,
    /// Acknowledged to a publisher (PUBACK) and never delivered, by the end of the drain.
    pub acknowledged_lost: u64,
    /// The broker's largest RSS growth during the flood.
    pub peak_rss_growth: u64,
    /// The other client's message latency.
    pub probe_p50_us: u64,
    pub probe_p99_us: u64,
    pub probe_max_us: u64,
    /// The other client's messages that did not come back.
    pub probe_lost: u64,
    pub broker_cpu: f64,
}

pub async fn flood(target: &Target, duration: Duration) -> anyhow::Result<Flood> {
    let epoch = Instant::now();
    let mut subscriber = Conn::connect(&target.endpoint, "bench-flood-sub", 300).await?;
    subscriber.subscribe("bench/flood/+", QoS::AtLeastOnce).await?;
    let mut prober = Conn::connect(&target.endpoint, "bench-flood-probe", 300).await?;
    prober.subscribe("bench/flood-probe", QoS::AtMostOnce).await?;
    let mut publishers = Vec::new();
    for i in 0..PUBLISHERS {
        publishers.push(Conn::connect(target.publish_endpoint(), &format!("bench-flood-pub-{i}"), 300).await?);
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = proc::rss_bytes(target.pid);
    let cpu_before = proc::cpu_seconds(Some(target.pid));
    let started = tokio::time::Instant::now();
    let flood_end = started + duration;
    let subscriber = tokio::spawn(subscribe(subscriber, flood_end, flood_end + DRAIN));
    let prober = tokio::spawn(probe_loop(prober, epoch, flood_end));
    let publishers: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, conn)| tokio::spawn(publish(conn, format!("bench/flood/{i}"), epoch, flood_end)))
        .collect();
    let mut peak = 0u64;
    while tokio::time::Instant::now() < flood_end {
        peak = peak.max(proc::rss_bytes(target.pid).saturating_sub(rss_before));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let broker_cpu = (proc::cpu_seconds(Some(target.pid)) - cpu_before) / duration.as_secs_f64();
    let (mut written, mut acknowledged) = (0u64, 0u64);
    for publisher in publishers {
        let (w, a) = publisher.await??;
        written += w;
        acknowledged += a;
    }
    let (probes_sent, probe_latency) = prober.await??;
    let (in_flood, in_all) = subscriber.await??;
    Ok(Flood {
        goodput: in_flood as f64 / duration.as_secs_f64(),
        offered: written as f64 / duration.as_secs_f64(),
        acknowledged_lost: acknowledged.saturating_sub(in_all),
        peak_rss_growth: peak,
        probe_p50_us: probe_latency.value_at_quantile(0.5),
        probe_p99_us: probe_latency.value_at_quantile(0.99),
        probe_max_us: probe_latency.max(),
        probe_lost: probes_sent.saturating_sub(probe_latency.len()),
        broker_cpu,
    })
}

/// Writes bursts of QoS 1 publishes until `end`, as fast as the socket takes them, reading the
/// acknowledgements between bursts without waiting for them. Returns (publishes written, PUBACKs
/// read), the PUBACKs counted until the broker has answered everything written or a second passed.
async fn publish(
    mut conn: Conn,
    topic: String,
    epoch: Instant,
    end: tokio::time::Instant,
) -> anyhow::Result<(u64, u64)> {
    let topic = bytes::Bytes::from(topic);
    let (mut written, mut acknowledged) = (0u64, 0u64);
    let mut pkid: u16 = 0;
    while tokio::time::Instant::now() < end {
        let now = epoch.elapsed().as_nanos() as u64;
        for _ in 0..BURST {
            pkid = pkid.checked_add(1).unwrap_or(1);
            protocol::encode(&probe(topic.clone(), QoS::AtLeastOnce, pkid, now), conn.level, &mut conn.wbuf);
        }
        // The broker may stop reading this socket to slow the publisher: that is the point.
        tokio::select! {
            written_all = conn.writer.write_all(&conn.wbuf) => written_all?,
            _ = tokio::time::sleep_until(end) => break,
        }
        conn.wbuf.clear();
        written += BURST as u64;
        acknowledged += count_acks(&mut conn, false).await?;
    }
    let settle = tokio::time::Instant::now() + Duration::from_secs(1);
    while acknowledged < written && tokio::time::Instant::now() < settle {
        match tokio::time::timeout_at(settle, count_acks(&mut conn, true)).await {
            Ok(Ok(n)) => acknowledged += n,
            _ => break,
        }
    }
    Ok((written, acknowledged))
}

/// PUBACKs in what the socket has (waiting for some if `wait`).
async fn count_acks(conn: &mut Conn, wait: bool) -> anyhow::Result<u64> {
    if wait {
        if conn.reader.read_buf(&mut conn.rbuf).await? == 0 {
            anyhow::bail!("the broker closed a publisher's connection");
        }
    } else {
        crate::mqtt::read_ready_into(&mut conn.reader, &mut conn.rbuf);
    }
    let mut acks = 0;
    while let Some(packet) = protocol::decode(&mut conn.rbuf, conn.level, usize::MAX)? {
        if matches!(packet, Packet::Puback(_)) {
            acks += 1;
        }
    }
    Ok(acks)
}

/// Reads and acknowledges until `drained`. Returns (deliveries before `flood_end`, deliveries in all).
async fn subscribe(
    mut conn: Conn,
    flood_end: tokio::time::Instant,
    drained: tokio::time::Instant,
) -> anyhow::Result<(u64, u64)> {
    let (mut in_flood, mut in_all) = (0u64, 0u64);
    let mut last = tokio::time::Instant::now();
    loop {
        while let Some(packet) = protocol::decode(&mut conn.rbuf, conn.level, usize::MAX)? {
            if let Packet::Publish(p) = packet {
                in_all += 1;
                if last < flood_end {
                    in_flood += 1;
                }
                if p.qos == QoS::AtLeastOnce {
                    conn.queue(&Packet::Puback(protocol::Ack::new(p.pkid)));
                }
            }
        }
        conn.flush().await?;
        tokio::select! {
            read = conn.reader.read_buf(&mut conn.rbuf) => if read? == 0 { return Ok((in_flood, in_all)) },
            _ = tokio::time::sleep_until(drained) => return Ok((in_flood, in_all)),
        }
        last = tokio::time::Instant::now();
    }
}

/// Publishes a stamped QoS 0 message to its own topic every [`PROBE_EVERY`] until `end`, and times
/// each one's way back. Returns (sent, latencies of those that came back).
async fn probe_loop(conn: Conn, epoch: Instant, end: tokio::time::Instant) -> anyhow::Result<(u64, Histogram<u64>)> {
    let Conn { mut reader, mut writer, mut rbuf, mut wbuf, level } = conn;
    let topic = bytes::Bytes::from_static(b"bench/flood-probe");
    let receiver = tokio::spawn(async move {
        let mut latency = histogram();
        // A probe later than this is counted lost.
        let give_up = end + Duration::from_secs(1);
        loop {
            while let Some(packet) = protocol::decode(&mut rbuf, level, usize::MAX)? {
                if let Some(sent) = match packet {
                    Packet::Publish(p) => sent_at(&p.payload),
                    _ => None,
                } {
                    let now = epoch.elapsed().as_nanos() as u64;
                    latency.record((now.saturating_sub(sent) / 1000).max(1))?;
                }
            }
            tokio::select! {
                read = reader.read_buf(&mut rbuf) => if read? == 0 { return anyhow::Ok(latency) },
                _ = tokio::time::sleep_until(give_up) => return Ok(latency),
            }
        }
    });
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    let mut sent = 0u64;
    while tokio::time::Instant::now() < end {
        ticker.tick().await;
        let now = epoch.elapsed().as_nanos() as u64;
        protocol::encode(&probe(topic.clone(), QoS::AtMostOnce, 0, now), level, &mut wbuf);
        writer.write_all(&wbuf).await?;
        wbuf.clear();
        sent += 1;
    }
    Ok((sent, receiver.await??))
}
