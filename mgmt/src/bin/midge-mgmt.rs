//! The sidecar binary: read settings, build, serve until SIGTERM or Ctrl-C.

use std::io::IsTerminal;

use clap::Parser;
use midge_mgmt::config::Config;
use tracing_subscriber::EnvFilter;

#[rocket::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Installed without the `log` bridge: Rocket's own chatter (a warning per 401) stays out of the log.
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(EnvFilter::try_new(&config.log_level)?)
        .finish();
    tracing::subscriber::set_global_default(subscriber)?;
    let rocket = midge_mgmt::startup::build(config).await?;
    rocket.launch().await?;
    tracing::info!("midge-mgmt stopped");
    Ok(())
}
