//! The sidecar binary: read settings, build, serve until SIGTERM or Ctrl-C.

use std::io::IsTerminal;

use clap::Parser;
use midge_mgmt::config::{Command, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[rocket::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Some(Command::Healthcheck { max_silence }) = config.command {
        return healthcheck(config.listen.port(), max_silence);
    }
    // Installed without the `log` bridge: Rocket's own chatter (a warning per 401) stays out of the log.
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(EnvFilter::try_new(&config.log_level)?)
        .finish();
    tracing::subscriber::set_global_default(subscriber)?;
    let sidecar = midge_mgmt::startup::build(config).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    sidecar.run(shutdown).await?;
    tracing::info!("midge-mgmt stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// GET /status over plain HTTP/1.0 with the standard library (the runtime image has no curl); healthy
/// if it answers and a broker answered the sidecar within `max_silence` seconds.
fn healthcheck(port: u16, max_silence: u64) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(3);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status_line = response.lines().next().unwrap_or_default();
    anyhow::ensure!(status_line.contains(" 200 "), "unhealthy: {status_line}");
    let silence = response
        .lines()
        .find_map(|line| line.strip_prefix("broker_silence_secs="))
        .and_then(|secs| secs.trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("unhealthy: /status does not say when a broker last answered"))?;
    anyhow::ensure!(silence < max_silence, "unhealthy: no broker has answered for {silence} s");
    Ok(())
}
