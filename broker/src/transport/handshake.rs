//! What happens to a connection between accept and its first MQTT byte: the TLS handshake on ssl
//! listeners. Runs in the connection's own task, under the connect timeout, so a slow or broken
//! handshake holds no acceptor.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::listener::{Listener, ListenerKind};
use super::Stream;

/// A connection ready for MQTT.
pub struct Established {
    pub stream: Stream,
    /// The client's address: the socket's peer, or what a PROXY header says.
    pub peer: SocketAddr,
    /// On a listener with `peer_cert_as_username`, the username: the client certificate's, or none
    /// without a certificate (what CONNECT says is never taken there). `None` on other listeners.
    pub certificate_username: Option<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

impl HandshakeError {
    /// The reason the listener counts it under in `shutdown_count`.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Tls(_) => "tls_error",
        }
    }
}

impl Listener {
    /// Sets up an accepted connection as the listener's kind says.
    pub async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Result<Established, HandshakeError> {
        let _ = tcp.set_nodelay(true);
        match (self.config.kind, &self.tls) {
            (ListenerKind::Ssl, Some(tls)) => {
                let (stream, username) = tls.accept(tcp).await.map_err(HandshakeError::Tls)?;
                let certificate_username = tls.takes_username_from_certificate().then_some(username);
                Ok(Established { stream: Stream::Other(Box::new(stream)), peer, certificate_username })
            }
            _ => Ok(Established { stream: Stream::Tcp(tcp), peer, certificate_username: None }),
        }
    }
}
