//! Listeners: several at once, each with its own limit and figures, as `monitoring/listeners` shows them;
//! TLS with server and client certificates made for each test.

mod helpers;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use futures_util::SinkExt;
use helpers::*;
use midge_broker::protocol::*;
use midge_broker::transport::PeerCertField;
use midge_shared::control::{ClientRow, ListenerRow, Page, PageRequest, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

fn ssl(server: &pki::Issued) -> ListenerConfig {
    ListenerConfig {
        certfile: Some(server.cert.clone()),
        keyfile: Some(server.key.clone()),
        ..ListenerConfig::new(ListenerKind::Ssl, loopback())
    }
}

/// An ssl listener that checks client certificates against `pki`'s CA.
fn ssl_verifying(server: &pki::Issued, pki: &pki::Pki, fail_if_no_peer_cert: bool) -> ListenerConfig {
    ListenerConfig { cacertfile: Some(pki.ca.clone()), verify_peer: true, fail_if_no_peer_cert, ..ssl(server) }
}

/// Whether a TLS client gets MQTT service: its CONNECT accepted (a client certificate refused under TLS
/// 1.3 shows only once the server reads, as a closed connection).
async fn served_over_tls(addr: SocketAddr, connector: &tokio_rustls::TlsConnector, client_id: &str) -> bool {
    let Ok(stream) = pki::tls_connect(addr, connector).await else { return false };
    let mut raw = Raw::over(stream);
    raw.connack(connect_packet(client_id, true)).await == Some(ConnectReturnCode::Accepted)
}

/// MQTT over TLS reaches subscribers on plain TCP and back; what is not TLS on the TLS port (plain
/// MQTT, a client that does not trust the certificate) is shut without disturbing the TLS client.
#[tokio::test]
async fn tls_listener_serves_mqtt_and_refuses_what_is_not_tls() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let broker = start(Config { listener: vec![tcp(100), ssl(&server)], ..mgmt_config() }).await;
    let (plain, tls) = (broker.listener(ListenerKind::Tcp, 0), broker.listener(ListenerKind::Ssl, 0));
    let mut mgmt = Mgmt::connect(plain, NODE).await;
    let trusting = pki::connector(&pki.ca, None);

    let mut secure = Raw::over(pki::tls_connect(tls, &trusting).await.expect("TLS handshake"));
    assert_eq!(secure.connack(connect_packet("secure", true)).await, Some(ConnectReturnCode::Accepted));
    assert_eq!(secure.subscribe(1, &[("from/plain", QoS::AtLeastOnce)]).await, vec![Some(QoS::AtLeastOnce)]);
    let mut clear = Raw::connected(plain, "clear").await;
    clear.subscribe(1, &[("from/tls", QoS::AtMostOnce)]).await;
    clear.send(&publish("from/plain", b"to tls", QoS::AtLeastOnce, 7)).await;
    assert_eq!(clear.recv().await, Some(Packet::Puback(Ack::new(7))));
    let delivered = secure.recv_publish().await;
    assert_eq!(&delivered.payload[..], b"to tls");
    secure.send(&Packet::Puback(Ack::new(delivered.pkid))).await;
    secure.send(&publish("from/tls", b"to plain", QoS::AtMostOnce, 0)).await;
    assert_eq!(&clear.recv_publish().await.payload[..], b"to plain");

    // Plain MQTT on the TLS port: no CONNACK (at most a TLS alert), and the connection is shut.
    let mut confused = tokio::net::TcpStream::connect(tls).await.unwrap();
    let mut connect = bytes::BytesMut::new();
    encode(&Packet::Connect(connect_packet("confused", true)), Protocol::V311, &mut connect);
    confused.write_all(&connect).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, confused.read_to_end(&mut answer)).await.expect("shut in time").ok();
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert record, not a CONNACK: {answer:?}");
    // A client that trusts another CA gives up on the handshake.
    let stranger = pki::Pki::new("other-ca");
    assert!(pki::tls_connect(tls, &pki::connector(&stranger.ca, None)).await.is_err());

    secure.ping().await;
    let rows = until(&mut mgmt, |rows| row(rows, tls).shutdown_count.0.get("tls_error") == Some(&2)).await;
    let row = row(&rows, tls);
    assert_eq!(row.protocol, "mqtt:ssl");
    assert_eq!(row.current_clients, 1);
    assert_eq!(row.shutdown_count.0, BTreeMap::from([("tls_error".to_string(), 2)]), "{rows:?}");
    broker.stop().await;
}

/// With `verify_peer` and `fail_if_no_peer_cert`, only a valid certificate from the configured CA gets
/// in: none, an expired one and one from another CA are refused.
#[tokio::test]
async fn client_certificates_are_checked_against_the_ca() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let broker = start(Config { listener: vec![ssl_verifying(&server, &pki, true)], ..config() }).await;
    let tls = broker.listener(ListenerKind::Ssl, 0);

    let valid = pki.client("device-1");
    assert!(served_over_tls(tls, &pki::connector(&pki.ca, Some(&valid)), "device-1").await);
    assert!(!served_over_tls(tls, &pki::connector(&pki.ca, None), "anonymous").await, "no certificate");
    let expired = pki.expired_client("device-2");
    assert!(!served_over_tls(tls, &pki::connector(&pki.ca, Some(&expired)), "device-2").await, "expired");
    let rogue = pki::Pki::new("rogue-ca").client("device-3");
    assert!(!served_over_tls(tls, &pki::connector(&pki.ca, Some(&rogue)), "device-3").await, "another CA");
    assert!(served_over_tls(tls, &pki::connector(&pki.ca, Some(&valid)), "device-1").await, "still serving");
    broker.stop().await;
}

/// `peer_cert_as_username`: the certificate's CN (or whole subject) is the username that the API
/// shows and the ACL sees, whatever CONNECT says; without a certificate there is no username at all.
#[tokio::test]
async fn the_client_certificate_can_name_the_user() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let cn = ListenerConfig { peer_cert_as_username: Some(PeerCertField::Cn), ..ssl_verifying(&server, &pki, false) };
    let dn = ListenerConfig { peer_cert_as_username: Some(PeerCertField::Dn), ..cn.clone() };
    let dir = tempdir();
    let acl = dir.join("acl.conf");
    std::fs::write(&acl, "{allow, {user, \"alice\"}, subscribe, [\"private/#\"]}.\n{deny, all, subscribe, [\"private/#\"]}.\n{allow, all}.\n").unwrap();
    let config = Config { listener: vec![tcp(100), cn, dn], acl_file: Some(acl), ..mgmt_config() };
    let broker = start(config).await;
    let (by_cn, by_dn) = (broker.listener(ListenerKind::Ssl, 0), broker.listener(ListenerKind::Ssl, 1));
    let mut mgmt = Mgmt::connect(broker.listener(ListenerKind::Tcp, 0), NODE).await;
    let alice = pki::connector(&pki.ca, Some(&pki.client("alice")));

    let claiming = |client_id: &str, username: &str| Connect {
        username: Some(username.into()),
        ..connect_packet(client_id, true)
    };
    let mut one = Raw::over(pki::tls_connect(by_cn, &alice).await.unwrap());
    assert_eq!(one.connack(claiming("one", "mallory")).await, Some(ConnectReturnCode::Accepted));
    assert_eq!(one.subscribe(1, &[("private/x", QoS::AtMostOnce)]).await, vec![Some(QoS::AtMostOnce)], "ACL saw alice");
    let mut two = Raw::over(pki::tls_connect(by_dn, &alice).await.unwrap());
    assert_eq!(two.connack(connect_packet("two", true)).await, Some(ConnectReturnCode::Accepted));
    // No certificate: the claimed name is not taken, so the ACL refuses the private topic.
    let mut three = Raw::over(pki::tls_connect(by_cn, &pki::connector(&pki.ca, None)).await.unwrap());
    assert_eq!(three.connack(claiming("three", "alice")).await, Some(ConnectReturnCode::Accepted));
    assert_eq!(three.subscribe(1, &[("private/x", QoS::AtMostOnce)]).await, vec![None]);

    let clients: Page<ClientRow> = mgmt.ok(Request::ListClients(PageRequest { page: 1, size: 20 })).await;
    let username = |id: &str| clients.objects.iter().find(|c| c.client_id == id).unwrap().username.clone();
    assert_eq!(username("one"), "alice");
    assert_eq!(username("two"), "CN=alice, O=Midge Tests");
    assert_eq!(username("three"), "undefined");
    broker.stop().await;
}

/// The common name of the certificate the server presented.
fn server_cn(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let leaf = &stream.get_ref().1.peer_certificates().expect("server certificate")[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
    cn
}

/// Certificates replaced on disk are taken on request: new connections get the new one, connections
/// already up stay; files that do not load change nothing.
#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let pki = pki::Pki::new("midge-ca");
    let first = pki.server("first");
    let broker = start(Config { listener: vec![tcp(100), ssl(&first)], ..mgmt_config() }).await;
    let tls = broker.listener(ListenerKind::Ssl, 0);
    let mut mgmt = Mgmt::connect(broker.listener(ListenerKind::Tcp, 0), NODE).await;
    let trusting = pki::connector(&pki.ca, None);

    let stream = pki::tls_connect(tls, &trusting).await.unwrap();
    assert_eq!(server_cn(&stream), "first");
    let mut early = Raw::over(stream);
    assert_eq!(early.connack(connect_packet("early", true)).await, Some(ConnectReturnCode::Accepted));

    let second = pki.server("second");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let reloaded: u64 = mgmt.ok(Request::ReloadCertificates).await;
    assert_eq!(reloaded, 1);
    let stream = pki::tls_connect(tls, &trusting).await.unwrap();
    assert_eq!(server_cn(&stream), "second");
    let mut late = Raw::over(stream);
    assert_eq!(late.connack(connect_packet("late", true)).await, Some(ConnectReturnCode::Accepted));
    early.ping().await;

    std::fs::write(&first.key, "not a key").unwrap();
    let code = mgmt.err(Request::ReloadCertificates).await;
    assert_eq!(code, 102);
    let stream = pki::tls_connect(tls, &trusting).await.unwrap();
    assert_eq!(server_cn(&stream), "second", "the running certificate stays");
    early.ping().await;
    late.ping().await;
    broker.stop().await;
}

fn ws_listener() -> ListenerConfig {
    ListenerConfig::new(ListenerKind::Ws, loopback())
}

/// MQTT over WebSocket is a byte stream: CONNECT split over three frames, SUBSCRIBE and PUBLISH in one,
/// a packet's tail in the frame with the next; deliveries reach plain TCP clients and back.
#[tokio::test]
async fn websocket_frames_carry_mqtt_however_it_is_split() {
    let broker = start(Config { listener: vec![tcp(100), ws_listener()], ..config() }).await;
    let (plain, ws) = (broker.listener(ListenerKind::Tcp, 0), broker.listener(ListenerKind::Ws, 0));
    let mut client = ws::connect(ws, "/mqtt", "mqtt").await.expect("upgrade");
    assert_eq!(client.protocol.as_deref(), Some("mqtt"));

    let connect = ws::bytes_of(&[Packet::Connect(connect_packet("browser", true))]);
    let (a, rest) = connect.split_at(1);
    let (b, c) = rest.split_at(rest.len() / 2);
    for part in [a, b, c] {
        client.frame(part).await;
    }
    assert!(matches!(client.recv().await, Some(Packet::Connack(Connack { reason: ReasonCode::Success, .. }))));

    let both =
        ws::bytes_of(&[subscribe(1, &[("to/ws", QoS::AtLeastOnce)]), publish("to/tcp", b"hello", QoS::AtMostOnce, 0)]);
    let mut tcp_client = Raw::connected(plain, "desk").await;
    tcp_client.subscribe(1, &[("to/tcp", QoS::AtMostOnce)]).await;
    client.frame(&both).await;
    assert!(matches!(client.recv().await, Some(Packet::Suback(_))));
    assert_eq!(&tcp_client.recv_publish().await.payload[..], b"hello");

    tcp_client.send(&publish("to/ws", b"over websocket", QoS::AtLeastOnce, 3)).await;
    assert_eq!(tcp_client.recv().await, Some(Packet::Puback(Ack::new(3))));
    let Some(Packet::Publish(delivered)) = client.recv().await else { panic!("expected PUBLISH") };
    assert_eq!(&delivered.payload[..], b"over websocket");
    // A PUBACK whose first byte ends one frame and the rest starts the next, behind a PINGREQ.
    let tail = ws::bytes_of(&[Packet::Puback(Ack::new(delivered.pkid)), Packet::Pingreq]);
    client.frame(&tail[..1]).await;
    client.frame(&tail[1..]).await;
    assert_eq!(client.recv().await, Some(Packet::Pingresp));
    broker.stop().await;
}

/// The WebSocket port refuses what is not MQTT over WebSocket at its path, without disturbing the
/// clients it serves: a plain HTTP request, another path, another subprotocol, MQTT without an upgrade,
/// and text frames.
#[tokio::test]
async fn the_websocket_port_refuses_what_is_not_mqtt_over_websocket() {
    let broker = start(Config { listener: vec![tcp(100), ws_listener()], ..mgmt_config() }).await;
    let ws = broker.listener(ListenerKind::Ws, 0);
    let mut mgmt = Mgmt::connect(broker.listener(ListenerKind::Tcp, 0), NODE).await;
    let mut served = ws::connect(ws, "/mqtt", "mqttv3.1, mqtt").await.expect("upgrade");
    assert_eq!(served.protocol.as_deref(), Some("mqtt"), "the newest MQTT subprotocol offered");
    served.frame(&ws::bytes_of(&[Packet::Connect(connect_packet("served", true))])).await;
    assert!(matches!(served.recv().await, Some(Packet::Connack(_))));

    let mut http = tokio::net::TcpStream::connect(ws).await.unwrap();
    http.write_all(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, http.read_to_end(&mut answer)).await.expect("closed in time").ok();
    assert!(!answer.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&answer));

    let elsewhere = ws::connect(ws, "/other", "mqtt").await.err().expect("refused");
    assert!(elsewhere.to_string().contains("404"), "{elsewhere}");
    let chat = ws::connect(ws, "/mqtt", "chat").await.err().expect("refused");
    assert!(chat.to_string().contains("400"), "{chat}");
    let mut bare = Raw::open(ws).await;
    bare.send(&Packet::Connect(connect_packet("bare", true))).await;
    bare.expect_closed().await;
    // No subprotocol at all is taken: some clients send none.
    let mut unnamed = ws::connect(ws, "/mqtt", "").await.expect("upgrade without a subprotocol");
    unnamed.frame(&ws::bytes_of(&[Packet::Connect(connect_packet("unnamed", true))])).await;
    assert!(matches!(unnamed.recv().await, Some(Packet::Connack(_))));
    unnamed.ws.send(tokio_tungstenite::tungstenite::Message::text("PINGREQ")).await.unwrap();
    assert_eq!(unnamed.recv().await, None, "text frames end the connection");

    served.frame(&ws::bytes_of(&[Packet::Pingreq])).await;
    assert_eq!(served.recv().await, Some(Packet::Pingresp));
    let rows = until(&mut mgmt, |rows| row(rows, ws).shutdown_count.0.get("websocket_error") == Some(&4)).await;
    let row = row(&rows, ws);
    assert_eq!(row.protocol, "mqtt:ws");
    assert_eq!(row.current_clients, 1);
    assert_eq!(row.shutdown_count.0.get("websocket_error"), Some(&4), "{rows:?}");
    broker.stop().await;
}

/// Secure WebSocket: TLS, then the upgrade, then MQTT.
#[tokio::test]
async fn secure_websocket_is_tls_then_websocket() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let wss = ListenerConfig { kind: ListenerKind::Wss, ..ssl(&server) };
    let broker = start(Config { listener: vec![wss], ..config() }).await;
    let addr = broker.listener(ListenerKind::Wss, 0);
    let tls = pki::tls_connect(addr, &pki::connector(&pki.ca, None)).await.expect("TLS");
    let mut client = ws::over(tls, addr, "/mqtt", "mqtt").await.expect("upgrade");
    client.frame(&ws::bytes_of(&[Packet::Connect(connect_packet("secure-browser", true))])).await;
    assert!(matches!(client.recv().await, Some(Packet::Connack(Connack { reason: ReasonCode::Success, .. }))));
    client
        .frame(&ws::bytes_of(&[subscribe(1, &[("s/#", QoS::AtMostOnce)]), publish("s/1", b"wss", QoS::AtMostOnce, 0)]))
        .await;
    assert!(matches!(client.recv().await, Some(Packet::Suback(_))));
    let Some(Packet::Publish(own)) = client.recv().await else { panic!("expected PUBLISH") };
    assert_eq!(&own.payload[..], b"wss");
    broker.stop().await;
}

fn proxied(kind: ListenerKind) -> ListenerConfig {
    ListenerConfig { proxy_protocol: true, ..ListenerConfig::new(kind, loopback()) }
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4 or IPv6) from `source` to `destination`.
fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    let mut addresses = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            header.push(0x11); // TCP over IPv4
            addresses.extend(s.ip().octets());
            addresses.extend(d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            header.push(0x21); // TCP over IPv6
            addresses.extend(s.ip().octets());
            addresses.extend(d.ip().octets());
        }
        _ => panic!("one family"),
    }
    addresses.extend(source.port().to_be_bytes());
    addresses.extend(destination.port().to_be_bytes());
    header.extend((addresses.len() as u16).to_be_bytes());
    header.extend(addresses);
    header
}

/// The v2 header a balancer sends for its own health checks: LOCAL, no addresses.
fn proxy_v2_local() -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x20, 0x00, 0x00, 0x00]);
    header
}

fn connect_bytes(client_id: &str) -> Vec<u8> {
    ws::bytes_of(&[Packet::Connect(connect_packet(client_id, true))])
}

/// Behind a balancer speaking the PROXY protocol, the API shows the client's address from the header
/// (v1 or v2, IPv4 or IPv6), even with CONNECT in the same segment as the header; a header without
/// addresses leaves the balancer's own. A connection without a header is refused there, and a header
/// is refused on a listener that does not expect one.
#[tokio::test]
async fn proxy_protocol_headers_give_the_clients_address() {
    let broker = start(Config { listener: vec![tcp(100), proxied(ListenerKind::Tcp)], ..mgmt_config() }).await;
    let (direct, behind) = (broker.listener(ListenerKind::Tcp, 0), broker.listener(ListenerKind::Tcp, 1));
    let mut mgmt = Mgmt::connect(direct, NODE).await;

    let headers: [(&str, Vec<u8>); 4] = [
        ("v1", b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 1883\r\n".to_vec()),
        ("v1-ipv6", b"PROXY TCP6 2001:db8::7 2001:db8::1 51001 1883\r\n".to_vec()),
        ("v2", proxy_v2("198.51.100.9:52000".parse().unwrap(), "10.0.0.1:1883".parse().unwrap())),
        ("v2-local", proxy_v2_local()),
    ];
    let mut clients = Vec::new();
    for (client_id, header) in headers {
        let mut stream = tokio::net::TcpStream::connect(behind).await.unwrap();
        let mut bytes = header;
        bytes.extend(connect_bytes(client_id));
        stream.write_all(&bytes).await.unwrap();
        let mut raw = Raw::from_stream(stream);
        assert!(matches!(raw.recv().await, Some(Packet::Connack(Connack { reason: ReasonCode::Success, .. }))));
        clients.push(raw);
    }
    // A header split over two segments, its line end the first byte of the second.
    let mut stream = tokio::net::TcpStream::connect(behind).await.unwrap();
    stream.write_all(b"PROXY TCP4 192.0.2.44 10.0.0.1 53000 1883\r").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut rest = b"\n".to_vec();
    rest.extend(connect_bytes("v1-split"));
    stream.write_all(&rest).await.unwrap();
    let mut split = Raw::from_stream(stream);
    assert!(matches!(split.recv().await, Some(Packet::Connack(_))));

    let listed: Page<ClientRow> = mgmt.ok(Request::ListClients(PageRequest { page: 1, size: 20 })).await;
    let address = |id: &str| {
        let client = listed.objects.iter().find(|c| c.client_id == id).unwrap_or_else(|| panic!("{id} listed"));
        (client.ipaddress.clone(), client.port)
    };
    assert_eq!(address("v1"), ("203.0.113.7".to_string(), 51000));
    assert_eq!(address("v1-ipv6"), ("2001:db8::7".to_string(), 51001));
    assert_eq!(address("v2"), ("198.51.100.9".to_string(), 52000));
    assert_eq!(address("v2-local").0, "127.0.0.1", "no addresses: the balancer's own");
    assert_eq!(address("v1-split"), ("192.0.2.44".to_string(), 53000));

    // No header where one is expected, a header where none is.
    let mut bare = Raw::open(behind).await;
    bare.send(&Packet::Connect(connect_packet("bare", true))).await;
    bare.expect_closed().await;
    let mut smuggled = tokio::net::TcpStream::connect(direct).await.unwrap();
    let mut bytes = b"PROXY TCP4 1.2.3.4 10.0.0.1 1 1883\r\n".to_vec();
    bytes.extend(connect_bytes("smuggled"));
    smuggled.write_all(&bytes).await.unwrap();
    Raw::from_stream(smuggled).expect_closed().await;

    for client in &mut clients {
        client.ping().await;
    }
    let rows = until(&mut mgmt, |rows| row(rows, behind).shutdown_count.0.contains_key("proxy_protocol_error")).await;
    assert_eq!(row(&rows, behind).shutdown_count.0.get("proxy_protocol_error"), Some(&1), "{rows:?}");
    assert_eq!(row(&rows, direct).shutdown_count.0.get("protocol_error"), Some(&1), "{rows:?}");
    broker.stop().await;
}

/// The header comes before TLS: exactly it is read, and the handshake follows.
#[tokio::test]
async fn proxy_protocol_before_tls() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let tls_behind = ListenerConfig { proxy_protocol: true, ..ssl(&server) };
    let broker = start(Config { listener: vec![tcp(100), tls_behind], ..mgmt_config() }).await;
    let addr = broker.listener(ListenerKind::Ssl, 0);
    let mut mgmt = Mgmt::connect(broker.listener(ListenerKind::Tcp, 0), NODE).await;

    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&proxy_v2("192.0.2.1:40000".parse().unwrap(), "10.0.0.1:8883".parse().unwrap())).await.unwrap();
    let tls = pki::connector(&pki.ca, None)
        .connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS after the header");
    let mut client = Raw::over(tls);
    assert_eq!(client.connack(connect_packet("behind-tls", true)).await, Some(ConnectReturnCode::Accepted));
    let listed: Vec<ClientRow> = mgmt.ok(Request::GetClient { client_id: "behind-tls".into() }).await;
    assert_eq!((listed[0].ipaddress.as_str(), listed[0].port), ("192.0.2.1", 40000));
    broker.stop().await;
}

/// A broker with an open TCP listener and one limited to `limit`: the limited one's address, and a
/// subscriber to `filter` on the open one.
async fn rate_limited(limit: &str, filter: &str) -> (TestBroker, SocketAddr, Raw) {
    let limited = ListenerConfig { rate_limit: Some(limit.parse().unwrap()), ..tcp(100) };
    let broker = start(Config { listener: vec![tcp(100), limited], ..mgmt_config() }).await;
    let (open, limited) = (broker.listener(ListenerKind::Tcp, 0), broker.listener(ListenerKind::Tcp, 1));
    let mut subscriber = Raw::connected(open, "sub").await;
    subscriber.subscribe(1, &[(filter, QoS::AtMostOnce)]).await;
    (broker, limited, subscriber)
}

/// A listener's `rate_limit` slows each connection's reads to its rate once the burst is spent: every
/// message still arrives, in order, only later.
#[tokio::test]
async fn rate_limit_slows_the_reader_and_drops_nothing() {
    let (broker, limited, mut subscriber) = rate_limited("1KB,8KB", "r/#").await;
    let mut publisher = Raw::connected(limited, "pub").await;
    let messages = 24;
    let payload = vec![b'x'; 1024];
    let mut bytes = Vec::new();
    for n in 0..messages {
        bytes.extend(ws::bytes_of(&[publish(&format!("r/{n}"), &payload, QoS::AtMostOnce, 0)]));
    }
    let started = tokio::time::Instant::now();
    publisher.send_bytes(&bytes).await;
    for n in 0..messages {
        let message = subscriber.recv_publish().await;
        assert_eq!((&message.topic[..], message.payload.len()), (format!("r/{n}").as_bytes(), 1024));
    }
    let took = started.elapsed();
    // Some 24.7 KiB past a 1 KiB burst at 8 KiB/s: 2.9 s, less the last read's overdraft (512 bytes).
    assert!(took >= std::time::Duration::from_millis(2500), "took {took:?}");
    publisher.ping().await;
    broker.stop().await;
}

/// A client the rate limit holds back is not silent, however long the reader waits: its keepalive
/// counts from when the broker listens again.
#[tokio::test]
async fn a_client_held_back_by_the_rate_limit_keeps_its_connection() {
    let (broker, limited, mut subscriber) = rate_limited("1KB,300B", "slow").await;
    // Keepalive 1 s: 1.5 s of silence would end it. The burst takes CONNECT and 1000 bytes of the
    // publish; the next 512 cost 1.7 s at 300 bytes/s before the reader goes on.
    let mut publisher = Raw::open(limited).await;
    let connect = Connect { keep_alive: 1, ..connect_packet("pub", true) };
    assert_eq!(publisher.connack(connect).await, Some(ConnectReturnCode::Accepted));
    let started = tokio::time::Instant::now();
    publisher.send(&publish("slow", &[b'x'; 1536], QoS::AtMostOnce, 0)).await;
    let message = subscriber.recv_publish().await;
    assert_eq!(message.payload.len(), 1536);
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500), "took {:?}", started.elapsed());
    publisher.ping().await;
    broker.stop().await;
}

/// Reads until the broker closes the connection; panics if it has not within `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: std::time::Duration) {
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(limit, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    });
    closed.await.expect("closed by the broker in time");
}

/// A handshake that never finishes (silence where TLS should start, half a WebSocket upgrade, half a
/// PROXY header) is closed at the connect timeout and counted as `handshake_timeout`, and the slot it
/// held goes to the next connection. Meanwhile the listener takes no more than its `max_clients`.
#[tokio::test]
async fn a_stuck_handshake_times_out_and_gives_its_slot_back() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let one = |config: ListenerConfig| ListenerConfig { max_clients: 1, ..config };
    let config = Config {
        connect_timeout: 2,
        listener: vec![
            tcp(100),
            one(ssl(&server)),
            one(ListenerConfig::new(ListenerKind::Ws, loopback())),
            one(proxied(ListenerKind::Tcp)),
        ],
        ..mgmt_config()
    };
    let broker = start(config).await;
    let tls = broker.listener(ListenerKind::Ssl, 0);
    let ws = broker.listener(ListenerKind::Ws, 0);
    let behind = broker.listener(ListenerKind::Tcp, 1);
    let mut mgmt = Mgmt::connect(broker.listener(ListenerKind::Tcp, 0), NODE).await;

    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(tls).await.unwrap();
    let mut half_upgrade = tokio::net::TcpStream::connect(ws).await.unwrap();
    half_upgrade.write_all(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let mut half_header = tokio::net::TcpStream::connect(behind).await.unwrap();
    half_header.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
    // Their slots are taken: one more is refused at once.
    let mut refused = tokio::net::TcpStream::connect(tls).await.unwrap();
    closed_within(&mut refused, std::time::Duration::from_secs(1)).await;

    for stuck in [&mut silent, &mut half_upgrade, &mut half_header] {
        closed_within(stuck, WAIT).await;
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(1900), "not before the timeout");
    // The slots are free again.
    let mut secure = Raw::over(pki::tls_connect(tls, &pki::connector(&pki.ca, None)).await.expect("TLS"));
    assert_eq!(secure.connack(connect_packet("after-tls", true)).await, Some(ConnectReturnCode::Accepted));
    let mut upgraded = ws::connect(ws, "/mqtt", "mqtt").await.expect("upgrade");
    upgraded.frame(&connect_bytes("after-ws")).await;
    assert!(matches!(upgraded.recv().await, Some(Packet::Connack(_))));
    let mut proxied_client = tokio::net::TcpStream::connect(behind).await.unwrap();
    let mut bytes = b"PROXY TCP4 192.0.2.1 10.0.0.1 1000 1883\r\n".to_vec();
    bytes.extend(connect_bytes("after-proxy"));
    proxied_client.write_all(&bytes).await.unwrap();
    assert!(matches!(Raw::from_stream(proxied_client).recv().await, Some(Packet::Connack(_))));

    let rows = listeners(&mut mgmt).await;
    for addr in [tls, ws, behind] {
        assert_eq!(row(&rows, addr).shutdown_count.0.get("handshake_timeout"), Some(&1), "{addr}: {rows:?}");
    }
    assert_eq!(row(&rows, tls).shutdown_count.0.get("maxlimit"), Some(&1), "{rows:?}");
    broker.stop().await;
}

/// The connect timeout counts from accept: a client that spends most of it on the TLS handshake has
/// only the rest for its CONNECT, and is closed, as `connect_timeout`, when it runs out.
#[tokio::test]
async fn the_connect_timeout_counts_from_accept_handshake_included() {
    let pki = pki::Pki::new("midge-ca");
    let server = pki.server("broker");
    let broker = start(Config { connect_timeout: 3, listener: vec![tcp(100), ssl(&server)], ..mgmt_config() }).await;
    let tls = broker.listener(ListenerKind::Ssl, 0);
    let mut mgmt = Mgmt::connect(broker.listener(ListenerKind::Tcp, 0), NODE).await;

    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let accepted = tokio::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut late = pki::connector(&pki.ca, None).connect(name, tcp).await.expect("handshake in time");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, late.read_to_end(&mut rest)).await.expect("closed by the broker");
    let closed = accepted.elapsed();
    // Three seconds from accept; a timeout restarted after the handshake would close it at 5 s.
    assert!(closed < std::time::Duration::from_secs(4), "closed after {closed:?}");
    let rows = until(&mut mgmt, |rows| row(rows, tls).shutdown_count.0.contains_key("connect_timeout")).await;
    assert_eq!(row(&rows, tls).shutdown_count.0.get("connect_timeout"), Some(&1), "{rows:?}");
    broker.stop().await;
}
