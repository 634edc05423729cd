//! What the broker writes in its log about clients: escaped (a client cannot forge lines or send escape
//! codes to the operator's terminal), and one line per connection that ends before CONNECT, at info only
//! for a protocol violation.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// A CONNECT (3.1.1, clean session) for `client_id`, as raw bytes.
fn connect(client_id: &str) -> Vec<u8> {
    let mut variable = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    variable.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    variable.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend(variable);
    packet
}

/// Waits until the broker has logged a line containing `needle`; all lines logged by then.
async fn logged(process: &Process, needle: &str) -> Vec<String> {
    for _ in 0..50 {
        let logs = process.logs();
        if logs.iter().any(|l| l.contains(needle)) {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never logged {needle:?}: {:?}", process.logs());
}

#[tokio::test]
async fn client_strings_are_escaped_in_the_log() {
    let stack = Stack::start().await;
    let addr = stack.broker.addr;
    let forged = "evil\n2026-01-01T00:00:00Z  INFO midge_broker: FORGED \u{1b}[31mred";
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&connect(forged)).await.unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // A reserved packet type: a protocol error, logged at info with the client id.
    client.write_all(&[0xf0, 0]).await.unwrap();
    let logs = logged(&stack.broker, "connection closed").await;
    let line = logs.iter().find(|l| l.contains("connection closed") && l.contains("evil")).expect("the line");
    assert!(line.contains(r"evil\n2026-01-01"), "{line}");
    assert!(line.contains(r"\u{1b}[31mred"), "{line}");
    assert!(logs.iter().all(|l| !l.contains('\u{1b}') && !l.starts_with("2026-01-01T00:00:00Z")), "{logs:?}");
}

#[tokio::test]
async fn what_ends_before_connect_is_logged_once_and_only_violations_at_info() {
    let stack = Stack::start().await;
    let addr = stack.broker.addr;
    // Noise: a port check that connects and leaves.
    drop(TcpStream::connect(addr).await.unwrap());
    // A violation: something other than CONNECT first.
    let mut prober = TcpStream::connect(addr).await.unwrap();
    let peer = prober.local_addr().unwrap();
    prober.write_all(b"\xc0\x00").await.unwrap();
    let mut rest = Vec::new();
    let _ = prober.read_to_end(&mut rest).await;
    let logs = logged(&stack.broker, "first packet is not CONNECT").await;
    let lines: Vec<&String> = logs.iter().filter(|l| l.contains(&format!("peer={peer}"))).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("INFO") && lines[0].contains("PINGREQ"), "{}", lines[0]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = stack.broker.logs().iter().filter(|l| l.contains("before CONNECT")).count();
    assert_eq!(closed, 0, "a dropped socket is noise: not at info");
}
