//! The broker binary: read configuration, start, reload certificates on SIGHUP, and stop cleanly on
//! SIGTERM or Ctrl-C.

use std::io::{IsTerminal, Read};

use anyhow::Context as _;
use midge_broker::config::{Command, Config};
use midge_broker::settings::LogReload;
use midge_broker::Broker;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, EnvFilter};

fn main() -> anyhow::Result<()> {
    midge_broker::runtime().context("cannot start the runtime")?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let (config, command) = Config::from_args()?;
    match command {
        Some(Command::HashPassword) => {
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            println!("{}", midge_passwords::hash_now(password.as_bytes())?);
            return Ok(());
        }
        Some(Command::Probe { address }) => {
            let address = address.unwrap_or_else(|| format!("127.0.0.1:{}", config.listen.port()));
            midge_broker::probe::probe(&address, std::time::Duration::from_secs(3)).map_err(anyhow::Error::msg)?;
            return Ok(());
        }
        None => {}
    }
    let log_reload = init_logging(&config.log_level)?;

    let shutdown = CancellationToken::new();
    let broker = Broker::bind(config, shutdown.clone(), Some(log_reload)).await?;
    let certificates = broker.certificates();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).expect("can install SIGHUP handler");
        while hangup.recv().await.is_some() {
            // The outcome is logged listener by listener.
            let _ = tokio::task::spawn_blocking({
                let certificates = certificates.clone();
                move || certificates.reload()
            })
            .await;
        }
    });
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    broker.run().await;
    Ok(())
}

/// Installs the log subscriber; the returned hook changes its filter at runtime (`log.console.level`).
/// The log filter for a `log_level`. rustls warns about what clients send (an IP address as SNI, as
/// mosquitto does): noise at the broker's level, so its own logs start at error unless named. The
/// store's engine (fjall, on lsm_tree) narrates its recovery at info: warnings only, unless named.
fn log_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let mut filter = level.to_string();
    for (target, floor) in [("rustls", "error"), ("fjall", "warn"), ("lsm_tree", "warn")] {
        if !level.contains(target) {
            filter.push_str(&format!(",{target}={floor}"));
        }
    }
    EnvFilter::try_new(filter)
}

fn init_logging(filter: &str) -> anyhow::Result<LogReload> {
    let filter = log_filter(filter).context("invalid log_level")?;
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
        .init();
    Ok(Box::new(move |level: &str| {
        let filter = log_filter(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
