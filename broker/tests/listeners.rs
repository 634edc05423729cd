//! Listeners: several at once, each with its own limit and figures, as `monitoring/listeners` shows them.

mod helpers;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use helpers::*;
use midge_broker::protocol::*;
use midge_shared::control::{ListenerRow, Request};
use tokio::io::AsyncReadExt;

const NODE: &str = "midge@127.0.0.1";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn tcp(max_clients: usize) -> ListenerConfig {
    ListenerConfig { max_clients, ..ListenerConfig::new(ListenerKind::Tcp, loopback()) }
}

async fn listeners(mgmt: &mut Mgmt) -> Vec<ListenerRow> {
    mgmt.ok(Request::ListListeners).await
}

fn row(rows: &[ListenerRow], addr: SocketAddr) -> &ListenerRow {
    rows.iter().find(|row| row.listen == addr.to_string()).unwrap_or_else(|| panic!("no listener {addr}: {rows:?}"))
}

/// Polls the listener rows until `done` holds for them (figures move as connections end, a moment after
/// the client sees its socket close).
async fn until(mgmt: &mut Mgmt, mut done: impl FnMut(&[ListenerRow]) -> bool) -> Vec<ListenerRow> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = listeners(mgmt).await;
        if done(&rows) || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Two TCP listeners serve one broker: a client on either reaches a subscriber on the other, and each
/// listener counts its own clients.
#[tokio::test]
async fn every_configured_listener_serves_and_counts_its_own_clients() {
    let config = Config { listener: vec![tcp(100), tcp(100)], ..mgmt_config() };
    let broker = start(config).await;
    let (first, second) = (broker.listener(ListenerKind::Tcp, 0), broker.listener(ListenerKind::Tcp, 1));
    assert_ne!(first, second);
    let mut mgmt = Mgmt::connect(first, NODE).await;

    let mut subscriber = Raw::connected(second, "sub").await;
    assert_eq!(subscriber.subscribe(1, &[("t/#", QoS::AtMostOnce)]).await, vec![Some(QoS::AtMostOnce)]);
    let mut publisher = Raw::connected(first, "pub").await;
    publisher.send(&publish("t/1", b"across", QoS::AtMostOnce, 0)).await;
    assert_eq!(&subscriber.recv_publish().await.payload[..], b"across");

    let rows = listeners(&mut mgmt).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (addr, row) in [(first, row(&rows, first)), (second, row(&rows, second))] {
        assert_eq!(row.protocol, "mqtt:tcp");
        assert_eq!((row.max_clients, row.acceptors), (100, 1), "{addr}");
        // The sidecar's connection counts in no figure.
        assert_eq!(row.current_clients, 1, "{addr}: {rows:?}");
    }
    broker.stop().await;
}

/// Over `max_clients` a connection is closed at once, before a byte is read, counted as EMQ's
/// `maxlimit`; the clients already connected are untouched, and a slot freed is a slot taken again.
#[tokio::test]
async fn over_max_clients_a_connection_is_refused_and_counted() {
    let limited = tcp(2);
    let config = Config { listener: vec![tcp(100), limited], ..mgmt_config() };
    let broker = start(config).await;
    let (open, full) = (broker.listener(ListenerKind::Tcp, 0), broker.listener(ListenerKind::Tcp, 1));
    let mut mgmt = Mgmt::connect(open, NODE).await;

    let first = Raw::connected(full, "one").await;
    let mut second = Raw::connected(full, "two").await;
    let mut third = tokio::net::TcpStream::connect(full).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, third.read(&mut buf)).await.expect("refused at once");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without a byte: {read:?}");

    let rows = until(&mut mgmt, |rows| row(rows, full).shutdown_count.0.contains_key("maxlimit")).await;
    let limited = row(&rows, full);
    assert_eq!(limited.current_clients, 2);
    assert_eq!(limited.shutdown_count.0, BTreeMap::from([("maxlimit".to_string(), 1)]), "{rows:?}");
    assert!(row(&rows, open).shutdown_count.0.is_empty());
    second.ping().await;

    first.disconnect().await;
    let rows = until(&mut mgmt, |rows| row(rows, full).current_clients == 1).await;
    assert_eq!(row(&rows, full).current_clients, 1);
    let _again = Raw::connected(full, "three").await;
    broker.stop().await;
}

/// How served connections ended, by reason: a DISCONNECT is no shutdown, a dropped socket is `closed`,
/// a protocol error and a kick are counted as such.
#[tokio::test]
async fn shutdown_count_tells_how_connections_ended() {
    let broker = start(mgmt_config()).await;
    let mut mgmt = Mgmt::connect(broker.addr, NODE).await;

    Raw::connected(broker.addr, "polite").await.disconnect().await;
    drop(Raw::connected(broker.addr, "dropped").await);
    let mut rude = Raw::connected(broker.addr, "rude").await;
    rude.send_bytes(&[0xF0, 0x00]).await; // reserved packet type
    rude.expect_closed().await;
    let mut kicked = Raw::connected(broker.addr, "kicked").await;
    let _: midge_shared::calls::Done = mgmt.ok(Request::Kick { client_id: "kicked".into() }).await;
    kicked.expect_closed().await;

    let expected =
        BTreeMap::from([("closed".to_string(), 1), ("kicked".to_string(), 1), ("protocol_error".to_string(), 1)]);
    let rows = until(&mut mgmt, |rows| rows[0].shutdown_count.0 == expected).await;
    assert_eq!(rows[0].shutdown_count.0, expected);
    assert_eq!(rows[0].current_clients, 0);
    broker.stop().await;
}
