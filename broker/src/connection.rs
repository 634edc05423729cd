//! Framing: packets in and out of one TCP stream, each direction with its buffer kept in the struct.
//! The two halves are separate so a connection can read and write at the same time in one `select!`.

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::codec::{self, DecodeError, Packet};

/// Beyond this many unsent bytes a connection stops taking new work until the socket drains.
pub const WRITE_HIGH_WATER: usize = 1024 * 1024;

/// How much a read asks for at once.
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed by peer")]
    Closed,
}

pub fn split(stream: TcpStream, max_packet_size: usize) -> (PacketReader, PacketWriter) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    // Buffers start empty and are released whenever drained, so an idle connection holds none.
    (PacketReader { reader, buf: BytesMut::new(), max_packet_size }, PacketWriter { writer, buf: BytesMut::new() })
}

pub struct PacketReader {
    reader: OwnedReadHalf,
    buf: BytesMut,
    max_packet_size: usize,
}

impl PacketReader {
    /// A whole packet already in the buffer, if there is one, with its size on the wire.
    pub fn next_buffered(&mut self) -> Result<Option<(Packet, usize)>, DecodeError> {
        let before = self.buf.len();
        let packet = codec::decode(&mut self.buf, self.max_packet_size)?;
        Ok(packet.map(|p| (p, before - self.buf.len())))
    }

    /// Reads more bytes from the socket. Cancel-safe: no bytes are lost if the future is dropped.
    /// The buffer is only grown once the socket is readable, so waiting costs no memory.
    pub async fn fill(&mut self) -> Result<usize, ConnectionError> {
        loop {
            self.reader.readable().await?;
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_CHUNK);
            }
            match self.reader.try_read_buf(&mut self.buf) {
                Ok(0) => return Err(ConnectionError::Closed),
                Ok(n) => return Ok(n),
                // Readiness was stale: give the buffer back before waiting again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.release_if_drained(),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Frees the buffer if everything in it has been decoded.
    pub fn release_if_drained(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Waits for the next whole packet.
    pub async fn read_packet(&mut self) -> Result<(Packet, usize), ConnectionError> {
        loop {
            if let Some(packet) = self.next_buffered()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }
}

pub struct PacketWriter {
    writer: OwnedWriteHalf,
    buf: BytesMut,
}

impl PacketWriter {
    /// Queues a packet; it goes out with the next write, together with whatever else is queued.
    /// Returns its size on the wire.
    pub fn queue(&mut self, packet: &Packet) -> usize {
        let before = self.buf.len();
        codec::encode(packet, &mut self.buf);
        self.buf.len() - before
    }

    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes some of the queued bytes. Cancel-safe: `write` reports exactly what it sent.
    pub async fn write_some(&mut self) -> Result<(), ConnectionError> {
        let n = self.writer.write(&self.buf).await?;
        if n == 0 {
            return Err(ConnectionError::Closed);
        }
        self.buf.advance(n);
        if self.buf.is_empty() {
            // Released rather than kept: most connections are idle most of the time.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        while !self.buf.is_empty() {
            self.write_some().await?;
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.writer.shutdown().await;
    }
}
