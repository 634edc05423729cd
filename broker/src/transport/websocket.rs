//! MQTT over WebSocket (`mqtt:ws`, and `mqtt:wss` over TLS): the HTTP upgrade on the listener's path
//! with the `mqtt` (or 3.1's `mqttv3.1`) subprotocol, then binary frames read and written as a plain
//! byte stream, so a packet may span frames and a frame hold several packets, as MQTT allows.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The subprotocols MQTT registers, newest first.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Completes the upgrade of `stream` if it asks for `path` with an MQTT subprotocol (or none); anything
/// else gets an HTTP error and the connection ends.
// The shape of the upgrade callback's error is tungstenite's.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(stream: S, path: &str, max_packet_size: usize) -> Result<WsBytes<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        // Allocated up front for every connection: small, as most are idle.
        .read_buffer_size(4 * 1024)
        // The connection's writer already batches a flush into one write: send each at once.
        .write_buffer_size(0)
        // A message carries at most a packet of the largest size and a few small ones behind it.
        .max_message_size(Some(max_packet_size + 64 * 1024))
        .max_frame_size(Some(max_packet_size + 64 * 1024));
    let negotiate = |request: &Request, response: Response| upgrade(path, request, response);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(config)).await?;
    Ok(WsBytes::new(ws))
}

#[allow(clippy::result_large_err)]
fn upgrade(path: &str, request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != path {
        return Err(refusal(StatusCode::NOT_FOUND, format!("MQTT is served at {path}")));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    if offered.is_empty() {
        // Some clients name no subprotocol; the bytes tell what they speak.
        return Ok(response);
    }
    match SUBPROTOCOLS.iter().find(|mqtt| offered.iter().any(|p| p.eq_ignore_ascii_case(mqtt))) {
        Some(chosen) => {
            response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
            Ok(response)
        }
        None => Err(refusal(StatusCode::BAD_REQUEST, "no MQTT subprotocol (mqtt, mqttv3.1) offered".into())),
    }
}

fn refusal(status: StatusCode, message: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message));
    *response.status_mut() = status;
    response
}

/// A WebSocket connection as a byte stream: binary messages in, one binary message per write out.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last message read.
    read: Bytes,
}

impl<S> WsBytes<S> {
    /// Either end of an upgraded connection: the broker's, or a client's (the load generator's).
    pub fn new(ws: WebSocketStream<S>) -> WsBytes<S> {
        WsBytes { ws, read: Bytes::new() }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                buf.put_slice(&self.read[..n]);
                self.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Pings are answered by tungstenite itself; a close or the end of the stream reads as EOF.
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => self.read = bytes,
                Some(Ok(Message::Text(_))) => {
                    // MQTT over WebSocket is binary only (MQTT 3.1.1 §6).
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "text frame")));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_error)
    }
}
