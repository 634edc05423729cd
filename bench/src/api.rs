//! The management API's latency, Midge only (Mosquitto has no such API): the sidecar is started
//! against the broker under test with `clients` idle MQTT clients connected, and each route is asked
//! `requests` times, one after another, over one keep-alive HTTP connection, as a dashboard does.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mqtt::histogram;
use crate::scenarios::{open_idle, Target};

/// Shared by the broker the bench starts and the sidecar it starts here.
pub const MGMT_SECRET: &str = "midge-bench-management-secret";
/// The broker's node name (its default).
const NODE: &str = "midge@127.0.0.1";

pub struct RouteLatency {
    pub route: String,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// The sidecar process, stopped when dropped.
struct Sidecar {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn measure(
    mgmt: &Path,
    broker: &Target,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Vec<RouteLatency>> {
    let listen: SocketAddr = format!("127.0.0.1:{}", crate::free_port()?).parse()?;
    let dir = std::env::temp_dir().join(format!("midge-bench-mgmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(mgmt)
        .args(["--listen", &listen.to_string(), "--broker", &broker.endpoint.addr.to_string()])
        .args(["--dashboard-listen", "off"])
        .arg("--db")
        .arg(dir.join("midge-mgmt.db"))
        .env("MIDGE_MGMT_SECRET", MGMT_SECRET)
        .env("MIDGE_ADMIN_PASSWORD", "public")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", mgmt.display()))?;
    let _sidecar = Sidecar { child, dir };
    let mut http = Http::connect(listen).await?;
    http.until_ok(&format!("/api/v2/management/nodes/{NODE}"), Duration::from_secs(30)).await?;

    eprintln!("    {clients} idle MQTT clients");
    let _idle = open_idle(&broker.endpoint, clients, 200).await?;
    let last_page = clients.div_ceil(100).max(1);
    let routes = [
        format!("/api/v2/management/nodes/{NODE}"),
        format!("/api/v2/monitoring/stats/{NODE}"),
        format!("/api/v2/nodes/{NODE}/clients?curr_page=1&page_size=100"),
        format!("/api/v2/nodes/{NODE}/clients?curr_page={last_page}&page_size=100"),
        "/api/v2/users".to_string(),
    ];
    let mut results = Vec::new();
    for route in routes {
        for _ in 0..requests / 10 {
            http.get(&route).await?; // warm up
        }
        let mut hist = histogram();
        for _ in 0..requests {
            let started = Instant::now();
            let (status, body) = http.get(&route).await?;
            let _ = hist.record((started.elapsed().as_micros() as u64).max(1));
            if status != 200 || !body.starts_with(b"{\"code\":0") {
                bail!("{route}: {status} {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
            }
        }
        let (p50_us, p99_us) = (hist.value_at_quantile(0.5), hist.value_at_quantile(0.99));
        eprintln!("    {route}: p50 {p50_us} µs  p99 {p99_us} µs");
        results.push(RouteLatency { route, p50_us, p99_us });
    }
    Ok(results)
}

/// Just enough HTTP/1.1 for GETs with Basic auth over one keep-alive connection.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(Http { stream, buf: Vec::new() });
                }
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(e).context("the sidecar never listened"),
            }
        }
    }

    /// Asks until the answer is `{"code":0,...}` (the sidecar has found the broker).
    async fn until_ok(&mut self, path: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let (_, body) = self.get(path).await?;
            if body.starts_with(b"{\"code\":0") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the sidecar never reached the broker: {}", String::from_utf8_lossy(&body));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        // admin:public
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Basic YWRtaW46cHVibGlj\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await?;
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status")?;
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no content-length")?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok((status, body))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the sidecar closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
