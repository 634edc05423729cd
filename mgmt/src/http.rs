//! The sidecar's HTTP server: hyper, the engine Rocket itself runs on, with the limits that Rocket 0.5
//! does not let us set, handing every request to the Rocket application to route and answer.
//!
//! Why not Rocket's own server: Rocket 0.5.2 serves with `header_read_timeout(None)`, no idle timeout and
//! no cap on connections, and its listener API is crate-private, so a client that opens connections and
//! sends half a request (slowloris) holds them for ever. Here:
//! - a request's head, and then its body, must each arrive within the request timeout, or the connection
//!   is closed (hyper's header-read timer also closes a keep-alive connection left idle that long);
//! - a body over the limit is refused from its `Content-Length`, or as soon as it passes the limit;
//! - connections are capped, and at the cap a new one takes the place of the connection that has waited
//!   longest for a request (one sending half a head is such a connection): so partial requests can never
//!   crowd out a whole one, and only connections busy being answered are never cut.
//!
//! Rocket sees each request through its public local-dispatch API (`rocket::local`), with the peer's
//! address, so routes, guards, catchers and fairings work as under its own server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rocket::local::asynchronous::Client;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What connections and requests may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For a request's head, and again for its body.
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_body: usize,
}

/// How long connections get to finish their requests when the sidecar stops.
const GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` fires, then lets requests in progress finish (for a few seconds).
pub async fn serve(listener: TcpListener, app: Arc<Client>, limits: Limits, shutdown: CancellationToken) {
    let connections = Arc::new(Connections::new(limits.max_connections));
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = connections.admit() else {
            tracing::debug!(%peer, "HTTP connection refused: every connection is busy");
            continue;
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tasks.spawn(connection(stream, peer, app, limits, slot, shutdown));
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(GRACE + Duration::from_secs(1), tasks.wait()).await.is_err() {
        tracing::warn!("HTTP connections still open at shutdown");
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<Client>,
    limits: Limits,
    slot: Slot,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let slot = Arc::new(slot);
    let handler = slot.clone();
    let service = service_fn(move |request| {
        let (app, slot) = (app.clone(), handler.clone());
        async move { Ok::<_, Infallible>(answer(&app, peer, &slot, limits, request).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    tokio::select! {
        result = served.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection closed");
            }
        }
        _ = slot.evicted.notified() => tracing::debug!(%peer, "HTTP connection closed to make room"),
        _ = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACE, served).await;
        }
    }
}

/// Reads the body within the limits, has Rocket answer, and turns its answer into hyper's.
async fn answer(
    app: &Client,
    peer: SocketAddr,
    slot: &Slot,
    limits: Limits,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body as u64) {
        return too_large(body, limits).await;
    }
    let mut body = body;
    let collected = tokio::time::timeout(limits.request_timeout, Limited::new(&mut body, limits.max_body).collect());
    let body = match collected.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(body, limits).await,
        Ok(Err(_)) => return envelope(StatusCode::BAD_REQUEST, "the request body could not be read"),
        Err(_) => return envelope(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time"),
    };
    let Ok(method) = parts.method.as_str().parse::<rocket::http::Method>() else {
        return envelope(StatusCode::NOT_IMPLEMENTED, "unknown method");
    };
    let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let _busy = slot.busy();
    let mut local = app.req(method, uri).remote(peer).body(&body);
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        local.add_header(rocket::http::Header::new(name.as_str().to_string(), value));
    }
    let response = local.dispatch().await;
    let mut answer = Response::builder().status(response.status().code);
    for header in response.headers().iter() {
        answer = answer.header(header.name().as_str(), header.value());
    }
    let body = response.into_bytes().await.unwrap_or_default();
    answer
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| envelope(StatusCode::INTERNAL_SERVER_ERROR, "the answer could not be sent"))
}

/// How much of a refused body is read and thrown away before the refusal is sent.
const DRAIN_MAX: usize = 16 * 1024 * 1024;

/// Refuses a body over the limit, after reading what is left of it (up to `DRAIN_MAX`, within the
/// request timeout) and then closes the connection. Answering while the client is still sending, and
/// closing on the bytes it sent, would have the kernel reset the connection, which discards the answer
/// before the client reads it: the client sees "connection reset" instead of 413.
async fn too_large(body: Incoming, limits: Limits) -> Response<Full<Bytes>> {
    let drain = async {
        let mut body = Limited::new(body, DRAIN_MAX);
        while let Some(Ok(_)) = body.frame().await {}
    };
    let _ = tokio::time::timeout(limits.request_timeout, drain).await;
    let mut response =
        envelope(StatusCode::PAYLOAD_TOO_LARGE, &format!("the request body is larger than {} bytes", limits.max_body));
    response.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The API's `{code, message}` envelope for errors met before Rocket sees the request.
fn envelope(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"code": status.as_u16(), "message": message}).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The open connections: how many, and since when each has been waiting for a request (`None` while
/// one is being answered).
struct Connections {
    max: usize,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

struct Open {
    waiting_since: Option<Instant>,
    evicted: Arc<Notify>,
}

/// A connection's place among the open ones, given back when dropped.
struct Slot {
    id: u64,
    connections: Arc<Connections>,
    evicted: Arc<Notify>,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections { max: max.max(1), next: AtomicU64::new(0), open: Mutex::new(HashMap::new()) }
    }

    fn open(&self) -> MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection: a free one, or that of the connection waiting longest for a
    /// request, which is closed; none if every connection is being answered.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open();
        if open.len() >= self.max {
            let longest = open.iter().filter_map(|(id, c)| c.waiting_since.map(|since| (since, *id))).min()?;
            if let Some(evicted) = open.remove(&longest.1) {
                evicted.evicted.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        open.insert(id, Open { waiting_since: Some(Instant::now()), evicted: evicted.clone() });
        Some(Slot { id, connections: self.clone(), evicted })
    }

    fn set_waiting(&self, id: u64, waiting_since: Option<Instant>) {
        if let Some(connection) = self.open().get_mut(&id) {
            connection.waiting_since = waiting_since;
        }
    }
}

impl Slot {
    /// Marks the connection busy (not to be cut) until the guard is dropped.
    fn busy(&self) -> Busy<'_> {
        self.connections.set_waiting(self.id, None);
        Busy(self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.open().remove(&self.id);
    }
}

struct Busy<'a>(&'a Slot);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.connections.set_waiting(self.0.id, Some(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_waiting_connection_makes_room() {
        let connections = Arc::new(Connections::new(2));
        let first = connections.admit().unwrap();
        let second = connections.admit().unwrap();
        let busy = second.busy();
        let third = connections.admit().expect("room made");
        assert!(!connections.open().contains_key(&first.id), "the waiting one was cut");
        assert!(connections.open().contains_key(&second.id), "the busy one was not");
        let _busy_too = third.busy();
        assert!(connections.admit().is_none(), "all busy: refused");
        drop(busy);
        assert!(connections.admit().is_some(), "idle again: it makes room");
    }
}
