//! Midge across nodes: two brokers clustered through one nats-server on loopback (Debian's package),
//! measured against one broker alone in the same run: publishers on one node, subscribers on the
//! other, so every message crosses NATS.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A nats-server with JetStream on a free loopback port, killed when dropped.
pub struct Nats {
    child: Child,
    dir: std::path::PathBuf,
    pub url: String,
}

impl Nats {
    pub fn start(port: u16) -> anyhow::Result<Nats> {
        let dir = std::env::temp_dir().join(format!("midge-bench-nats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nats-server not found (Debian's nats-server package)")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server does not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nats { child, dir, url: format!("nats://{addr}") })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One line of the cluster table: a figure on one node and across two.
pub struct Row {
    pub scenario: String,
    pub unit: &'static str,
    pub one_node: f64,
    pub across: f64,
    pub note: String,
}

pub fn print(rows: &[Row]) {
    println!("\n| scenario (Midge) | unit | one node | across two nodes | across ÷ one |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        let ratio = if row.one_node > 0.0 { format!("{:.2}", row.across / row.one_node) } else { "—".into() };
        println!("| {} | {} | {:.0} | {:.0} | {ratio} |", row.scenario, row.unit, row.one_node, row.across);
    }
    for row in rows.iter().filter(|r| !r.note.is_empty()) {
        println!("\n- {}: {}", row.scenario, row.note);
    }
}
