//! Framing: packets in and out of one TCP stream, each direction with its buffer kept in the struct.
//! The two halves are separate so a connection can read and write at the same time in one `select!`.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::protocol::{self, DecodeError, Packet};

/// Beyond this many unsent bytes a connection stops taking new work until the socket drains.
pub const WRITE_HIGH_WATER: usize = 1024 * 1024;

thread_local! {
    /// One drained read buffer per thread, passed from read to read: at low rates every read would
    /// otherwise allocate its chunk and free it again, since idle connections keep no buffer. A
    /// buffer still shared with payloads in flight is not reused: `reserve` then allocates afresh.
    static SPARE_READ_BUFFER: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// A drained write buffer up to this size is kept for the next packet.
const KEEP_WRITE_BUFFER: usize = 1024;

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
    let writer = PacketWriter { socket: SocketHandle(Arc::new(writer)), buf: BytesMut::new() };
    (PacketReader { reader, buf: BytesMut::new(), max_packet_size }, writer)
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
        let packet = protocol::decode(&mut self.buf, self.max_packet_size)?;
        Ok(packet.map(|p| (p, before - self.buf.len())))
    }

    /// Reads more bytes from the socket. Cancel-safe: no bytes are lost if the future is dropped.
    /// The buffer is only grown once the socket is readable, so waiting costs no memory.
    pub async fn fill(&mut self) -> Result<usize, ConnectionError> {
        loop {
            self.reader.readable().await?;
            if self.buf.capacity() - self.buf.len() < 1024 {
                if self.buf.capacity() == 0 {
                    self.buf = SPARE_READ_BUFFER.take().unwrap_or_default();
                }
                self.buf.reserve(READ_CHUNK);
            }
            // `poll_read`, unlike `try_read`, forgets the readiness after a short read: the next `fill`
            // then waits for epoll instead of asking the socket again only to hear "would block", a
            // syscall saved per packet at low rates, and one that sat between a publish and its routing.
            let reader = &mut self.reader;
            let buf = &mut self.buf;
            let polled = std::future::poll_fn(|cx| Poll::Ready(poll_read_buf(Pin::new(&mut *reader), cx, buf))).await;
            match polled {
                Poll::Ready(Ok(0)) => return Err(ConnectionError::Closed),
                Poll::Ready(Ok(n)) => return Ok(n),
                Poll::Ready(Err(e)) => return Err(e.into()),
                // Readiness was stale: give the buffer back before waiting again.
                Poll::Pending => self.release_if_drained(),
            }
        }
    }

    /// Are there bytes read but not yet decoded (a packet, or the start of one)?
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Gives the buffer up if everything in it has been decoded: an idle connection holds none.
    pub fn release_if_drained(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            let drained = std::mem::take(&mut self.buf);
            // Kept for this thread's next read, in place of (and freeing) any kept before.
            let _ = SPARE_READ_BUFFER.replace(Some(drained));
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
    socket: SocketHandle,
    buf: BytesMut,
}

impl PacketWriter {
    /// Queues a packet; it goes out with the next write, together with whatever else is queued.
    /// Returns its size on the wire.
    pub fn queue(&mut self, packet: &Packet) -> usize {
        let before = self.buf.len();
        protocol::encode(packet, &mut self.buf);
        self.buf.len() - before
    }

    /// Queues bytes already encoded: the rest of a packet another task began to write.
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The socket, for writes by other tasks at moments this writer has nothing unsent and waits
    /// (see `router/outbox.rs`).
    pub fn socket(&self) -> SocketHandle {
        self.socket.clone()
    }

    /// Writes some of the queued bytes. Cancel-safe: a write that happens is accounted for at once.
    pub async fn write_some(&mut self) -> Result<(), ConnectionError> {
        // Readiness through `poll_write_ready` rather than a `writable()` future: the latter is a waiter
        // node of its own, and this future sits in every connection's task.
        let stream: &TcpStream = self.socket.0.as_ref().as_ref();
        let buf = &mut self.buf;
        let n = std::future::poll_fn(|cx| loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        })
        .await?;
        if n == 0 {
            return Err(ConnectionError::Closed);
        }
        self.buf.advance(n);
        if self.buf.is_empty() {
            self.release_if_large();
        }
        Ok(())
    }

    /// Writes what the socket takes right now, without waiting; whatever it does not take stays
    /// queued for `write_some`. Called as soon as a batch of work is done, so a reply or delivery
    /// leaves on the spot rather than after another turn of the connection's loop.
    pub fn try_flush(&mut self) -> Result<(), ConnectionError> {
        while !self.buf.is_empty() {
            match self.socket.0.try_write(&self.buf) {
                Ok(0) => return Err(ConnectionError::Closed),
                Ok(n) => self.buf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        self.release_if_large();
        Ok(())
    }

    /// A drained buffer is kept while small, so a connection trading small packets does not allocate
    /// for each, and released when large: most connections are idle most of the time.
    fn release_if_large(&mut self) {
        if self.buf.capacity() > KEEP_WRITE_BUFFER {
            self.buf = BytesMut::new();
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        while !self.buf.is_empty() {
            self.write_some().await?;
        }
        Ok(())
    }

    /// Ends the sending side. Whoever else holds the socket has let go of it by now (the outbox forgets
    /// it when the connection ends); were one still to hold it, its last drop would do the same.
    pub async fn shutdown(&mut self) {
        if let Some(socket) = Arc::get_mut(&mut self.socket.0) {
            let _ = tokio::io::AsyncWriteExt::shutdown(socket).await;
        }
    }
}

thread_local! {
    /// The encoding buffer of [`SocketHandle::write_packet`], kept per thread.
    static DIRECT_BUFFER: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// A connection's socket as another task may write to it: only at a moment the connection's own
/// writer has nothing unsent and cannot start writing (the caller must ensure it).
#[derive(Debug, Clone)]
pub struct SocketHandle(Arc<OwnedWriteHalf>);

/// What [`SocketHandle::write_packet`] wrote, when it wrote anything.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    /// The whole packet's size on the wire.
    pub size: usize,
    /// What the socket did not take: it must be the next bytes the connection writes.
    pub rest: Option<Box<[u8]>>,
}

impl SocketHandle {
    /// Encodes `packet` and writes what the socket takes now, without waiting. `None` if it took
    /// nothing: the socket is full or failed (the connection will find out itself).
    pub fn write_packet(&self, packet: &Packet) -> Option<Written> {
        let mut buf = DIRECT_BUFFER.take().unwrap_or_default();
        buf.clear();
        protocol::encode(packet, &mut buf);
        let written = match self.0.try_write(&buf) {
            Ok(n) if n > 0 => Some(Written { size: buf.len(), rest: (n < buf.len()).then(|| buf[n..].into()) }),
            _ => None,
        };
        if buf.capacity() <= KEEP_WRITE_BUFFER {
            DIRECT_BUFFER.set(Some(buf));
        }
        written
    }
}
