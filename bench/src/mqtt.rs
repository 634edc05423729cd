//! A bare MQTT client on raw tokio sockets and Midge's codec: just what the load generator needs, with
//! no per-message allocation beyond the codec's. It speaks over plain TCP, TLS, WebSocket or both.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use midge_broker::protocol::{self, *};
use midge_broker::transport::WsBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// What a connection speaks below MQTT.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    Tls(TlsConnector),
    /// WebSocket at `/mqtt`.
    Ws,
    Wss(TlsConnector),
}

/// Where a broker listens, and how to speak to it there.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// The MQTT level the generator's clients speak.
    pub protocol: Protocol,
}

impl Endpoint {
    pub fn tcp(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, transport: Transport::Tcp, protocol: Protocol::V311 }
    }

    /// The same listener, spoken to at MQTT 5.
    pub fn mqtt5(self) -> Endpoint {
        Endpoint { protocol: Protocol::V5, ..self }
    }

    /// A connection up to its first MQTT byte: TLS handshake and WebSocket upgrade done.
    async fn open(&self) -> anyhow::Result<(Reader, Writer)> {
        let addr = self.addr;
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let name = || rustls_pki_types::ServerName::try_from("localhost").expect("a valid name");
        Ok(match &self.transport {
            Transport::Tcp => {
                let (reader, writer) = tcp.into_split();
                (Box::new(reader), Box::new(writer))
            }
            Transport::Tls(connector) => split(connector.connect(name(), tcp).await.context("TLS handshake")?),
            Transport::Ws => split(upgrade(tcp, addr).await?),
            Transport::Wss(connector) => {
                split(upgrade(connector.connect(name(), tcp).await.context("TLS handshake")?, addr).await?)
            }
        })
    }
}

fn split<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (Reader, Writer) {
    let (reader, writer) = tokio::io::split(stream);
    (Box::new(reader), Box::new(writer))
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(stream: S, addr: SocketAddr) -> anyhow::Result<WsBytes<S>> {
    let mut request = format!("ws://localhost:{}/mqtt", addr.port()).into_client_request()?;
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await.context("WebSocket upgrade")?;
    Ok(WsBytes::new(ws))
}

/// Reads whatever `reader` has ready without waiting; false once it has closed.
pub fn read_ready(reader: &mut Reader, sink: &mut [u8]) -> bool {
    let mut cx = TaskContext::from_waker(Waker::noop());
    loop {
        let mut buf = ReadBuf::new(sink);
        match Pin::new(&mut *reader).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
            Poll::Ready(_) => return false,
            Poll::Pending => return true,
        }
    }
}

/// Appends whatever `reader` has ready to `buf` without waiting.
pub fn read_ready_into(reader: &mut Reader, buf: &mut BytesMut) {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut read = ReadBuf::new(&mut chunk);
        match Pin::new(&mut *reader).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if !read.filled().is_empty() => buf.extend_from_slice(read.filled()),
            _ => return,
        }
    }
}

pub struct Conn {
    pub reader: Reader,
    pub writer: Writer,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub level: Protocol,
}

impl Conn {
    /// Connects with a clean session and completes CONNECT/CONNACK.
    pub async fn connect(endpoint: &Endpoint, client_id: &str, keep_alive: u16) -> anyhow::Result<Conn> {
        Conn::connect_session(endpoint, client_id, keep_alive, true).await
    }

    /// Connects with a clean session or a persistent one (`clean` false), completing CONNECT/CONNACK.
    pub async fn connect_session(
        endpoint: &Endpoint,
        client_id: &str,
        keep_alive: u16,
        clean: bool,
    ) -> anyhow::Result<Conn> {
        let (reader, writer) = endpoint.open().await?;
        let level = endpoint.protocol;
        let mut conn = Conn { reader, writer, rbuf: BytesMut::with_capacity(64 * 1024), wbuf: BytesMut::new(), level };
        conn.send(&Packet::Connect(Connect {
            protocol: level,
            clean_session: clean,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        }))
        .await?;
        match conn.recv().await? {
            Packet::Connack(Connack { reason: ReasonCode::Success, .. }) => Ok(conn),
            other => bail!("{client_id}: expected CONNACK, got {other:?}"),
        }
    }

    pub fn queue(&mut self, packet: &Packet) {
        protocol::encode(packet, self.level, &mut self.wbuf);
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wbuf.is_empty() {
            self.writer.write_all(&self.wbuf).await?;
            // TLS and WebSocket may hold what was written until flushed; TCP's flush does nothing.
            self.writer.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        self.queue(packet);
        self.flush().await
    }

    /// The next packet (waits for bytes).
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = protocol::decode(&mut self.rbuf, self.level, usize::MAX)? {
                return Ok(packet);
            }
            if self.reader.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection closed");
            }
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let filters = vec![(filter.into(), SubscriptionOptions::qos(qos))];
        self.send(&Packet::Subscribe(Subscribe { pkid: 1, filters })).await?;
        match tokio::time::timeout(Duration::from_secs(5), self.recv()).await?? {
            Packet::Suback(s) if s.codes == vec![Ok(qos)] => Ok(()),
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }
}

/// A 64-byte payload carrying its send time (nanoseconds since the run's epoch) in the first 8 bytes.
pub fn payload(nanos: u64) -> Bytes {
    let mut p = vec![0u8; 64];
    p[..8].copy_from_slice(&nanos.to_be_bytes());
    Bytes::from(p)
}

pub fn sent_at(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Reads and drops whatever arrives on `reader` (a publisher's acknowledgements) until it closes.
pub fn drain_in_background(mut reader: Reader) {
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
}

/// A probe: a 64-byte PUBLISH to `topic` stamped with `nanos` (see [`payload`]).
pub fn probe(topic: Bytes, qos: QoS, pkid: u16, nanos: u64) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
        payload: payload(nanos),
        properties: None,
    })
}

/// An HDR histogram of latencies in microseconds, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
