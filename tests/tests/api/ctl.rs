//! `midge-ctl` against the real sidecar and broker: tables and `--json`, each command family, and the
//! exit codes scripts rely on.

use std::process::Command;

use serde_json::Value;

use crate::helpers::*;

struct Ctl<'a> {
    api: &'a Api,
}

impl Ctl<'_> {
    /// Runs midge-ctl with the stack's address and login in flags: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_as(&self.api.user, &self.api.password, args)
    }

    fn run_as(&self, user: &str, password: &str, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(bin("midge-ctl"))
            .args(["--url", &self.api.base, "--user", user, "--password", password])
            .args(args)
            .env_remove("MIDGE_CTL_URL")
            .env("HOME", tempdir())
            .output()
            .expect("midge-ctl runs");
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
        (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
    }

    /// The JSON a successful `--json` command printed.
    fn json(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.run(&[&["--json"], args].concat());
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// The table a successful command printed.
    fn table(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    }
}

#[tokio::test]
async fn midge_ctl_drives_the_api() {
    let stack = Stack::start().await;
    let ctl = Ctl { api: &stack.api };
    let client = Client::connect(stack.mqtt_port(), "ctl-client").await;
    client.subscribe(&stack.api, "ctl-client", "ctl/#").await;

    // Status, cluster, broker figures.
    assert!(ctl.table(&["status"]).contains("is running"), "status");
    let cluster = ctl.table(&["cluster", "status"]);
    assert!(cluster.starts_with("name") && cluster.contains(NODE), "{cluster}");
    let stats = ctl.json(&["broker", "stats"]);
    assert_eq!(stats[NODE]["clients/count"], 1);
    let metrics = ctl.table(&["broker", "metrics"]);
    assert!(metrics.lines().any(|l| l.starts_with(NODE) && l.contains("packets/connect")), "{metrics}");

    // Clients, sessions, subscriptions, routes: tables by default, JSON on request.
    let clients = ctl.table(&["clients", "list"]);
    let header = clients.lines().next().unwrap();
    assert!(header.starts_with("client_id") && header.contains("proto_ver"), "{clients}");
    assert!(clients.lines().any(|l| l.starts_with("ctl-client ")), "{clients}");
    assert_eq!(ctl.json(&["clients", "show", "ctl-client"])[0]["client_id"], "ctl-client");
    assert_eq!(ctl.json(&["sessions", "show", "ctl-client"])[0]["subscriptions"], 1);
    assert!(ctl.table(&["routes", "list"]).contains("ctl/#"));
    assert_eq!(ctl.json(&["routes", "show", "ctl/#"])[0]["node"], NODE);
    ctl.table(&["subscriptions", "add", "ctl-client", "more/+", "1"]);
    let subscriptions = ctl.json(&["subscriptions", "show", "ctl-client"]);
    let topics: Vec<&str> = subscriptions.as_array().unwrap().iter().map(|s| s["topic"].as_str().unwrap()).collect();
    assert!(topics.contains(&"more/+") && topics.contains(&"ctl/#"), "{topics:?}");
    ctl.table(&["subscriptions", "del", "ctl-client", "more/+"]);
    assert_eq!(ctl.json(&["subscriptions", "list"]).as_array().unwrap().len(), 1);

    // Plugins and listeners.
    let plugins = ctl.table(&["plugins", "list"]);
    assert!(plugins.lines().any(|l| l.contains("emq_retainer")), "{plugins}");
    assert!(ctl.table(&["plugins", "unload", "emq_retainer"]).contains("unloaded"));
    let (code, _, err) = ctl.run(&["plugins", "unload", "emq_retainer"]);
    assert_eq!(code, 1, "unloading twice is refused by the API: {err}");
    assert!(err.contains("111"), "{err}");
    ctl.table(&["plugins", "load", "emq_retainer"]);
    assert!(ctl.table(&["listeners"]).contains("mqtt:tcp"));

    // Recon, through the API's own route and through midge-ctl.
    let recon = stack.api.get(&format!("nodes/{NODE}/recon?top=1")).await;
    assert_eq!(recon["connections"]["count"], 1, "{recon}");
    assert!(recon["memory"]["rss_bytes"].as_u64().unwrap() > 0, "{recon}");
    let text = ctl.table(&["recon", "--top", "3"]);
    assert!(text.starts_with(&format!("node {NODE}")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("memory.rss_bytes ")), "{text}");
    assert_eq!(ctl.json(&["recon"])[NODE]["connections"]["count"], 1);

    // Kick: done, then refused (112, exit 1) once the client is gone.
    assert!(ctl.table(&["clients", "kick", "ctl-client"]).contains("kicked"));
    let (code, _, err) = ctl.run(&["clients", "kick", "ctl-client"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("112"), "{err}");
    let (code, _, _) = ctl.run(&["clients", "show", "nobody"]);
    assert_eq!(code, 1);

    // Admins: add, log in as, change the password, delete.
    ctl.table(&["admins", "add", "ops", "ops-secret-1", "operator"]);
    assert!(ctl.table(&["admins", "list"]).lines().any(|l| l.starts_with("ops ")));
    let as_ops = |password: &str, args: &[&str]| ctl.run_as("ops", password, args).0;
    assert_eq!(as_ops("ops-secret-1", &["admins", "passwd", "ops", "ops-secret-2"]), 0);
    assert_eq!(as_ops("ops-secret-1", &["admins", "list"]), 4, "the old password no longer works");
    assert_eq!(as_ops("ops-secret-2", &["admins", "list"]), 0);
    ctl.table(&["admins", "del", "ops"]);

    // Usage errors are clap's (2); an unreachable sidecar is 3.
    assert_eq!(ctl.run(&["clients", "frobnicate"]).0, 2);
    let unreachable = Command::new(bin("midge-ctl"))
        .args(["--url", "http://127.0.0.1:9", "clients", "list"])
        .env("HOME", tempdir())
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));
    drop(client);
}

/// Credentials from the environment and from a config file, flags over both.
#[tokio::test]
async fn midge_ctl_credentials_from_env_and_file() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let dir = tempdir();
    let file = dir.join("ctl.toml");
    std::fs::write(
        &file,
        format!("url = \"{}\"\nuser = \"{}\"\npassword = \"{}\"\n", api.base, api.user, api.password),
    )
    .unwrap();
    let run = |command: &mut Command| command.env("HOME", &dir).output().unwrap().status.code();
    let ctl = || Command::new(bin("midge-ctl"));
    assert_eq!(run(ctl().args(["--config", file.to_str().unwrap(), "admins", "list"])), Some(0));
    // The same from $HOME/.config/midge/ctl.toml.
    std::fs::create_dir_all(dir.join(".config/midge")).unwrap();
    std::fs::copy(&file, dir.join(".config/midge/ctl.toml")).unwrap();
    assert_eq!(run(ctl().args(["admins", "list"])), Some(0));
    // The environment over the file, and a flag over the environment.
    assert_eq!(run(ctl().env("MIDGE_CTL_PASSWORD", "wrong").args(["admins", "list"])), Some(4));
    let password = api.password.as_str();
    assert_eq!(run(ctl().env("MIDGE_CTL_PASSWORD", "wrong").args(["--password", password, "admins", "list"])), Some(0));
}
