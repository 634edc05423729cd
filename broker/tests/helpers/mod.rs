//! Shared by the broker's integration tests: a broker on a free port per test, and a raw MQTT client
//! that speaks bytes through our codec so protocol edge cases can be driven exactly.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use midge_broker::codec::{self, *};
use midge_broker::Broker;
pub use midge_broker::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(3);

pub struct TestBroker {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestBroker {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("broker stops in time")
            .expect("broker task did not panic");
    }
}

/// A configuration for tests: loopback, port 0, everything else default.
pub fn config() -> Config {
    Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() }
}

pub async fn start(config: Config) -> TestBroker {
    let shutdown = CancellationToken::new();
    let broker = Broker::bind(config, shutdown.clone(), None).await.expect("broker binds");
    let addr = broker.local_addr();
    let task = tokio::spawn(broker.run());
    TestBroker { addr, shutdown, task }
}

pub async fn start_default() -> TestBroker {
    start(config()).await
}

pub fn connect_packet(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        protocol: Protocol::V311,
        clean_session,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, pkid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        pkid,
        payload: Bytes::copy_from_slice(payload),
    })
}

pub fn retained(topic: &str, payload: &[u8], qos: QoS, pkid: u16) -> Packet {
    match publish(topic, payload, qos, pkid) {
        Packet::Publish(p) => Packet::Publish(Publish { retain: true, ..p }),
        _ => unreachable!(),
    }
}

pub fn subscribe(pkid: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe { pkid, filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect() })
}

/// A byte-level MQTT client.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Raw { stream, buf: BytesMut::new() }
    }

    /// Opens a connection and completes CONNECT/CONNACK, asserting acceptance.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Raw, bool) {
        let mut raw = Raw::open(addr).await;
        raw.send(&Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::Connack(Connack { code: ConnectReturnCode::Accepted, session_present })) => {
                (raw, session_present)
            }
            other => panic!("expected an accepting CONNACK, got {other:?}"),
        }
    }

    pub async fn connected(addr: SocketAddr, client_id: &str) -> Raw {
        Raw::connect(addr, connect_packet(client_id, true)).await.0
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut buf = BytesMut::new();
        codec::encode(packet, &mut buf);
        self.send_bytes(&buf).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed us; tests then see it on the next read.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` if the broker closed the connection. Panics if nothing comes in time.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT).await.expect("a packet or a close in time")
    }

    /// `Err(())` on timeout.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(packet) = codec::decode(&mut self.buf, usize::MAX).expect("broker sends valid packets") {
                return Ok(Some(packet));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Asserts the broker closes the connection (without sending anything first).
    pub async fn expect_closed(&mut self) {
        match self.recv().await {
            None => {}
            Some(p) => panic!("expected the connection to close, got {p:?}"),
        }
    }

    /// Asserts nothing arrives for a while.
    pub async fn expect_silence(&mut self, limit: Duration) {
        if let Ok(p) = self.recv_within(limit).await {
            panic!("expected silence, got {p:?}");
        }
    }

    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, QoS)]) -> Vec<SubackCode> {
        self.send(&subscribe(pkid, filters)).await;
        match self.recv().await {
            Some(Packet::Suback(s)) if s.pkid == pkid => s.codes,
            other => panic!("expected SUBACK {pkid}, got {other:?}"),
        }
    }

    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// PINGREQ/PINGRESP: once this returns, the broker has handled everything sent before.
    pub async fn ping(&mut self) {
        self.send(&Packet::Pingreq).await;
        match self.recv().await {
            Some(Packet::Pingresp) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect).await;
        let _ = self.stream.shutdown().await;
    }
}

/// A fresh directory under the system temp dir, unique to this test.
pub fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("midge-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
