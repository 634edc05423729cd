//! `midge-ctl`: the `emqttd_ctl` commands EMQ operators know, over the sidecar's `/api/v2`. Tables for
//! people, `--json` for scripts; the exit code says how it went (0 done, 1 refused by the API, 2 usage,
//! 3 sidecar unreachable or a bad reply, 4 wrong credentials).

mod api;
mod commands;
mod credentials;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "midge-ctl", version, about = "Operate a Midge cluster through its management sidecar")]
struct Cli {
    /// The sidecar's address.
    #[arg(long, env = "MIDGE_CTL_URL", global = true)]
    url: Option<String>,
    /// An admin user of the API [default: admin].
    #[arg(long, env = "MIDGE_CTL_USER", global = true)]
    user: Option<String>,
    /// Its password [default: public].
    #[arg(long, env = "MIDGE_CTL_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// A TOML file with `url`, `user` and `password` [default: ~/.config/midge/ctl.toml, if it exists].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print the API's result as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Whether the node answers.
    Status,
    /// This cluster's statistics or metrics.
    Broker {
        #[command(subcommand)]
        what: BrokerCommand,
    },
    /// The cluster's nodes.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// Connected clients.
    Clients {
        #[command(subcommand)]
        what: ClientsCommand,
    },
    /// Sessions, online and offline.
    Sessions {
        #[command(subcommand)]
        what: ListOrShow,
    },
    /// The route table: which filters have subscribers on which node.
    Routes {
        #[command(subcommand)]
        what: ListOrShow,
    },
    /// Subscriptions, and subscribing a connected client.
    Subscriptions {
        #[command(subcommand)]
        what: SubscriptionsCommand,
    },
    /// Plugins on every node.
    Plugins {
        #[command(subcommand)]
        what: PluginsCommand,
    },
    /// Every node's listeners and their connections.
    Listeners,
    /// Every node's runtime diagnostics (emq_recon): memory, tasks, queues, the longest queues.
    Recon {
        /// How many clients with the longest queues to show.
        #[arg(long, default_value_t = 10)]
        top: u64,
    },
    /// The API's admin users.
    Admins {
        #[command(subcommand)]
        what: AdminsCommand,
    },
}

#[derive(Subcommand)]
pub enum BrokerCommand {
    Stats,
    Metrics,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    Status,
}

#[derive(Subcommand)]
pub enum ClientsCommand {
    List,
    Show {
        client_id: String,
    },
    /// Disconnect a client.
    Kick {
        client_id: String,
    },
}

#[derive(Subcommand)]
pub enum ListOrShow {
    List,
    /// One client's (sessions) or one filter's (routes).
    Show {
        key: String,
    },
}

#[derive(Subcommand)]
pub enum SubscriptionsCommand {
    List,
    Show {
        client_id: String,
    },
    /// Subscribe a connected client.
    Add {
        client_id: String,
        topic: String,
        #[arg(default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
    },
    /// Unsubscribe a client.
    Del {
        client_id: String,
        topic: String,
    },
}

#[derive(Subcommand)]
pub enum PluginsCommand {
    List,
    /// Start a plugin on every node.
    Load {
        name: String,
    },
    /// Stop a plugin on every node.
    Unload {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum AdminsCommand {
    List,
    Add {
        username: String,
        /// Named apart from the global `--password` (the login's), which clap would otherwise merge it with.
        #[arg(value_name = "PASSWORD")]
        new_user_password: String,
        #[arg(default_value = "")]
        tags: String,
    },
    /// Change a password; the old one is needed, and is the login's when changing one's own.
    Passwd {
        username: String,
        new_password: String,
        #[arg(long)]
        old: Option<String>,
    },
    Del {
        username: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = credentials::Partial { url: cli.url, user: cli.user, password: cli.password };
    let credentials = match credentials::resolve(flags, cli.config.as_deref()) {
        Ok(credentials) => credentials,
        Err(e) => {
            eprintln!("midge-ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let api = api::Api::new(credentials);
    match commands::run(&api, cli.command).await {
        Ok((result, render)) => {
            output::print(&result, &render, cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("midge-ctl: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
