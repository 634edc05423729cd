//! midge-ctl without a sidecar: its usage, and the exit codes a script gets before any API answers.
//! (With a sidecar: tests/tests/api/ctl.rs.)

use std::process::Command;

fn ctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge-ctl"));
    // No config file of the user running the tests is read.
    command.env("HOME", std::env::temp_dir().join("midge-ctl-no-home")).env_remove("MIDGE_CTL_URL");
    command
}

#[test]
fn help_names_the_command_families() {
    let output = ctl().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for family in ["status", "broker", "cluster", "clients", "sessions", "routes", "subscriptions", "plugins"] {
        assert!(help.contains(family), "{family} not in\n{help}");
    }
}

#[test]
fn exit_codes_without_a_sidecar() {
    // Usage: clap's 2.
    assert_eq!(ctl().args(["clients", "frobnicate"]).output().unwrap().status.code(), Some(2));
    assert_eq!(ctl().args(["subscriptions", "add", "c", "t", "3"]).output().unwrap().status.code(), Some(2));
    // Nothing listens there: 3, and the message says where it tried.
    let output = ctl().args(["--url", "http://127.0.0.1:9", "clients", "list"]).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("127.0.0.1:9"));
    // A config file with a key it does not know: 2, naming the file.
    let file = std::env::temp_dir().join(format!("midge-ctl-bad-{}.toml", std::process::id()));
    std::fs::write(&file, "url = \"http://127.0.0.1:9\"\npasswd = \"typo\"\n").unwrap();
    let output = ctl().arg("--config").arg(&file).arg("status").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains(file.to_str().unwrap()));
    let _ = std::fs::remove_file(file);
}
