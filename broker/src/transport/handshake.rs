//! What happens to a connection between accept and its first MQTT byte: for now nothing beyond taking
//! the TCP stream as it is. Runs in the connection's own task, under the connect timeout, so a slow or
//! broken handshake holds no acceptor.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::listener::Listener;
use super::Stream;

/// A connection ready for MQTT.
pub struct Established {
    pub stream: Stream,
    /// The client's address: the socket's peer, or what a PROXY header says.
    pub peer: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("i/o error during handshake: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// The reason the listener counts it under in `shutdown_count`.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Io(_) => "closed",
        }
    }
}

impl Listener {
    /// Sets up an accepted connection as the listener's kind says.
    pub async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Result<Established, HandshakeError> {
        Ok(Established { stream: Stream::Tcp(tcp), peer })
    }
}
