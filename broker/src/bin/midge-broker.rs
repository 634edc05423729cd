//! The broker binary: read configuration, start, and stop cleanly on SIGTERM or Ctrl-C.

use std::io::{IsTerminal, Read};

use anyhow::Context as _;
use midge_broker::config::{Command, Config};
use midge_broker::Broker;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, command) = Config::from_args()?;
    if let Some(Command::HashPassword) = command {
        let mut password = String::new();
        std::io::stdin().read_to_string(&mut password)?;
        let password = password.trim_end_matches(['\r', '\n']);
        println!(
            "{}",
            midge_broker::auth::hash_password(password.as_bytes())?
        );
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(EnvFilter::try_new(&config.log_level).context("invalid log_level")?)
        .init();

    let shutdown = CancellationToken::new();
    let broker = Broker::bind(config, shutdown.clone()).await?;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    broker.run().await;
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
