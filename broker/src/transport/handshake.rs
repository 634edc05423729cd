//! What happens to a connection between accept and its first MQTT byte: the PROXY protocol header
//! where the listener expects one, the TLS handshake on ssl and wss listeners, the WebSocket upgrade on
//! ws and wss ones. Runs in the connection's own task, under
//! the connect timeout, so a slow or broken handshake holds no acceptor.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::listener::{Listener, ListenerKind};
use super::proxy::{self, ProxyError};
use super::rate_limit::RateLimit;
use super::{websocket, Stream};

/// A connection ready for MQTT.
pub struct Established {
    pub stream: Stream,
    /// The client's address: the socket's peer, or what a PROXY header says.
    pub peer: SocketAddr,
    /// On a listener with `peer_cert_as_username`, the username: the client certificate's, or none
    /// without a certificate (what CONNECT says is never taken there). `None` on other listeners.
    pub certificate_username: Option<Option<String>>,
    /// The listener's `rate_limit`, for the connection's reader.
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("WebSocket upgrade failed: {0}")]
    WebSocket(#[from] WsError),
}

impl HandshakeError {
    /// The reason the listener counts it under in `shutdown_count`.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Proxy(_) => "proxy_protocol_error",
            HandshakeError::Tls(_) => "tls_error",
            HandshakeError::WebSocket(_) => "websocket_error",
        }
    }
}

impl Listener {
    /// Sets up an accepted connection as the listener's kind says.
    pub async fn handshake(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        max_packet_size: usize,
    ) -> Result<Established, HandshakeError> {
        let _ = tcp.set_nodelay(true);
        let peer = if self.config.proxy_protocol { proxy::read_header(&mut tcp, peer).await? } else { peer };
        let kind = self.config.kind;
        let path = self.config.path.as_str();
        let (stream, certificate_username) = match (&self.tls, kind) {
            (None, ListenerKind::Ws) => {
                (Stream::Other(Box::new(websocket::accept(tcp, path, max_packet_size).await?)), None)
            }
            (None, _) => (Stream::Tcp(tcp), None),
            (Some(tls), _) => {
                let (stream, username) = tls.accept(tcp).await.map_err(HandshakeError::Tls)?;
                let username = tls.takes_username_from_certificate().then_some(username);
                let stream = match kind {
                    ListenerKind::Wss => {
                        Stream::Other(Box::new(websocket::accept(stream, path, max_packet_size).await?))
                    }
                    _ => Stream::Other(Box::new(stream)),
                };
                (stream, username)
            }
        };
        Ok(Established { stream, peer, certificate_username, rate_limit: self.config.rate_limit })
    }
}
