//! The HTTP layer itself: slow or partial requests are cut off, connections are capped without letting
//! partial requests crowd out whole ones, and every error is the API's JSON envelope.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Reads until the server closes the connection; the bytes it sent first.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close the connection within {limit:?}");
    answer
}

/// A thousand connections each holding half a request cannot keep `/status` or the API from answering,
/// and each is closed once it has had the request timeout to finish.
#[tokio::test]
async fn partial_requests_neither_starve_others_nor_live_long() {
    let stack = Stack::start_with(&["--http-request-timeout-ms", "2000", "--http-max-connections", "200"]).await;
    let addr = stack.mgmt.addr;
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /api/v2/users HTTP/1.1\r\nHost: midge\r\n").await.unwrap();
        slow.push(stream);
    }
    let opened = Instant::now();
    // Answered at once: not after the partial requests time out (the client gives up before they do).
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build().unwrap();
    let status = quick.get(format!("{}/status", stack.api.base)).send().await.expect("/status answers");
    assert_eq!(status.status(), StatusCode::OK);
    let users = quick.get(format!("{}/api/v2/users", stack.api.base)).basic_auth("admin", Some("public"));
    assert_eq!(users.send().await.expect("the API answers").status(), StatusCode::OK);

    for stream in &mut slow {
        let limit = Duration::from_secs(5).saturating_sub(opened.elapsed());
        until_closed(stream, limit.max(Duration::from_millis(100))).await;
    }

    // A head in time but a body that never comes: 408, in the envelope.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head =
        "POST /api/v2/auth HTTP/1.1\r\nHost: midge\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = String::from_utf8(until_closed(&mut stream, Duration::from_secs(5)).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"code":408,"#), "{answer}");
}

/// Errors that Rocket or the HTTP layer answer themselves are the API's JSON envelope too.
#[tokio::test]
async fn oversized_bodies_and_unknown_routes_get_the_json_envelope() {
    let stack = Stack::start().await;
    let api = &stack.api;
    // Well over the 1 MiB limit: the client is still sending when the answer is ready, and must read it
    // rather than a reset.
    let huge = format!(r#"{{"username":"u","password":"{}"}}"#, "x".repeat(8 * 1024 * 1024));
    let url = format!("{}/api/v2/users", api.base);
    let response = reqwest::Client::new().post(url).basic_auth("admin", Some("public")).body(huge.clone());
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], 413, "{body}");

    // Chunked, with no Content-Length to judge it by: cut off once it passes the limit.
    let mut stream = TcpStream::connect(stack.mgmt.addr).await.unwrap();
    let head = "POST /api/v2/users HTTP/1.1\r\nHost: midge\r\nAuthorization: Basic YWRtaW46cHVibGlj\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in huge.as_bytes().chunks(64 * 1024) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break; // The server has answered and stopped reading.
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&until_closed(&mut stream, Duration::from_secs(5)).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#"{"code":413,"#), "{answer}");

    for (method, path) in [(Method::GET, "no/such/route"), (Method::PATCH, "users")] {
        let url = format!("{}/api/v2/{path}", api.base);
        let response = reqwest::Client::new().request(method, url).basic_auth("admin", Some("public")).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let body: Value = response.json().await.unwrap();
        assert_eq!((body["code"].as_u64(), body["message"].as_str()), (Some(404), Some("not found")));
    }
}
