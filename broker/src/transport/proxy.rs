//! The PROXY protocol (v1 text, v2 binary) that load balancers such as HAProxy and AWS ELB put before
//! a connection's own bytes to tell who the client is. Read on listeners with `proxy_protocol = true`
//! only: elsewhere such a header is just bytes that are not MQTT (nor TLS, nor HTTP), and is refused.
//!
//! Exactly the header is read from the socket, never a byte more, so that whatever follows (TLS,
//! the WebSocket upgrade, MQTT) is left to its reader.

use std::net::SocketAddr;

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// `PROXY UNKNOWN\r\n`, the shortest header there is; v2's signature and fixed part are 16 bytes.
const SHORTEST: usize = 15;
/// The longest v1 header the specification allows, `\r\n` included.
const V1_LONGEST: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("i/o error reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the header and returns the client's address it gives, or `peer` (the proxy's) when it gives
/// none: a v1 `UNKNOWN` or a v2 `LOCAL` (the balancer's own health checks).
pub async fn read_header(tcp: &mut TcpStream, peer: SocketAddr) -> Result<SocketAddr, ProxyError> {
    let mut header = vec![0u8; SHORTEST];
    tcp.read_exact(&mut header).await?;
    if header.starts_with(b"PROXY ") {
        read_v1_rest(tcp, &mut header).await?;
        let parsed = v1::Header::try_from(&header[..]).map_err(|e| ProxyError::Malformed(e.to_string()))?;
        return Ok(match parsed.addresses {
            v1::Addresses::Tcp4(ip) => SocketAddr::from((ip.source_address, ip.source_port)),
            v1::Addresses::Tcp6(ip) => SocketAddr::from((ip.source_address, ip.source_port)),
            v1::Addresses::Unknown => peer,
        });
    }
    if !header.starts_with(&V2_SIGNATURE[..]) {
        return Err(ProxyError::Missing);
    }
    header.resize(16, 0);
    tcp.read_exact(&mut header[SHORTEST..]).await?;
    let length = u16::from_be_bytes([header[14], header[15]]) as usize;
    header.resize(16 + length, 0);
    tcp.read_exact(&mut header[16..]).await?;
    let parsed = v2::Header::try_from(&header[..]).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match (parsed.command, parsed.addresses) {
        (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => SocketAddr::from((ip.source_address, ip.source_port)),
        (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => SocketAddr::from((ip.source_address, ip.source_port)),
        _ => peer,
    })
}

/// Reads the rest of a v1 line, up to and with its `\r\n`. The bytes already received are looked at
/// first, so that a header that came whole (as it does from a balancer) takes one read.
async fn read_v1_rest(tcp: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), ProxyError> {
    let mut peeked = [0u8; V1_LONGEST - SHORTEST];
    let available = tcp.peek(&mut peeked).await?;
    if let Some(end) = line_end(header, &peeked[..available]) {
        let start = header.len();
        header.resize(start + end, 0);
        tcp.read_exact(&mut header[start..]).await?;
        return Ok(());
    }
    // Split across segments: a byte at a time, so as not to read past the line.
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_LONGEST {
            return Err(ProxyError::Malformed("v1 header longer than 107 bytes".into()));
        }
        header.push(tcp.read_u8().await?);
    }
    Ok(())
}

/// How many bytes of `more` complete the line begun by `header`.
fn line_end(header: &[u8], more: &[u8]) -> Option<usize> {
    if header.ends_with(b"\r") && more.first() == Some(&b'\n') {
        return Some(1);
    }
    if header.ends_with(b"\r\n") {
        return Some(0);
    }
    more.windows(2).position(|pair| pair == b"\r\n").map(|at| at + 2)
}

#[cfg(test)]
mod tests {
    use super::line_end;

    #[test]
    fn the_line_ends_where_its_crlf_does() {
        assert_eq!(line_end(b"PROXY TCP4 1.2.", b"3.4 5.6.7.8 1 2\r\nMQTT"), Some(17));
        assert_eq!(line_end(b"PROXY UNKNOWN\r", b"\n\x10"), Some(1));
        assert_eq!(line_end(b"PROXY UNKNOWN\r\n", b"\x10"), Some(0));
        assert_eq!(line_end(b"PROXY TCP4 1.2.", b"3.4 5.6"), None);
    }
}
