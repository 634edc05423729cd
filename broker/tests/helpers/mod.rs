//! Shared by the broker's integration tests: a broker on a free port per test, and a raw MQTT client
//! that speaks bytes through our codec so protocol edge cases can be driven exactly.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use midge_broker::protocol::{self, *};
use midge_broker::Broker;
pub mod nats;
pub mod pki;
pub mod ws;

pub use midge_broker::Config;
#[allow(unused_imports)]
pub use midge_broker::{ListenerConfig, ListenerKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(3);

pub struct TestBroker {
    /// The first listener's address: the TCP one unless the test configured otherwise.
    pub addr: SocketAddr,
    /// Every listener, in configuration order.
    pub listeners: Vec<(ListenerKind, SocketAddr)>,
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
    start_prepared(config, |_| {}).await
}

/// Starts a broker after `prepare` has had it, bound and not yet running.
pub async fn start_prepared(config: Config, prepare: impl FnOnce(&Broker)) -> TestBroker {
    let shutdown = CancellationToken::new();
    let broker = Broker::bind(config, shutdown.clone(), None).await.expect("broker binds");
    prepare(&broker);
    let addr = broker.local_addr();
    let listeners = broker.listen_addrs();
    let task = tokio::spawn(broker.run());
    TestBroker { addr, listeners, shutdown, task }
}

impl TestBroker {
    /// The address of the `n`th listener of `kind`.
    pub fn listener(&self, kind: ListenerKind, n: usize) -> SocketAddr {
        let mut of_kind = self.listeners.iter().filter(|(k, _)| *k == kind);
        of_kind.nth(n).unwrap_or_else(|| panic!("no {kind:?} listener #{n}")).1
    }
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
        properties: Default::default(),
    }
}

/// Sends `connect` on a new connection and returns the CONNACK's return code.
pub async fn connack_code(addr: SocketAddr, connect: Packet) -> ConnectReturnCode {
    let mut raw = Raw::open(addr).await;
    raw.send(&connect).await;
    match raw.recv().await {
        Some(Packet::Connack(c)) => c.code(),
        other => panic!("expected CONNACK, got {other:?}"),
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
        properties: None,
    })
}

pub fn retained(topic: &str, payload: &[u8], qos: QoS, pkid: u16) -> Packet {
    match publish(topic, payload, qos, pkid) {
        Packet::Publish(p) => Packet::Publish(Publish { retain: true, ..p }),
        _ => unreachable!(),
    }
}

pub fn subscribe(pkid: u16, filters: &[(&str, QoS)]) -> Packet {
    let filters = filters.iter().map(|(f, q)| (f.to_string(), SubscriptionOptions::qos(*q))).collect();
    Packet::Subscribe(Subscribe { pkid, filters })
}

pub fn unsubscribe(pkid: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe { pkid, filters: filters.iter().map(|f| f.to_string()).collect() })
}

/// A byte-level MQTT client, over TCP unless made `over` another stream (TLS, WebSocket).
pub struct Raw<S = TcpStream> {
    stream: S,
    buf: BytesMut,
    /// The protocol level packets are written and read at: that of the last CONNECT sent.
    level: Protocol,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).await.expect("tcp connect"))
    }

    /// A connection from another loopback address (`127.0.0.2`, ...), as another host's would be.
    pub async fn open_from(source: &str, addr: SocketAddr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{source}:0").parse().expect("a source address")).expect("bind the source");
        Raw::from_stream(socket.connect(addr).await.expect("tcp connect"))
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        // A packet written right after a large one would otherwise wait for the broker's delayed ACK.
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream, buf: BytesMut::new(), level: Protocol::V311 }
    }

    /// Opens a connection and completes CONNECT/CONNACK, asserting acceptance.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Raw, bool) {
        let mut raw = Raw::open(addr).await;
        raw.send(&Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::Connack(Connack { reason: ReasonCode::Success, session_present, .. })) => {
                (raw, session_present)
            }
            other => panic!("expected an accepting CONNACK, got {other:?}"),
        }
    }

    /// The socket and whatever was read but not yet decoded, for tests that read and write at once.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }

    pub async fn connected(addr: SocketAddr, client_id: &str) -> Raw {
        Raw::connect(addr, connect_packet(client_id, true)).await.0
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Raw<S> {
    pub fn over(stream: S) -> Raw<S> {
        Raw { stream, buf: BytesMut::new(), level: Protocol::V311 }
    }

    /// Sends `connect` and returns the CONNACK's return code (or `None` if the connection closed).
    pub async fn connack(&mut self, connect: Connect) -> Option<ConnectReturnCode> {
        self.send(&Packet::Connect(connect)).await;
        match self.recv().await {
            Some(Packet::Connack(c)) => Some(c.code()),
            None => None,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        if let Packet::Connect(connect) = packet {
            self.level = connect.protocol;
        }
        let mut buf = BytesMut::new();
        protocol::encode(packet, self.level, &mut buf);
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
            if let Some(packet) =
                protocol::decode(&mut self.buf, self.level, usize::MAX).expect("broker sends valid packets")
            {
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

    /// What each filter was granted (`None`: refused, 0x80 on a 3.1.1 wire).
    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, QoS)]) -> Vec<Option<QoS>> {
        self.send(&subscribe(pkid, filters)).await;
        match self.recv().await {
            Some(Packet::Suback(s)) if s.pkid == pkid => s.codes.into_iter().map(Result::ok).collect(),
            other => panic!("expected SUBACK {pkid}, got {other:?}"),
        }
    }

    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Publishes one-byte messages `ns` at QoS 1 on `topic` (packet id = payload), each awaiting its
    /// PUBACK, which the broker sends once the message is routed.
    pub async fn publish_acked(&mut self, topic: &str, ns: std::ops::RangeInclusive<u8>) {
        for n in ns {
            self.send(&publish(topic, &[n], QoS::AtLeastOnce, n as u16)).await;
            assert_eq!(self.recv().await, Some(Packet::Puback(Ack::new(n as u16))));
        }
    }

    /// Expects the one-byte messages `ns`, in order, acknowledging each.
    pub async fn expect_acking(&mut self, ns: std::ops::RangeInclusive<u8>) {
        for n in ns {
            let p = self.recv_publish().await;
            assert_eq!(&p.payload[..], &[n]);
            self.send(&Packet::Puback(Ack::new(p.pkid))).await;
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
        self.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await;
        let _ = self.stream.shutdown().await;
    }
}

/// A client with a 1 s keep-alive and a will: pings every `every` (four of them) keep it open past
/// 1.5 × keep-alive; silent, it is closed 1.5 s after its last ping and its will published.
pub async fn pings_keep_alive_and_silence_closes(addr: SocketAddr, every: Duration) {
    let mut watcher = Raw::connected(addr, "watcher").await;
    watcher.subscribe(1, &[("will/+", QoS::AtLeastOnce)]).await;
    let mut c = connect_packet("sleepy", true);
    c.keep_alive = 1;
    c.will = Some(LastWill::new("will/sleepy", Bytes::from_static(b"timeout"), QoS::AtLeastOnce, false));
    let (mut sleepy, _) = Raw::connect(addr, c).await;
    for _ in 0..4 {
        tokio::time::sleep(every).await;
        sleepy.ping().await;
    }
    let silent_since = std::time::Instant::now();
    sleepy.expect_closed().await;
    let waited = silent_since.elapsed();
    assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_millis(2500), "{waited:?}");
    let will = watcher.recv_publish().await;
    assert_eq!(&will.payload[..], b"timeout");
    assert_eq!(will.qos, QoS::AtLeastOnce);
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

/// The management principal's secret in tests.
pub const SECRET: &str = "test-secret-1234";

/// A test configuration with the control channel open and the periodic `$SYS` publishes off.
pub fn mgmt_config() -> Config {
    Config { mgmt_secret: Some(midge_broker::config::Secret::new(SECRET)), sys_interval: 0, ..config() }
}

/// A control-channel client speaking raw MQTT, as the sidecar does.
pub struct Mgmt {
    pub raw: Raw,
    node: String,
    reply_to: String,
    next_id: u64,
}

impl Mgmt {
    pub async fn connect(addr: SocketAddr, node: &str) -> Mgmt {
        Mgmt::connect_as(addr, node, "midge-mgmt-test").await
    }

    /// The management principal's CONNECT, with its secret, for `client_id`.
    pub fn connect_packet(client_id: &str) -> Connect {
        let mut c = connect_packet(client_id, true);
        c.username = Some("midge-mgmt".into());
        c.password = Some(Bytes::from_static(SECRET.as_bytes()));
        c
    }

    pub async fn connect_as(addr: SocketAddr, node: &str, client_id: &str) -> Mgmt {
        let (mut raw, _) = Raw::connect(addr, Mgmt::connect_packet(client_id)).await;
        let reply_to = midge_shared::control::reply_topic(client_id);
        assert_eq!(raw.subscribe(1, &[(&reply_to, QoS::AtLeastOnce)]).await, vec![Some(QoS::AtLeastOnce)]);
        Mgmt { raw, node: node.to_string(), reply_to, next_id: 1 }
    }

    /// Sends a request and returns the reply's outcome, acknowledging what arrives meanwhile.
    pub async fn call(&mut self, request: midge_shared::control::Request) -> midge_shared::control::Outcome {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let envelope = midge_shared::control::RequestEnvelope {
            v: midge_shared::control::VERSION,
            id: id.clone(),
            reply_to: self.reply_to.clone(),
            request,
        };
        self.call_raw(serde_json::to_vec(&envelope).unwrap(), &id).await
    }

    /// Sends any payload to the request topic and waits for the reply with `id`.
    pub async fn call_raw(&mut self, payload: Vec<u8>, id: &str) -> midge_shared::control::Outcome {
        let topic = midge_shared::control::request_topic(&self.node);
        self.call_on(&topic, payload, id).await
    }

    /// Sends any payload to `topic` and waits for the reply with `id`.
    pub async fn call_on(&mut self, topic: &str, payload: Vec<u8>, id: &str) -> midge_shared::control::Outcome {
        let pkid = (self.next_id % 60_000 + 1) as u16;
        self.raw.send(&publish(topic, &payload, QoS::AtLeastOnce, pkid)).await;
        loop {
            match self.raw.recv().await {
                Some(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.raw.send(&Packet::Puback(Ack::new(p.pkid))).await;
                    }
                    let reply: midge_shared::control::ReplyEnvelope =
                        serde_json::from_slice(&p.payload).expect("replies are envelopes");
                    if reply.id == id {
                        return reply.outcome;
                    }
                }
                Some(Packet::Puback(_)) => {}
                other => panic!("unexpected {other:?} while waiting for a control reply"),
            }
        }
    }

    /// Waits for silence on the reply topic (no answer to something that should not be answered).
    pub async fn expect_no_reply(&mut self) {
        loop {
            match self.raw.recv_within(Duration::from_millis(500)).await {
                Err(()) => return,
                Ok(Some(Packet::Puback(_))) => {}
                Ok(other) => panic!("expected no reply, got {other:?}"),
            }
        }
    }

    /// A successful call's result, deserialized.
    pub async fn ok<T: serde::de::DeserializeOwned>(&mut self, request: midge_shared::control::Request) -> T {
        match self.call(request.clone()).await {
            midge_shared::control::Outcome::Ok(value) => {
                serde_json::from_value(value).unwrap_or_else(|e| panic!("{request:?}: bad result: {e}"))
            }
            midge_shared::control::Outcome::Err(e) => panic!("{request:?} failed: {e:?}"),
        }
    }

    /// A failed call's error code.
    pub async fn err(&mut self, request: midge_shared::control::Request) -> u16 {
        match self.call(request.clone()).await {
            midge_shared::control::Outcome::Err(e) => e.code,
            midge_shared::control::Outcome::Ok(v) => panic!("{request:?} should fail, got {v}"),
        }
    }
}

/// The broker binary, with `args` and `--listen 127.0.0.1:0`, killed when dropped; the child and
/// the address it logged.
pub async fn spawn_binary(args: &[&str]) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_midge-broker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listen=").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("broker exited before listening");
    })
    .await
    .expect("broker listens in time");
    // Keep reading its log, so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}
