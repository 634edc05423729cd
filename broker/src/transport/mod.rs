//! Bytes in and out: packets framed over a connection's stream, with the buffers kept per connection.

mod connection;

pub use connection::{split, ConnectionError, PacketReader, PacketWriter, SocketHandle, Written, WRITE_HIGH_WATER};
