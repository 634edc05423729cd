//! A nats-server of a test's own (Debian's `nats-server`, JetStream on, free ports), for the tests of
//! clustered brokers, with what they read of it: the subjects its clients subscribe to.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::{tempdir, WAIT};

/// A nats-server of the test's own, with JetStream, on free ports (client and monitoring), killed
/// when dropped.
pub struct Nats {
    child: Child,
    store: TempDir,
    pub url: String,
    monitor: SocketAddr,
}

pub async fn nats() -> Nats {
    let store = TempDir(tempdir());
    let (child, url, monitor) = nats_server(&store, "-1", "-1", &[]).await;
    Nats { child, store, url, monitor }
}

/// Three nats-servers routed into one NATS cluster, JetStream on each (so buckets get three
/// replicas); a test puts each node on a server of its own.
pub async fn nats_cluster() -> Vec<Nats> {
    let ports: Vec<u16> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let routes: Vec<String> = ports.iter().map(|port| format!("nats://127.0.0.1:{port}")).collect();
    let routes = routes.join(",");
    let mut servers = Vec::new();
    for (n, port) in ports.iter().enumerate() {
        let store = TempDir(tempdir());
        let (name, listen) = (format!("s{n}"), format!("nats://127.0.0.1:{port}"));
        let cluster = ["-n", &name, "--cluster_name", "midge-test", "--cluster", &listen, "--routes", &routes];
        let (child, url, monitor) = nats_server(&store, "-1", "-1", &cluster).await;
        servers.push(Nats { child, store, url, monitor });
    }
    servers
}

/// Starts nats-server on `port` and `monitor_port` (`-1`: any free one), with `extra` arguments;
/// where it listens.
async fn nats_server(store: &TempDir, port: &str, monitor_port: &str, extra: &[&str]) -> (Child, String, SocketAddr) {
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", port, "-m", monitor_port, "-js", "-sd"])
        .arg(&store.0)
        .args(extra)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server installed (Debian's nats-server package; .ci/run installs it)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut url, mut monitor) = (None, None);
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let port = || line.rsplit(':').next().unwrap().trim().parse::<u16>().unwrap();
            if line.contains("Listening for client connections on") {
                url = Some(format!("nats://127.0.0.1:{}", port()));
            } else if line.contains("Starting http monitor on") {
                monitor = Some(SocketAddr::from(([127, 0, 0, 1], port())));
            }
            if url.is_some() && monitor.is_some() {
                break;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "nats-server did not say where it listens");
    // Keep reading its log, so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url.unwrap(), monitor.unwrap())
}

impl Nats {
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }

    /// A new server on the same ports and store, after `kill`.
    pub async fn restart(&mut self) {
        let port = self.url.rsplit(':').next().unwrap().to_string();
        let (child, _, _) = nats_server(&self.store, &port, &self.monitor.port().to_string(), &[]).await;
        self.child = child;
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }
}

pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Nats {
    /// Waits (a few seconds at most) until the server's subjects for routes are `want`.
    pub async fn wait_for_routes(&self, want: &[&str], what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let routes = self.routes().await;
            if routes == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: still {routes:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The subjects of routes (MQTT filters) among `subjects`.
    pub async fn routes(&self) -> Vec<String> {
        self.subjects().await.into_iter().filter(|s| s.starts_with("midge.m.")).collect()
    }

    /// The subjects this server's clients are subscribed to, from its monitoring endpoint.
    pub async fn subjects(&self) -> Vec<String> {
        let mut stream = tokio::net::TcpStream::connect(self.monitor).await.unwrap();
        stream.write_all(b"GET /connz?subs=1 HTTP/1.0\r\nHost: nats\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1;
        let connz: serde_json::Value = serde_json::from_str(body).unwrap();
        let mut subjects: Vec<String> = connz["connections"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["subscriptions_list"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s.as_str().map(str::to_string))
            // A client's inbox for the answers to its requests.
            .filter(|s| !s.starts_with("_INBOX."))
            .collect();
        subjects.sort();
        subjects
    }
}
