//! The restart scenario: a broker holding many retained messages and persistent sessions with long
//! queues is stopped and started again; how long until it serves again, and whether it has it all.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use bytes::Bytes;
use midge_broker::protocol::{Ack, Disconnect, Packet, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions};

use crate::mqtt::{Conn, Endpoint};

/// What the broker is filled with.
#[derive(Debug, Clone, Copy)]
pub struct Fill {
    pub retained: usize,
    pub sessions: usize,
    /// Messages queued for each session (the sessions share 100 topics, so each publish reaches
    /// `sessions / 100` of them).
    pub per_session: usize,
}

const TOPICS: usize = 100;
/// QoS 1 publishes in flight at once while filling.
const WINDOW: usize = 200;

impl Fill {
    pub fn queued(&self) -> usize {
        self.sessions * self.per_session
    }
}

fn message(topic: String, retain: bool, pkid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: Bytes::from(topic),
        pkid,
        payload: Bytes::from_static(&[b'x'; 64]),
        properties: None,
    })
}

/// Publishes `messages` at QoS 1 with a window, waiting for every PUBACK.
async fn publish_all(conn: &mut Conn, messages: impl Iterator<Item = (String, bool)>) -> anyhow::Result<()> {
    let mut in_flight = 0usize;
    let mut pkid = 0u16;
    for (topic, retain) in messages {
        pkid = pkid % 60_000 + 1;
        conn.queue(&message(topic, retain, pkid));
        in_flight += 1;
        if in_flight == WINDOW {
            conn.flush().await?;
            while in_flight > WINDOW / 2 {
                expect_puback(conn).await?;
                in_flight -= 1;
            }
        }
    }
    conn.flush().await?;
    for _ in 0..in_flight {
        expect_puback(conn).await?;
    }
    Ok(())
}

async fn expect_puback(conn: &mut Conn) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(30), conn.recv()).await?? {
        Packet::Puback(_) => Ok(()),
        other => bail!("expected PUBACK, got {other:?}"),
    }
}

/// Fills the broker: retained messages, persistent sessions subscribed (then away), and their queues.
pub async fn fill(endpoint: &Endpoint, fill: Fill) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..fill.sessions).step_by(16) {
                let mut conn = Conn::connect_session(&endpoint, &format!("kept-{i}"), 0, false).await?;
                conn.subscribe(&format!("kept/{}", i % TOPICS), QoS::AtLeastOnce).await?;
                conn.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let mut publisher = Conn::connect(endpoint, "filler", 0).await?;
    publish_all(&mut publisher, (0..fill.retained).map(|i| (format!("ret/{i}"), true))).await?;
    let publishes = fill.per_session * TOPICS;
    publish_all(&mut publisher, (0..publishes).map(|i| (format!("kept/{}", i % TOPICS), false))).await?;
    Ok(())
}

/// Polls until a client connects and gets its CONNACK: the time from `since`.
pub async fn ready(endpoint: &Endpoint, since: Instant) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(600);
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(60), Conn::connect(endpoint, "ready", 0)).await {
            return Ok(since.elapsed());
        }
        ensure!(Instant::now() < deadline, "not serving after 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// After the restart: one session resumes with its whole queue, and a `ret/#` subscriber gets every
/// retained message. The retained messages' delivery rate.
pub async fn check(endpoint: &Endpoint, fill: Fill) -> anyhow::Result<f64> {
    let mut session = Conn::connect_session(endpoint, "kept-0", 0, false).await?;
    let mut got = 0;
    while got < fill.per_session {
        match tokio::time::timeout(Duration::from_secs(10), session.recv()).await {
            Ok(Ok(Packet::Publish(p))) => {
                got += 1;
                session.send(&Packet::Puback(Ack::new(p.pkid))).await?;
            }
            Ok(Ok(_)) => {}
            _ => bail!("kept-0 got {got} of its {} queued messages back", fill.per_session),
        }
    }
    let mut reader = Conn::connect(endpoint, "retained-reader", 0).await?;
    let started = Instant::now();
    // Not `subscribe`: the retained messages may come before the SUBACK; both are read below.
    let filters = vec![("ret/#".into(), SubscriptionOptions::qos(QoS::AtMostOnce))];
    reader.send(&Packet::Subscribe(Subscribe { pkid: 1, filters })).await?;
    let mut retained = 0;
    while retained < fill.retained {
        match tokio::time::timeout(Duration::from_secs(10), reader.recv()).await {
            Ok(Ok(Packet::Publish(_))) => retained += 1,
            Ok(Ok(_)) => {}
            _ => bail!("{retained} of {} retained messages back", fill.retained),
        }
    }
    Ok(retained as f64 / started.elapsed().as_secs_f64())
}

/// Memory per kept session: `n` persistent sessions, each subscribed to a topic of its own, then away.
pub async fn session_memory(endpoint: &Endpoint, pid: u32, n: usize) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = crate::proc::rss_bytes(pid);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..n).step_by(16) {
                let mut conn = Conn::connect_session(&endpoint, &format!("away-{i}"), 0, false).await?;
                conn.subscribe(&format!("away/{i}"), QoS::AtLeastOnce).await?;
                conn.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = crate::proc::rss_bytes(pid);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}
