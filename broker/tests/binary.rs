//! The `midge-broker` binary itself: its command line, environment, and clean exit on SIGTERM.

mod helpers;

use std::process::Stdio;
use std::time::Duration;

use helpers::*;
use midge_broker::protocol::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_midge-broker");

/// A running `midge-broker`, killed when dropped.
struct Running {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    /// The lines it logged up to and with the one that gave its address.
    start_log: Vec<String>,
}

/// Starts the binary as `command` says and waits until it logs where it listens; the rest of its log is
/// read (and dropped) in the background.
async fn run_broker(mut command: Command) -> Running {
    // Each broker its own store, unless the test chose one.
    if !command.as_std().get_envs().any(|(key, _)| key == "MIDGE_DATA_DIR") {
        command.env("MIDGE_DATA_DIR", tempdir());
    }
    let mut child = command.env("NO_COLOR", "1").stdout(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (start_log, addr) = tokio::time::timeout(WAIT, async {
        let mut start_log = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            start_log.push(line.clone());
            if let Some(rest) = line.split("listen=").nth(1) {
                return (start_log, rest.split_whitespace().next().unwrap().parse().unwrap());
            }
        }
        panic!("broker exited before listening: {start_log:?}");
    })
    .await
    .expect("broker logs its address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Running { child, addr, start_log }
}

#[tokio::test]
async fn help_documents_every_config_key() {
    let output = Command::new(BIN).arg("--help").output().await.unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let keys = toml::Table::try_from(Config::default()).unwrap();
    // Keys left out of the default (optional ones) are named here.
    let mut names: Vec<String> = keys.keys().cloned().collect();
    names.extend(
        [
            "users_file",
            "acl_file",
            "mgmt_secret",
            "ssl_listen",
            "ws_listen",
            "wss_listen",
            "certfile",
            "keyfile",
            "cacertfile",
        ]
        .map(String::from),
    );
    for key in names {
        let flag = format!("--{}", key.replace('_', "-"));
        let env = format!("MIDGE_{}", key.to_uppercase());
        assert!(help.contains(&flag), "--help lacks {flag}");
        assert!(help.contains(&env), "--help lacks {env}");
    }
    for stable in ["--config", "--listen", "--node", "--acl-file", "--allow-anonymous", "MIDGE_LISTEN", "MIDGE_NODE"] {
        assert!(help.contains(stable), "--help lacks {stable}");
    }
}

#[tokio::test]
async fn listens_where_the_environment_says_and_exits_cleanly_on_sigterm() {
    let mut command = Command::new(BIN);
    command.env("MIDGE_LISTEN", "127.0.0.1:0").env("MIDGE_NODE", "envnode@127.0.0.1");
    let Running { mut child, addr, start_log } = run_broker(command).await;
    assert!(start_log.last().unwrap().contains("envnode@127.0.0.1"), "{start_log:?}");
    let mut client = Raw::connected(addr, "c").await;
    client.ping().await;
    let probe = Command::new(BIN).args(["probe", &addr.to_string()]).output().await.unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.expect("exits in time").unwrap();
    assert!(status.success(), "exit status {status:?}");
    client.expect_closed().await;
}

#[tokio::test]
async fn bad_config_is_a_clear_error() {
    let dir = tempdir();
    let file = dir.join("midge.toml");
    std::fs::write(&file, "no_such_key = 1\n").unwrap();
    let output = Command::new(BIN).arg("--config").arg(&file).output().await.unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_key"));

    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--acl-file", "/nonexistent/acl.conf"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/acl.conf"));

    let output =
        Command::new(BIN).args(["--listen", "127.0.0.1:0", "--ssl-listen", "127.0.0.1:0"]).output().await.unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("certfile is required"), "{output:?}");
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `--ssl-listen` with a certificate opens a TLS listener; SIGHUP makes it read the files again, and
/// the connection made before stays up.
#[tokio::test]
async fn sighup_reloads_the_certificates() {
    let pki = pki::Pki::new("midge-ca");
    let first = pki.server("first");
    let ssl = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(BIN);
    command
        .env("MIDGE_LISTEN", "127.0.0.1:0")
        .env("MIDGE_SSL_LISTEN", ssl.to_string())
        .env("MIDGE_CERTFILE", &first.cert)
        .env("MIDGE_KEYFILE", &first.key);
    let Running { child, .. } = run_broker(command).await;
    let connector = pki::connector(&pki.ca, None);
    let presented = |stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
        cn
    };
    let mut stream = None;
    for _ in 0..50 {
        match pki::tls_connect(ssl, &connector).await {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let stream = stream.expect("the TLS listener answers");
    assert_eq!(presented(&stream), "first");
    let mut early = Raw::over(stream);
    assert_eq!(early.connack(connect_packet("early", true)).await, Some(ConnectReturnCode::Accepted));

    let second = pki.server("second");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().await.unwrap().success());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stream = pki::tls_connect(ssl, &connector).await.unwrap();
        if presented(&stream) == "second" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new certificate is not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    early.ping().await;
}

#[tokio::test]
async fn hash_password_makes_a_usable_users_file_line() {
    use tokio::io::AsyncWriteExt;
    let mut child =
        Command::new(BIN).arg("hash-password").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"pa55word\n").await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let users = midge_broker::auth::Users::parse(&format!("u:{}", hash.trim())).unwrap();
    let hasher = midge_passwords::Hasher::new(1, 1);
    assert!(hasher.verify(users.hash_of("u"), b"pa55word").await.unwrap());
}

#[tokio::test]
async fn probe_fails_where_no_broker_listens() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let probe = Command::new(BIN).args(["probe", &free.to_string()]).output().await.unwrap();
    assert!(!probe.status.success());
}

/// An empty or short management secret closes the control channel with an error in the log, instead of
/// opening it to whoever connects as the management user with that (or no) password.
#[tokio::test]
async fn a_short_or_empty_mgmt_secret_closes_the_control_channel_with_an_error() {
    for secret in ["", "fifteen-bytes!!"] {
        let mut command = Command::new(BIN);
        command.args(["--listen", "127.0.0.1:0", "--mgmt-secret", secret]);
        let Running { child: _running, addr, start_log } = run_broker(command).await;
        let error = start_log.iter().find(|l| l.contains("ERROR") && l.contains("control channel is closed"));
        assert!(error.is_some_and(|e| e.contains("16 bytes")), "secret {secret:?}: no clear error");
        let mut connect = connect_packet("sneaky", true);
        connect.username = Some("midge-mgmt".into());
        connect.password = Some(bytes::Bytes::copy_from_slice(secret.as_bytes()));
        assert_eq!(
            connack_code(addr, midge_broker::protocol::Packet::Connect(connect)).await,
            midge_broker::protocol::ConnectReturnCode::BadUsernameOrPassword,
            "secret {secret:?}"
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Wrong passwords at full speed from 64 clients, with throttling off so that every one is checked: the
/// broker's memory stays where it was (a fixed set of hashing workers with reused memory, a queue with a
/// limit), where it used to grow by argon2's 19 MiB for every concurrent check.
#[tokio::test]
async fn a_flood_of_wrong_passwords_costs_bounded_memory() {
    let dir = tempdir();
    let users = dir.join("users");
    std::fs::write(&users, format!("alice:{}\n", midge_passwords::hash_now(b"s3cret").unwrap())).unwrap();
    let mut command = Command::new(BIN);
    command.args(["--listen", "127.0.0.1:0", "--auth-fail-burst", "0", "--allow-anonymous", "false"]);
    command.arg("--users-file").arg(&users);
    let running = run_broker(command).await;
    let (pid, addr) = (running.child.id().unwrap(), running.addr);
    let flood = |duration: Duration| {
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                tokio::spawn(async move {
                    let deadline = std::time::Instant::now() + duration;
                    let mut refused = 0u32;
                    while std::time::Instant::now() < deadline {
                        let mut connect = connect_packet("guesser", true);
                        connect.username = Some("alice".into());
                        connect.password = Some(bytes::Bytes::from_static(b"wrong"));
                        let code = connack_code(addr, midge_broker::protocol::Packet::Connect(connect)).await;
                        refused += u32::from(code == midge_broker::protocol::ConnectReturnCode::BadUsernameOrPassword);
                    }
                    refused
                })
            })
            .collect();
        async move {
            let mut refused = 0;
            for task in tasks {
                refused += task.await.unwrap();
            }
            refused
        }
    };
    flood(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let checked = flood(Duration::from_secs(6)).await;
    let after = rss_kib(pid);
    assert!(checked > 20, "the flood was checked ({checked} wrong passwords)");
    assert!(after < before + 24 * 1024, "RSS grew from {before} KiB to {after} KiB");
    let mut right = connect_packet("alice-1", true);
    right.username = Some("alice".into());
    right.password = Some(bytes::Bytes::from_static(b"s3cret"));
    let code = connack_code(addr, midge_broker::protocol::Packet::Connect(right)).await;
    assert_eq!(code, midge_broker::protocol::ConnectReturnCode::Accepted);
}
