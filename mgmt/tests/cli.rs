//! The `midge-mgmt` binary's command line. (Having integration tests here also makes
//! `cargo test --workspace` build the binary that the end-to-end tests in `tests/` start.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_midge-mgmt");

#[test]
fn help_names_the_stable_flags_and_variables() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for stable in ["--listen", "--broker", "--db", "MIDGE_MGMT_SECRET", "MIDGE_ADMIN_PASSWORD", "healthcheck"] {
        assert!(help.contains(stable), "--help lacks {stable}");
    }
    assert!(help.contains("0.0.0.0:8080"), "the default listener is documented");
}

#[test]
fn healthcheck_fails_where_nothing_listens() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let status = Command::new(BIN).args(["--listen", &free.to_string(), "healthcheck"]).status().unwrap();
    assert!(!status.success());
}

#[test]
fn a_bad_broker_address_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("midge-mgmt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--broker", "no-port-here", "--db"])
        .arg(dir.join("m.db"))
        .env("MIDGE_MGMT_SECRET", "a-secret-long-enough")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-port-here"));
}

/// The sidecar exists to use the control channel: without a secret the broker would accept, it does not
/// start, and says why.
#[test]
fn a_missing_short_or_empty_secret_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("midge-mgmt-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for secret in [None, Some(""), Some("fifteen-bytes!!")] {
        let mut command = Command::new(BIN);
        command.args(["--listen", "127.0.0.1:0", "--db"]).arg(dir.join("m.db")).env_remove("MIDGE_MGMT_SECRET");
        if let Some(secret) = secret {
            command.env("MIDGE_MGMT_SECRET", secret);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success(), "secret {secret:?}: started anyway");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("MIDGE_MGMT_SECRET"), "secret {secret:?}: {stderr}");
    }
    assert!(!dir.join("m.db").exists(), "nothing is created before the secret is checked");
}
