//! CONNECT handling, authentication, takeover, keepalive, wills and shutdown, over the real socket.

mod helpers;

use std::time::Duration;

use bytes::Bytes;
use helpers::*;
use midge_broker::protocol::*;

async fn reply_to_bytes(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<Packet> {
    let mut raw = Raw::open(addr).await;
    raw.send_bytes(bytes).await;
    raw.recv().await
}

fn refused(code: ConnectReturnCode) -> Option<Packet> {
    Some(Packet::Connack(Connack::refused(code)))
}

#[tokio::test]
async fn unknown_protocol_name_or_level_gets_connack_1() {
    let broker = start_default().await;
    // MQTT level 6, MQTT level 3, MQIsdp level 4, and a made-up name.
    for bytes in [
        &b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x00\x00"[..],
        &b"\x10\x0c\x00\x04MQTT\x03\x02\x00\x3c\x00\x00"[..],
        &b"\x10\x0e\x00\x06MQIsdp\x04\x02\x00\x3c\x00\x00"[..],
        &b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00"[..],
    ] {
        assert_eq!(reply_to_bytes(broker.addr, bytes).await, refused(ConnectReturnCode::UnacceptableProtocol));
    }
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_31_is_accepted() {
    let broker = start_default().await;
    let reply = reply_to_bytes(broker.addr, b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x04abcd").await;
    assert_eq!(reply, Some(Packet::Connack(Connack::accepted(false))));
    broker.stop().await;
}

#[tokio::test]
async fn bad_connect_flags_close_the_connection() {
    let broker = start_default().await;
    for bytes in [
        // reserved flag
        &b"\x10\x0e\x00\x04MQTT\x04\x03\x00\x3c\x00\x02id"[..],
        // password without username
        &b"\x10\x12\x00\x04MQTT\x04\x42\x00\x3c\x00\x02id\x00\x02pw"[..],
        // will QoS without will flag
        &b"\x10\x0e\x00\x04MQTT\x04\x0a\x00\x3c\x00\x02id"[..],
        // will QoS 3
        &b"\x10\x14\x00\x04MQTT\x04\x1e\x00\x3c\x00\x02id\x00\x01t\x00\x01p"[..],
        // will retain without will flag
        &b"\x10\x0e\x00\x04MQTT\x04\x22\x00\x3c\x00\x02id"[..],
    ] {
        let mut raw = Raw::open(broker.addr).await;
        raw.send_bytes(bytes).await;
        raw.expect_closed().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn client_id_rules() {
    let broker = start_default().await;
    // 3.1.1, empty id, clean session: accepted with an assigned id.
    let (raw, present) = Raw::connect(broker.addr, connect_packet("", true)).await;
    assert!(!present);
    raw.disconnect().await;
    // 3.1.1, empty id, persistent session: identifier rejected.
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(connect_packet("", false))).await;
    assert_eq!(raw.recv().await, refused(ConnectReturnCode::IdentifierRejected));
    raw.expect_closed().await;
    // 3.1, empty id: identifier rejected.
    let mut c = connect_packet("", true);
    c.protocol = Protocol::V31;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(c)).await;
    assert_eq!(raw.recv().await, refused(ConnectReturnCode::IdentifierRejected));
    broker.stop().await;
}

#[tokio::test]
async fn too_long_client_id_is_rejected() {
    let broker = start(Config { max_clientid_len: 8, ..config() }).await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Connect(connect_packet("123456789", true))).await;
    assert_eq!(raw.recv().await, refused(ConnectReturnCode::IdentifierRejected));
    broker.stop().await;
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    let broker = start_default().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&Packet::Pingreq).await;
    raw.expect_closed().await;
    broker.stop().await;
}

/// CONNECT, SUBSCRIBE, a QoS 1 and a QoS 2 PUBLISH on the subscribed topic, and PUBREL, as one client
/// that does not wait for CONNACK would write them.
fn pipelined_session(client_id: &str) -> Vec<u8> {
    let packets = [
        Packet::Connect(connect_packet(client_id, true)),
        subscribe(1, &[("pipe/#", QoS::ExactlyOnce)]),
        publish("pipe/1", b"one", QoS::AtLeastOnce, 2),
        publish("pipe/2", b"two", QoS::ExactlyOnce, 3),
        Packet::Pubrel(Ack::new(3)),
    ];
    let mut bytes = bytes::BytesMut::new();
    for packet in &packets {
        midge_broker::protocol::encode(packet, Protocol::V311, &mut bytes);
    }
    bytes.to_vec()
}

/// Reads until the broker has answered every packet of [`pipelined_session`] and delivered both messages.
async fn expect_pipelined_answers(raw: &mut Raw, split: usize) {
    let connack = raw.recv().await;
    assert!(
        matches!(connack, Some(Packet::Connack(Connack { reason: ReasonCode::Success, .. }))),
        "split at {split}: {connack:?}"
    );
    let (mut suback, mut puback, mut pubrec, mut pubcomp) = (false, false, false, false);
    let mut delivered = Vec::new();
    while !(suback && puback && pubrec && pubcomp && delivered.len() == 2) {
        match raw.recv().await {
            Some(Packet::Suback(s)) => {
                assert_eq!((s.pkid, s.codes), (1, vec![Ok(QoS::ExactlyOnce)]), "split at {split}");
                suback = true;
            }
            Some(Packet::Puback(Ack { pkid: 2, .. })) => puback = true,
            Some(Packet::Pubrec(Ack { pkid: 3, .. })) => pubrec = true,
            Some(Packet::Pubcomp(Ack { pkid: 3, .. })) => pubcomp = true,
            Some(Packet::Publish(p)) => {
                assert!(suback, "split at {split}: a delivery before the SUBACK");
                match p.qos {
                    QoS::AtLeastOnce => raw.send(&Packet::Puback(Ack::new(p.pkid))).await,
                    QoS::ExactlyOnce => raw.send(&Packet::Pubrec(Ack::new(p.pkid))).await,
                    QoS::AtMostOnce => {}
                }
                delivered.push((p.topic_str().to_string(), p.payload.to_vec()));
            }
            Some(Packet::Pubrel(Ack { pkid, .. })) => raw.send(&Packet::Pubcomp(Ack::new(pkid))).await,
            other => panic!("split at {split}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        delivered,
        vec![("pipe/1".to_string(), b"one".to_vec()), ("pipe/2".to_string(), b"two".to_vec())],
        "split at {split}"
    );
}

/// MQTT 3.1.1 §3.1.4: a client may send packets right behind CONNECT without waiting for CONNACK.
/// Every byte after CONNECT is handled in order, wherever the reads happen to split the stream.
#[tokio::test]
async fn packets_right_behind_connect_are_handled_whatever_the_read_boundaries() {
    let broker = start_default().await;
    let whole = pipelined_session("pipelined");
    let mut raw = Raw::open(broker.addr).await;
    raw.send_bytes(&whole).await;
    expect_pipelined_answers(&mut raw, whole.len()).await;
    raw.disconnect().await;

    for split in 1..whole.len() {
        let mut raw = Raw::open(broker.addr).await;
        raw.send_bytes(&whole[..split]).await;
        // Long enough for the broker to read the first part on its own.
        tokio::time::sleep(Duration::from_millis(2)).await;
        raw.send_bytes(&whole[split..]).await;
        expect_pipelined_answers(&mut raw, split).await;
        raw.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn second_connect_closes_the_connection() {
    let broker = start_default().await;
    let mut raw = Raw::connected(broker.addr, "twice").await;
    raw.send(&Packet::Connect(connect_packet("twice", true))).await;
    raw.expect_closed().await;
    broker.stop().await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_connect_timeout() {
    let broker = start(Config { connect_timeout: 1, ..config() }).await;
    let mut raw = Raw::open(broker.addr).await;
    let started = std::time::Instant::now();
    raw.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    broker.stop().await;
}

#[tokio::test]
async fn takeover_closes_the_old_connection_and_publishes_its_will() {
    let broker = start_default().await;
    let mut watcher = Raw::connected(broker.addr, "watcher").await;
    watcher.subscribe(1, &[("will/#", QoS::AtMostOnce)]).await;

    let mut c = connect_packet("same-id", true);
    c.will = Some(LastWill::new("will/same-id", Bytes::from_static(b"gone"), QoS::AtMostOnce, false));
    let (mut old, _) = Raw::connect(broker.addr, c).await;
    let (mut new, _) = Raw::connect(broker.addr, connect_packet("same-id", true)).await;
    old.expect_closed().await;
    let will = watcher.recv_publish().await;
    assert_eq!((&will.topic[..], &will.payload[..]), (&b"will/same-id"[..], &b"gone"[..]));
    new.ping().await;
    broker.stop().await;
}

#[tokio::test]
async fn keepalive_timeout_closes_and_publishes_will_but_pings_keep_it_alive() {
    let broker = start_default().await;
    pings_keep_alive_and_silence_closes(broker.addr, Duration::from_millis(500)).await;
    broker.stop().await;
}

#[tokio::test]
async fn will_is_published_on_socket_close_but_not_after_disconnect() {
    let broker = start_default().await;
    let mut watcher = Raw::connected(broker.addr, "watcher").await;
    watcher.subscribe(1, &[("will/#", QoS::AtMostOnce)]).await;
    let with_will = |id: &str| {
        let mut c = connect_packet(id, true);
        c.will = Some(LastWill::new(format!("will/{id}"), Bytes::from_static(b"bye"), QoS::AtMostOnce, false));
        c
    };
    let (polite, _) = Raw::connect(broker.addr, with_will("polite")).await;
    polite.disconnect().await;
    let (rude, _) = Raw::connect(broker.addr, with_will("rude")).await;
    drop(rude);
    let will = watcher.recv_publish().await;
    assert_eq!(&will.topic[..], b"will/rude");
    watcher.expect_silence(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test]
async fn will_on_protocol_error_and_retained_will() {
    let broker = start_default().await;
    let mut c = connect_packet("bad", true);
    c.will = Some(LastWill::new("status/bad", Bytes::from_static(b"offline"), QoS::AtMostOnce, true));
    let (mut bad, _) = Raw::connect(broker.addr, c).await;
    bad.send_bytes(b"\xf0\x00").await; // reserved packet type
    bad.expect_closed().await;
    // The retained will is there for a later subscriber.
    let mut late = Raw::connected(broker.addr, "late").await;
    late.subscribe(1, &[("status/+", QoS::AtMostOnce)]).await;
    let will = late.recv_publish().await;
    assert!(will.retain);
    assert_eq!(&will.payload[..], b"offline");
    broker.stop().await;
}

mod auth {
    use super::*;
    use midge_passwords::hash_now as hash_password;

    fn users_file(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("users");
        let argon = hash_password(b"s3cret").unwrap();
        let binary = hash_password(&[0xff, 0x00, 0x80]).unwrap();
        std::fs::write(&path, format!("alice:{argon}\nbin:{binary}\n")).unwrap();
        path
    }

    fn with_credentials(user: Option<&str>, password: Option<&[u8]>) -> Packet {
        let mut c = connect_packet("auth-test", true);
        c.username = user.map(Into::into);
        c.password = password.map(Bytes::copy_from_slice);
        Packet::Connect(c)
    }

    #[tokio::test]
    async fn users_file_and_anonymous() {
        let dir = tempdir();
        let broker = start(Config { users_file: Some(users_file(&dir)), allow_anonymous: false, ..config() }).await;
        use ConnectReturnCode::*;
        assert_eq!(connack_code(broker.addr, with_credentials(Some("alice"), Some(b"s3cret"))).await, Accepted);
        assert_eq!(connack_code(broker.addr, with_credentials(Some("bin"), Some(&[0xff, 0, 0x80]))).await, Accepted);
        assert_eq!(
            connack_code(broker.addr, with_credentials(Some("alice"), Some(b"wrong"))).await,
            BadUsernameOrPassword
        );
        assert_eq!(connack_code(broker.addr, with_credentials(Some("alice"), None)).await, BadUsernameOrPassword);
        assert_eq!(
            connack_code(broker.addr, with_credentials(Some("mallory"), Some(b"s3cret"))).await,
            BadUsernameOrPassword
        );
        assert_eq!(connack_code(broker.addr, with_credentials(None, None)).await, NotAuthorized);
        broker.stop().await;

        let open = start(Config { users_file: Some(users_file(&dir)), ..config() }).await;
        assert_eq!(connack_code(open.addr, with_credentials(None, None)).await, Accepted);
        assert_eq!(
            connack_code(open.addr, with_credentials(Some("alice"), Some(b"wrong"))).await,
            BadUsernameOrPassword,
            "a presented username is always checked"
        );
        open.stop().await;
    }

    async fn code_from(source: &str, addr: std::net::SocketAddr, connect: Packet) -> ConnectReturnCode {
        let mut raw = Raw::open_from(source, addr).await;
        raw.send(&connect).await;
        match raw.recv().await {
            Some(Packet::Connack(c)) => c.code(),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Repeated failures from one address, or for one user from many, are refused without a check for
    /// a while: the right password too (it is never looked at), while others carry on.
    #[tokio::test]
    async fn failed_logins_are_throttled_per_source_and_per_user() {
        use ConnectReturnCode::*;
        let dir = tempdir();
        let config = Config { users_file: Some(users_file(&dir)), auth_fail_burst: 3, ..config() };
        let broker = start(config).await;
        let alice = |password: &[u8]| with_credentials(Some("alice"), Some(password));
        let bin = || with_credentials(Some("bin"), Some(&[0xff, 0, 0x80]));
        for _ in 0..3 {
            assert_eq!(code_from("127.0.0.2", broker.addr, alice(b"wrong")).await, BadUsernameOrPassword);
        }
        assert_eq!(code_from("127.0.0.2", broker.addr, alice(b"s3cret")).await, BadUsernameOrPassword, "throttled");
        assert_eq!(code_from("127.0.0.2", broker.addr, bin()).await, BadUsernameOrPassword, "whoever it is");
        assert_eq!(code_from("127.0.0.3", broker.addr, alice(b"s3cret")).await, Accepted, "from elsewhere");
        // alice has had 3 of her 6 failures; 3 more from another address, and she is refused anywhere.
        for _ in 0..3 {
            assert_eq!(code_from("127.0.0.4", broker.addr, alice(b"guess")).await, BadUsernameOrPassword);
        }
        assert_eq!(code_from("127.0.0.5", broker.addr, alice(b"s3cret")).await, BadUsernameOrPassword);
        assert_eq!(code_from("127.0.0.5", broker.addr, bin()).await, Accepted);
        broker.stop().await;
    }

    /// Wrong secrets for the management user from anywhere cannot lock the sidecar out: that name is
    /// throttled per source only.
    #[tokio::test]
    async fn nobody_can_lock_the_management_principal_out() {
        use ConnectReturnCode::*;
        let broker = start(Config { auth_fail_burst: 2, ..mgmt_config() }).await;
        let mgmt = |client_id: &str, password: &str| {
            let mut c = connect_packet(client_id, true);
            c.username = Some("midge-mgmt".into());
            c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
            Packet::Connect(c)
        };
        for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
            for _ in 0..3 {
                assert_eq!(code_from(source, broker.addr, mgmt("midge-mgmt-x", "guess")).await, BadUsernameOrPassword);
            }
        }
        assert_eq!(code_from("127.0.0.1", broker.addr, mgmt("midge-mgmt-real", SECRET)).await, Accepted);
        assert_eq!(code_from("127.0.0.2", broker.addr, mgmt("midge-mgmt-real", SECRET)).await, BadUsernameOrPassword);
        broker.stop().await;
    }
}

#[tokio::test]
async fn shutdown_closes_clients() {
    let broker = start_default().await;
    let mut raw = Raw::connected(broker.addr, "stays").await;
    let addr = broker.addr;
    broker.stop().await;
    raw.expect_closed().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener is closed");
}
