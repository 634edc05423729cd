//! Starts the real `midge-broker` and `midge-mgmt` binaries on free ports, each test with its own
//! database, and gives tests an HTTP client for the API and MQTT clients for the broker.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const NODE: &str = "midge@127.0.0.1";
pub const SECRET: &str = "e2e-secret-5f1c-0b7d";

/// A binary of this workspace, built by `cargo test --workspace` next to the test executables.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run the tests with `cargo test --workspace`", path.display());
    path
}

/// A child process that is killed when dropped, with the address it logged on start and every line it
/// has logged since.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `command` and waits for its log line containing `marker` and `listen=ADDR`.
    fn start(mut command: Command, marker: &str) -> Process {
        command.stdout(Stdio::piped()).stderr(Stdio::inherit()).env("NO_COLOR", "1");
        let mut child = command.spawn().expect("process starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let marker = marker.to_string();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                if !sent && line.contains(&marker) {
                    if let Some(addr) = line.split("listen=").nth(1).and_then(|r| r.split_whitespace().next()) {
                        let _ = tx.send(addr.to_string());
                        sent = true;
                    }
                }
                if std::env::var_os("MIDGE_E2E_LOGS").is_some() {
                    eprintln!("{line}");
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).expect("process logs its address");
        Process { child, addr: addr.parse().expect("a socket address"), logs }
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB")
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill runs");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn start_broker(listen: &str) -> Process {
    start_broker_as(listen, NODE)
}

pub fn start_broker_as(listen: &str, node: &str) -> Process {
    start_broker_with(listen, node, &[])
}

/// The broker with further flags.
pub fn start_broker_with(listen: &str, node: &str, args: &[&str]) -> Process {
    let mut command = Command::new(bin("midge-broker"));
    command.args(["--listen", listen, "--node", node]).args(args).env("MIDGE_MGMT_SECRET", SECRET);
    // Each broker its own store.
    command.arg("--data-dir").arg(tempdir());
    Process::start(command, "midge broker listening")
}

pub fn start_mgmt(broker: SocketAddr, db: &std::path::Path) -> Process {
    start_mgmt_with(broker, db, None, &[])
}

/// The sidecar with the `admin` password given to its first start, and further flags.
pub fn start_mgmt_with(
    broker: SocketAddr,
    db: &std::path::Path,
    admin_password: Option<&str>,
    args: &[&str],
) -> Process {
    start_mgmt_of(&broker.to_string(), db, admin_password, args)
}

/// The sidecar of `brokers` (host:port, comma-separated).
pub fn start_mgmt_of(brokers: &str, db: &std::path::Path, admin_password: Option<&str>, args: &[&str]) -> Process {
    let mut command = Command::new(bin("midge-mgmt"));
    command
        .args(["--listen", "127.0.0.1:0", "--broker", brokers])
        // Each test's own dashboard port, found in the log ("dashboard listening").
        .args(["--dashboard-listen", "127.0.0.1:0"])
        .arg("--db")
        .arg(db)
        .args(args)
        .env("MIDGE_MGMT_SECRET", SECRET)
        .env_remove("MIDGE_ADMIN_PASSWORD");
    if let Some(password) = admin_password {
        command.env("MIDGE_ADMIN_PASSWORD", password);
    }
    Process::start(command, "midge-mgmt listening")
}

/// A fresh directory for one test's database.
pub fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir =
        std::env::temp_dir().join(format!("midge-e2e-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Broker and sidecar, running, with the sidecar connected and the node known.
pub struct Stack {
    pub broker: Process,
    pub mgmt: Process,
    pub dir: PathBuf,
    pub api: Api,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(&[]).await
    }

    /// A stack whose sidecar gets these flags too.
    pub async fn start_with(mgmt_args: &[&str]) -> Stack {
        Stack::start_full(&[], mgmt_args).await
    }

    /// A stack whose broker and sidecar get these flags too.
    pub async fn start_full(broker_args: &[&str], mgmt_args: &[&str]) -> Stack {
        let dir = tempdir();
        let broker = start_broker_with("127.0.0.1:0", NODE, broker_args);
        let mgmt = start_mgmt_with(broker.addr, &dir.join("mgmt.db"), None, mgmt_args);
        let api = Api::new(mgmt.addr);
        api.wait_for_node().await;
        Stack { broker, mgmt, dir, api }
    }

    pub async fn restart_mgmt(&mut self) {
        self.mgmt.kill();
        self.mgmt = start_mgmt(self.broker.addr, &self.dir.join("mgmt.db"));
        self.api = Api::new(self.mgmt.addr);
        self.api.wait_for_node().await;
    }

    /// Stops the broker and starts a new one on the same port.
    pub async fn restart_broker(&mut self) {
        let addr = self.broker.addr;
        self.broker.kill();
        self.broker = start_broker(&addr.to_string());
    }

    pub fn mqtt_port(&self) -> u16 {
        self.broker.addr.port()
    }

    /// Where the sidecar last said its dashboard listens.
    pub fn dashboard_addr(&self) -> SocketAddr {
        let logs = self.mgmt.logs();
        let line = logs.iter().rev().find(|l| l.contains("dashboard listening")).expect("the dashboard is listening");
        line.split("listen=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .expect("its address")
    }
}

/// HTTP client for the API, logged in as admin/public unless told otherwise.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    pub user: String,
    pub password: String,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
            user: "admin".into(),
            password: "public".into(),
        }
    }

    /// The same API, with requests coming from `source` (a loopback address such as 127.0.0.2).
    pub fn with_source(&self, source: &str) -> Api {
        let source: std::net::IpAddr = source.parse().expect("an IP address");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).local_address(source).build().unwrap();
        Api { http, ..self.clone() }
    }

    pub fn as_user(&self, user: &str, password: &str) -> Api {
        Api { user: user.into(), password: password.into(), ..self.clone() }
    }

    /// Any request; `path` is under `/api/v2/`, sent as written (no re-encoding).
    pub async fn send(&self, method: Method, path: &str, body: Option<&str>, auth: bool) -> (StatusCode, String) {
        let url = format!("{}/api/v2/{path}", self.base);
        let mut request = self.http.request(method, url);
        if auth {
            request = request.basic_auth(&self.user, Some(&self.password));
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// A request answered with HTTP 200 and a JSON envelope, returned whole.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let text = body.map(|b| b.to_string());
        let (status, text) = self.send(method.clone(), path, text.as_deref(), true).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    }

    /// The `result` of a successful call (code 0).
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let reply = self.call(method.clone(), path, body).await;
        assert_eq!(reply["code"], 0, "{method} {path}: {reply}");
        reply["result"].clone()
    }

    pub async fn get(&self, path: &str) -> Value {
        self.ok(Method::GET, path, None).await
    }

    /// The code of a call that should fail (and its message is present).
    pub async fn code(&self, method: Method, path: &str, body: Option<Value>) -> u64 {
        let reply = self.call(method.clone(), path, body).await;
        assert!(reply["message"].is_string(), "{method} {path}: {reply}");
        reply["code"].as_u64().unwrap()
    }

    /// A call with a raw body (for non-JSON input).
    pub async fn code_raw(&self, method: Method, path: &str, body: &str) -> u64 {
        let (status, text) = self.send(method, path, Some(body), true).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["code"].as_u64().unwrap()
    }

    /// Waits until the sidecar knows the broker node.
    pub async fn wait_for_node(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, text) = self.send(Method::GET, "management/nodes", None, true).await;
            if status == StatusCode::OK && text.contains(NODE) && text.contains("\"code\":0") {
                return;
            }
            assert!(Instant::now() < deadline, "sidecar never saw the node: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An MQTT client (rumqttc) whose event loop runs in the background, with received publishes in a
/// channel.
pub struct Client {
    pub client: rumqttc::AsyncClient,
    pub messages: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    connected: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(port: u16, client_id: &str) -> Client {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let (up, connected) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = up.send(true);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = up.send(false);
                        return;
                    }
                }
            }
        });
        let mut c = Client { client, messages, connected, task };
        tokio::time::timeout(Duration::from_secs(5), c.connected.wait_for(|up| *up)).await.unwrap().unwrap();
        c
    }

    /// Subscribes and waits until the broker has the subscription.
    pub async fn subscribe(&self, api: &Api, client_id: &str, filter: &str) {
        self.client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let subs = api.get(&format!("subscriptions/{client_id}")).await;
            if subs["objects"].as_array().unwrap().iter().any(|s| s["topic"] == filter) {
                return;
            }
            assert!(Instant::now() < deadline, "subscription never appeared");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn next_message(&mut self) -> rumqttc::Publish {
        tokio::time::timeout(Duration::from_secs(5), self.messages.recv()).await.expect("a message in time").unwrap()
    }

    /// True once the broker has closed this client's connection.
    pub async fn wait_closed(&mut self) {
        tokio::time::timeout(Duration::from_secs(5), self.connected.wait_for(|up| !*up)).await.unwrap().unwrap();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
