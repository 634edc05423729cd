//! `midge-broker probe`: is a broker answering MQTT at this address? For container health checks, where
//! no MQTT client tools are installed.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;

use crate::protocol::{self, Connect, Disconnect, Packet, Protocol, ReasonCode};

/// Connects, sends CONNECT and waits for a CONNACK. Any CONNACK counts: even a refusal proves the
/// broker is up and speaking MQTT.
pub fn probe(address: &str, timeout: Duration) -> Result<(), String> {
    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let connect = Connect {
        protocol: Protocol::V311,
        clean_session: true,
        keep_alive: 10,
        client_id: format!("midge-probe-{:08x}", rand::random::<u32>()),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    let mut out = BytesMut::new();
    protocol::encode(&Packet::Connect(connect), Protocol::V311, &mut out);
    stream.write_all(&out).map_err(|e| format!("send CONNECT: {e}"))?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 64];
    loop {
        if let Some(packet) = protocol::decode(&mut buf, Protocol::V311, 1024).map_err(|e| format!("bad reply: {e}"))? {
            return match packet {
                Packet::Connack(_) => {
                    let mut bye = BytesMut::new();
                    protocol::encode(
                        &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
                        Protocol::V311,
                        &mut bye,
                    );
                    let _ = stream.write_all(&bye);
                    Ok(())
                }
                other => Err(format!("expected CONNACK, got {}", other.name())),
            };
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed before CONNACK".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
