//! `--metrics-listen`: this node's metrics and stats for a Prometheus scrape, at `GET /metrics`, in the
//! same names the sidecar's `/metrics` uses (`midge_shared::prometheus`). A scrape is one small request
//! a few times a minute, so this is the least HTTP/1.1 that serves it: read the request head, answer,
//! close. No authentication: bind it to a private address, as one does a node exporter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Node;

/// A request head larger than this is no scrape.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait for a turn.
const MAX_CONCURRENT: usize = 16;

/// Serves scrapes on `listener` until the node shuts down.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let turns = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let accepted = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(turn) = turns.clone().acquire_owned().await else { return };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &node).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
            drop(turn);
        });
    }
}

async fn answer(mut stream: TcpStream, node: &Node) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let response = match (method, path) {
        ("GET", "/metrics") => response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &exposition(node)),
        (_, "/metrics") => response("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n"),
        _ => response("404 Not Found", "text/plain; charset=utf-8", "metrics are at /metrics\n"),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head (a blank line), or what came before the client stopped.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// This node's figures, as the sidecar would write them for it.
fn exposition(node: &Node) -> String {
    let metrics = node.metrics.snapshot().into_iter().map(|(m, v)| (m.name().to_string(), v)).collect();
    let stats = node.stats.snapshot().into_iter().collect();
    midge_shared::prometheus::exposition(
        &BTreeMap::from([(node.name.clone(), metrics)]),
        &BTreeMap::from([(node.name.clone(), stats)]),
    )
}

/// Binds the metrics listener, if one is configured.
pub async fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => TcpListener::bind(addr).await.map(Some),
        None => Ok(None),
    }
}
