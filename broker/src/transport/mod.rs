//! Bytes in and out: listeners that accept connections, and packets framed over each connection's
//! stream (plain TCP, or any other byte stream such as TLS or WebSocket), with its buffers kept per
//! connection.

mod connection;
mod handshake;
mod listener;
mod proxy;
mod rate_limit;
mod tls;
mod websocket;

pub use connection::{
    attach, detach, split, ByteStream, ConnectionError, PacketReader, PacketWriter, SocketHandle, Stream, Written,
    WRITE_HIGH_WATER,
};
pub use handshake::{Established, HandshakeError};
pub use listener::{
    Accepted, Connected, Listener, ListenerConfig, ListenerError, ListenerKind, ListenerStats, PeerCertField,
};
pub use rate_limit::RateLimit;
pub use tls::{Certificates, Tls, TlsError};
pub use websocket::WsBytes;
