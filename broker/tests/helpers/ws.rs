//! A WebSocket MQTT client that controls its frames: packets split across frames, several in one.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use midge_broker::protocol::{self, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

pub struct WsClient<S = TcpStream> {
    pub ws: WebSocketStream<S>,
    buf: BytesMut,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

/// Upgrades a new connection to `addr` at `path`, offering `subprotocols`.
pub async fn connect(addr: SocketAddr, path: &str, subprotocols: &str) -> Result<WsClient, Error> {
    let tcp = TcpStream::connect(addr).await?;
    over(tcp, addr, path, subprotocols).await
}

/// Upgrades `stream` (TCP or TLS to `addr`) at `path`.
pub async fn over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    subprotocols: &str,
) -> Result<WsClient<S>, Error> {
    let mut request = format!("ws://localhost:{}{path}", addr.port()).into_client_request()?;
    if !subprotocols.is_empty() {
        request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(subprotocols).unwrap());
    }
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let protocol = response.headers().get("sec-websocket-protocol").map(|value| value.to_str().unwrap().to_string());
    Ok(WsClient { ws, buf: BytesMut::new(), protocol })
}

pub fn bytes_of(packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for packet in packets {
        protocol::encode(packet, Protocol::V311, &mut buf);
    }
    buf.to_vec()
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    /// Sends `bytes` as one binary frame.
    pub async fn frame(&mut self, bytes: &[u8]) {
        self.ws.send(Message::Binary(Bytes::copy_from_slice(bytes))).await.expect("frame sent");
    }

    /// The next packet, or `None` once the server closes.
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = protocol::decode(&mut self.buf, Protocol::V311, usize::MAX).expect("valid packets") {
                return Some(packet);
            }
            let message = tokio::time::timeout(super::WAIT, self.ws.next()).await.expect("a frame or a close in time");
            match message {
                Some(Ok(Message::Binary(bytes))) => self.buf.extend_from_slice(&bytes),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            }
        }
    }
}
