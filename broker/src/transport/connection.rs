//! Framing: packets in and out of one connection's byte stream, each direction with its buffer kept in
//! the struct. The two halves are separate so a connection can read and write at the same time in one
//! `select!`.
//!
//! A stream is plain TCP or anything else that reads and writes bytes (TLS, WebSocket). Plain TCP keeps
//! its fast path: reads driven by readiness (no buffer held while waiting), writes without waking the
//! task, and a handle (`SocketHandle`) through which another task may write a lone message straight to
//! the socket. Other streams go through tokio's `AsyncRead`/`AsyncWrite` and have no such handle.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BufMut, BytesMut};
use thin_vec::ThinVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::rate_limit::Bucket;
use super::RateLimit;
use crate::protocol::{self, DecodeError, Packet, Protocol};

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

/// Any byte stream a connection can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A connection's stream, as a listener hands it over.
pub enum Stream {
    Tcp(TcpStream),
    /// TLS, WebSocket, or anything else built on a stream of bytes.
    Other(Box<dyn ByteStream>),
}

enum ReadHalf {
    Tcp(OwnedReadHalf),
    Other(tokio::io::ReadHalf<Box<dyn ByteStream>>),
    /// A TCP socket taken off tokio's reactor while its connection rests (see [`detach`]), kept
    /// here for both halves; `None` once a failed detach or attach closed it.
    Detached(Option<std::net::TcpStream>),
}

enum WriteHalf {
    Tcp(SocketHandle),
    /// The socket is off the reactor, kept by the read half.
    Detached,
    Other {
        half: tokio::io::WriteHalf<Box<dyn ByteStream>>,
        /// Bytes the stream took but may still hold (a TLS record not yet sent): flushed before idling.
        unflushed: bool,
    },
}

pub fn split(stream: Stream, max_packet_size: usize, rate_limit: Option<RateLimit>) -> (PacketReader, PacketWriter) {
    // Buffers start empty and are released whenever drained, so an idle connection holds none.
    let (reader, writer) = match stream {
        Stream::Tcp(stream) => {
            let _ = stream.set_nodelay(true);
            let (reader, writer) = stream.into_split();
            (ReadHalf::Tcp(reader), WriteHalf::Tcp(SocketHandle { socket: Arc::new(writer), level: Protocol::V311 }))
        }
        Stream::Other(stream) => {
            let (reader, writer) = tokio::io::split(stream);
            (ReadHalf::Other(reader), WriteHalf::Other { half: writer, unflushed: false })
        }
    };
    // Until CONNECT says otherwise: CONNECT names its level itself, and what goes out before (a refusal)
    // is the same in 3.1 and 3.1.1.
    let level = Protocol::V311;
    let limiter = rate_limit.map(|limit| Box::new(Bucket::new(limit, Instant::now())));
    // MQTT's own limit (268,435,455) fits in 32 bits; a larger setting means no limit below it.
    let max_packet_size = u32::try_from(max_packet_size).unwrap_or(u32::MAX);
    let reader = PacketReader { reader, buf: BytesMut::new(), max_packet_size, level, limiter };
    (reader, PacketWriter { half: writer, buf: BytesMut::new(), level, holds: ThinVec::new() })
}

/// Takes a plain TCP connection's socket off tokio's reactor, for a connection that rests without a
/// task: the reactor keeps a 256-byte entry per socket (`ScheduledIo`, cache-padded) and the split
/// halves two more allocations, where the dormitory's own epoll keeps the socket's readiness in the
/// kernel. Returns the socket to watch, or `None` if this connection cannot be detached (not plain
/// TCP, or another task still holds its socket). An error closes the socket: the connection ends.
pub fn detach(reader: &mut PacketReader, writer: &mut PacketWriter) -> std::io::Result<Option<RawFd>> {
    let unshared = matches!(&writer.half, WriteHalf::Tcp(handle) if Arc::strong_count(&handle.socket) == 1);
    if !unshared || !matches!(reader.reader, ReadHalf::Tcp(_)) {
        return Ok(None);
    }
    let read = std::mem::replace(&mut reader.reader, ReadHalf::Detached(None));
    let write = std::mem::replace(&mut writer.half, WriteHalf::Detached);
    let (ReadHalf::Tcp(read), WriteHalf::Tcp(SocketHandle { socket, .. })) = (read, write) else {
        return Err(std::io::Error::other("detach: not a plain TCP connection"));
    };
    let write = Arc::into_inner(socket).ok_or_else(|| std::io::Error::other("detach: socket still shared"))?;
    let stream = read.reunite(write).map_err(std::io::Error::other)?.into_std()?;
    let fd = stream.as_raw_fd();
    reader.reader = ReadHalf::Detached(Some(stream));
    Ok(Some(fd))
}

/// Puts a socket [`detach`]ed back on tokio's reactor (`false`: it was not off it); must run on the
/// runtime. An error closes the socket: the connection ends.
pub fn attach(reader: &mut PacketReader, writer: &mut PacketWriter) -> std::io::Result<bool> {
    let ReadHalf::Detached(stream) = &mut reader.reader else {
        return Ok(false);
    };
    let stream = stream.take().ok_or_else(closed)?;
    let (read, write) = TcpStream::from_std(stream)?.into_split();
    reader.reader = ReadHalf::Tcp(read);
    writer.half = WriteHalf::Tcp(SocketHandle { socket: Arc::new(write), level: writer.level });
    Ok(true)
}

/// What reading or writing a socket off the reactor gets (never tried: a connection attaches its
/// socket before it serves).
fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "socket off the reactor")
}

pub struct PacketReader {
    reader: ReadHalf,
    buf: BytesMut,
    max_packet_size: u32,
    level: Protocol,
    /// The listener's `rate_limit`, if it has one (boxed: most connections have none).
    limiter: Option<Box<Bucket>>,
}

impl PacketReader {
    /// A whole packet already in the buffer, if there is one, with its size on the wire.
    pub fn next_buffered(&mut self) -> Result<Option<(Packet, usize)>, DecodeError> {
        let before = self.buf.len();
        let packet = protocol::decode(&mut self.buf, self.level, self.max_packet_size as usize)?;
        Ok(packet.map(|p| (p, before - self.buf.len())))
    }

    /// Reads more bytes from the stream, once the rate limit allows. Cancel-safe: no bytes are lost if
    /// the future is dropped. Over TCP the buffer is only grown once the socket is readable, so waiting
    /// costs no memory.
    pub async fn fill(&mut self) -> Result<usize, ConnectionError> {
        if let Some(resume) = self.throttled_until() {
            tokio::time::sleep_until(resume).await;
        }
        let allowance = self.limiter.as_ref().map_or(usize::MAX, |bucket| bucket.allowance());
        let read = self.read_more(allowance).await?;
        if let Some(bucket) = &mut self.limiter {
            bucket.spend(read, Instant::now());
        }
        Ok(read)
    }

    /// While the rate limit holds reads back: until when.
    pub fn throttled_until(&mut self) -> Option<Instant> {
        self.limiter.as_mut().and_then(|bucket| bucket.resumes_at(Instant::now()))
    }

    /// Reads what the stream has, up to `allowance` bytes.
    async fn read_more(&mut self, allowance: usize) -> Result<usize, ConnectionError> {
        loop {
            let read = match &mut self.reader {
                ReadHalf::Tcp(reader) => {
                    reader.readable().await?;
                    reserve(&mut self.buf);
                    // `poll_read`, unlike `try_read`, forgets the readiness after a short read: the next
                    // `fill` then waits for epoll instead of asking the socket again only to hear "would
                    // block", a syscall saved per packet at low rates, and one that sat between a publish
                    // and its routing.
                    let mut buf = (&mut self.buf).limit(allowance);
                    std::future::poll_fn(|cx| Poll::Ready(poll_read_buf(Pin::new(&mut *reader), cx, &mut buf))).await
                }
                ReadHalf::Other(reader) => {
                    reserve(&mut self.buf);
                    Poll::Ready(reader.read_buf(&mut (&mut self.buf).limit(allowance)).await)
                }
                ReadHalf::Detached(_) => return Err(closed().into()),
            };
            match read {
                Poll::Ready(Ok(0)) => return Err(ConnectionError::Closed),
                Poll::Ready(Ok(n)) => return Ok(n),
                Poll::Ready(Err(e)) => return Err(e.into()),
                // Readiness was stale: give the buffer back before waiting again.
                Poll::Pending => self.release_if_drained(),
            }
        }
    }

    /// The connection's protocol level, from its CONNECT on.
    pub fn set_level(&mut self, level: Protocol) {
        self.level = level;
    }

    /// Whether nothing but the socket can give this reader more: plain TCP, nothing buffered (here or
    /// in a stream's own state) and no rate limit holding reads back. Only such a reader may be left to
    /// the dormitory's watch while its connection has no task.
    pub fn waits_on_socket(&mut self) -> bool {
        matches!(self.reader, ReadHalf::Tcp(_)) && self.buf.is_empty() && self.throttled_until().is_none()
    }

    /// The socket, while it is off tokio's reactor (see [`detach`]).
    pub fn detached(&self) -> Option<RawFd> {
        match &self.reader {
            ReadHalf::Detached(Some(stream)) => Some(stream.as_raw_fd()),
            _ => None,
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

    /// Waits for the first packet, which must be CONNECT. A first byte that cannot begin one fails at
    /// once rather than after the length it seems to claim has arrived: an HTTP request, a TLS hello or
    /// a PROXY header sent to the wrong port is refused as soon as it is seen, not at the timeout.
    pub async fn read_connect(&mut self) -> Result<(Packet, usize), ConnectionError> {
        const CONNECT: u8 = 0x10;
        loop {
            match self.buf.first() {
                // Whole, it is named in the log; begun, it is not waited for.
                Some(&first) if first != CONNECT => match self.next_buffered() {
                    Ok(Some(packet)) => return Ok(packet),
                    _ => return Err(DecodeError::NotConnect(first).into()),
                },
                Some(_) => {
                    if let Some(packet) = self.next_buffered()? {
                        return Ok(packet);
                    }
                }
                None => {}
            }
            self.fill().await?;
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

/// Room for the next read: a buffer from this thread's spare if there is none.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        if buf.capacity() == 0 {
            *buf = SPARE_READ_BUFFER.take().unwrap_or_default();
        }
        buf.reserve(READ_CHUNK);
    }
}

pub struct PacketWriter {
    half: WriteHalf,
    buf: BytesMut,
    level: Protocol,
    /// Queued bytes that may not leave yet: from `from` on, they wait until the store is durable up to
    /// `seq` (acknowledgements of what the store keeps). In order of `from` and of `seq`.
    holds: ThinVec<Hold>,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    from: usize,
    seq: u64,
}

impl PacketWriter {
    /// Queues a packet; it goes out with the next write, together with whatever else is queued.
    /// Returns its size on the wire.
    pub fn queue(&mut self, packet: &Packet) -> usize {
        let before = self.buf.len();
        protocol::encode(packet, self.level, &mut self.buf);
        self.buf.len() - before
    }

    /// Queues bytes already encoded: the rest of a packet another task began to write.
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The connection's protocol level, from its CONNECT on.
    pub fn set_level(&mut self, level: Protocol) {
        self.level = level;
    }

    /// Bytes queued so far: where a hold taken now would begin.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Holds the bytes queued from `from` on (and everything queued after them) until the store is
    /// durable up to `seq`. Holds stay in order of `from` and of `seq`, so that each releases the
    /// bytes up to the next.
    pub fn hold_from(&mut self, from: usize, seq: u64) {
        let from = from.min(self.buf.len());
        let mut seq = seq;
        // Holds beginning at `from` or later are within this one, which waits for the most of them.
        while let Some(last) = self.holds.last().filter(|last| last.from >= from) {
            seq = seq.max(last.seq);
            self.holds.pop();
        }
        match self.holds.last() {
            // An earlier hold that waits no less holds these bytes already.
            Some(last) if last.seq >= seq => {}
            _ => self.holds.push(Hold { from, seq }),
        }
    }

    /// What the first hold waits for, if anything is held.
    pub fn held_until(&self) -> Option<u64> {
        self.holds.first().map(|h| h.seq)
    }

    /// What the last hold waits for: once the store is there, nothing is held.
    pub fn held_through(&self) -> Option<u64> {
        self.holds.last().map(|h| h.seq)
    }

    /// The store is durable up to `durable`: what waited for no more than that may go.
    pub fn release(&mut self, durable: u64) {
        let released = self.holds.iter().take_while(|h| h.seq <= durable).count();
        self.holds.drain(..released);
    }

    /// Forgets everything held: bytes that must never be sent (the store could not keep what they
    /// acknowledge).
    pub fn drop_held(&mut self) {
        if let Some(first) = self.holds.first() {
            self.buf.truncate(first.from);
        }
        self.holds.clear();
    }

    /// Bytes that may be written now.
    fn writable(&self) -> usize {
        self.holds.first().map_or(self.buf.len(), |h| h.from)
    }

    /// Whether a write now would send anything (or flush a stream that buffers).
    pub fn can_write(&self) -> bool {
        self.writable() > 0 || matches!(self.half, WriteHalf::Other { unflushed: true, .. })
    }

    fn advance(&mut self, n: usize) {
        self.buf.advance(n);
        for hold in &mut self.holds {
            hold.from -= n;
        }
    }

    /// Bytes still to go out, held ones included (over a stream that buffers, one more until it is
    /// flushed).
    pub fn pending(&self) -> usize {
        let unflushed = matches!(self.half, WriteHalf::Other { unflushed: true, .. });
        self.buf.len() + usize::from(unflushed)
    }

    /// The socket, for writes by other tasks at moments this writer has nothing unsent and waits
    /// (see `router/outbox.rs`): plain TCP only.
    pub fn socket(&self) -> Option<SocketHandle> {
        match &self.half {
            WriteHalf::Tcp(socket) => Some(SocketHandle { level: self.level, ..socket.clone() }),
            WriteHalf::Other { .. } | WriteHalf::Detached => None,
        }
    }

    /// Writes some of the queued bytes (or flushes the stream). Cancel-safe: a write that happens is
    /// accounted for at once.
    pub async fn write_some(&mut self) -> Result<(), ConnectionError> {
        let n = match &mut self.half {
            WriteHalf::Tcp(socket) => {
                // Readiness through `poll_write_ready` rather than a `writable()` future: the latter is a
                // waiter node of its own, and this future sits in every connection's task.
                let stream: &TcpStream = socket.socket.as_ref().as_ref();
                let buf = &self.buf[..self.holds.first().map_or(self.buf.len(), |h| h.from)];
                std::future::poll_fn(|cx| loop {
                    std::task::ready!(stream.poll_write_ready(cx))?;
                    match stream.try_write(buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        written => return Poll::Ready(written),
                    }
                })
                .await?
            }
            WriteHalf::Other { half, unflushed } => {
                let writable = self.holds.first().map_or(self.buf.len(), |h| h.from);
                if writable == 0 {
                    half.flush().await?;
                    *unflushed = false;
                    return Ok(());
                }
                let n = half.write(&self.buf[..writable]).await?;
                *unflushed = true;
                n
            }
            WriteHalf::Detached => return Err(closed().into()),
        };
        if n == 0 {
            return Err(ConnectionError::Closed);
        }
        self.advance(n);
        self.release_if_large();
        Ok(())
    }

    /// Writes what the stream takes right now, without waiting; whatever it does not take stays
    /// queued for `write_some`. Called as soon as a batch of work is done, so a reply or delivery
    /// leaves on the spot rather than after another turn of the connection's loop.
    pub fn try_flush(&mut self) -> Result<(), ConnectionError> {
        let has_bytes = self.writable() > 0;
        match &mut self.half {
            WriteHalf::Tcp(socket) => loop {
                let writable = self.holds.first().map_or(self.buf.len(), |h| h.from);
                if writable == 0 {
                    break;
                }
                match socket.socket.try_write(&self.buf[..writable]) {
                    Ok(0) => return Err(ConnectionError::Closed),
                    Ok(n) => {
                        self.buf.advance(n);
                        for hold in &mut self.holds {
                            hold.from -= n;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            },
            WriteHalf::Other { half, unflushed } => {
                // One poll each, with a waker that does nothing: what would wait is left to
                // `write_some`, which the connection's loop polls with its own waker.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                loop {
                    let writable = self.holds.first().map_or(self.buf.len(), |h| h.from);
                    if writable == 0 {
                        break;
                    }
                    match Pin::new(&mut *half).poll_write(&mut cx, &self.buf[..writable]) {
                        Poll::Ready(Ok(0)) => return Err(ConnectionError::Closed),
                        Poll::Ready(Ok(n)) => {
                            self.buf.advance(n);
                            for hold in &mut self.holds {
                                hold.from -= n;
                            }
                            *unflushed = true;
                        }
                        Poll::Ready(Err(e)) => return Err(e.into()),
                        Poll::Pending => return Ok(()),
                    }
                }
                if *unflushed {
                    match Pin::new(&mut *half).poll_flush(&mut cx) {
                        Poll::Ready(Ok(())) => *unflushed = false,
                        Poll::Ready(Err(e)) => return Err(e.into()),
                        Poll::Pending => {}
                    }
                }
            }
            WriteHalf::Detached if has_bytes => return Err(closed().into()),
            WriteHalf::Detached => {}
        }
        self.release_if_large();
        Ok(())
    }

    /// Gives the buffer up if nothing is queued in it: an idle connection holds none.
    pub fn release_if_drained(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// A drained buffer is kept while small, so a connection trading small packets does not allocate
    /// for each, and released when large: most connections are idle most of the time. A buffer that
    /// still holds bytes (held for the store, or not yet taken by the socket) is kept whatever its size.
    fn release_if_large(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP_WRITE_BUFFER {
            self.buf = BytesMut::new();
        }
    }

    /// Writes everything queued but what is held.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        while self.can_write() {
            self.write_some().await?;
        }
        Ok(())
    }

    /// Ends the sending side. Whoever else holds the socket has let go of it by now (the outbox forgets
    /// it when the connection ends); were one still to hold it, its last drop would do the same.
    pub async fn shutdown(&mut self) {
        match &mut self.half {
            WriteHalf::Tcp(socket) => {
                if let Some(socket) = Arc::get_mut(&mut socket.socket) {
                    let _ = socket.shutdown().await;
                }
            }
            WriteHalf::Other { half, .. } => {
                let _ = half.shutdown().await;
            }
            // Closed with the read half.
            WriteHalf::Detached => {}
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
pub struct SocketHandle {
    socket: Arc<OwnedWriteHalf>,
    /// How to write for the connection.
    level: Protocol,
}

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
        protocol::encode(packet, self.level, &mut buf);
        let written = match self.socket.try_write(&buf) {
            Ok(n) if n > 0 => Some(Written { size: buf.len(), rest: (n < buf.len()).then(|| buf[n..].into()) }),
            _ => None,
        };
        if buf.capacity() <= KEEP_WRITE_BUFFER {
            DIRECT_BUFFER.set(Some(buf));
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// What the peer has been sent so far.
    async fn received(peer: &mut tokio::io::DuplexStream, sent: &mut Vec<u8>) -> String {
        let mut chunk = [0u8; 64];
        while let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_millis(20), peer.read(&mut chunk)).await {
            sent.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(sent.clone()).unwrap()
    }

    /// However holds are taken, each release lets out exactly the bytes whose store changes are on
    /// disk: a hold beginning before an earlier one (acknowledgements of a read, behind which a held
    /// delivery was queued) takes it in, and one beginning after another that waits no less adds
    /// nothing. Nothing held is let go of with the buffer, however large it grows.
    #[tokio::test]
    async fn holds_release_in_order_and_keep_their_bytes() {
        let (ours, mut peer) = tokio::io::duplex(1 << 16);
        let (_reader, mut writer) = split(Stream::Other(Box::new(ours)), 1 << 20, None);
        let mut sent = Vec::new();
        writer.queue_raw(b"free ");
        let start = writer.queued();
        writer.queue_raw(b"ack ");
        writer.hold_from(writer.queued(), 7);
        writer.queue_raw(b"delivery ");
        // The read's acknowledgements are held from where the read began, for less than the delivery.
        writer.hold_from(start, 5);
        writer.hold_from(writer.queued(), 6);
        writer.queue_raw(b"later ");
        writer.hold_from(writer.queued(), 9);
        writer.queue_raw(&[b'x'; 4000]);
        writer.try_flush().unwrap();
        assert_eq!(received(&mut peer, &mut sent).await, "free ");
        writer.release(6);
        writer.try_flush().unwrap();
        assert_eq!(received(&mut peer, &mut sent).await, "free ", "all of it waits for 7 now");
        writer.release(8);
        writer.try_flush().unwrap();
        assert_eq!(received(&mut peer, &mut sent).await, "free ack delivery later ");
        writer.release(9);
        writer.flush().await.unwrap();
        assert_eq!(received(&mut peer, &mut sent).await.len(), "free ack delivery later ".len() + 4000);
        assert_eq!(writer.pending(), 0);
    }
}
