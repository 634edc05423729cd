//! Admin logins: throttled per source and per user, bounded memory under a flood of wrong passwords,
//! and failures logged with user and source but never the password.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

async fn status(api: &Api) -> StatusCode {
    api.send(Method::GET, "users", None, true).await.0
}

#[tokio::test]
async fn failed_logins_are_throttled_per_source_and_per_user() {
    // The default: 10 failures per source, 20 per user, then refused unchecked for a while.
    let stack = Stack::start().await;
    let admin = &stack.api;
    let elsewhere = admin.with_source("127.0.0.2");
    let ops = json!({"username": "ops", "password": "ops-pass", "tags": ""});
    assert_eq!(elsewhere.ok(Method::POST, "users", Some(ops)).await, json!([]));

    let wrong = admin.as_user("admin", "not-the-password");
    for _ in 0..10 {
        assert_eq!(status(&wrong).await, StatusCode::UNAUTHORIZED);
    }
    // Throttled from this source: even the right password is refused, without being checked.
    assert_eq!(status(&admin.as_user("ops", "ops-pass")).await, StatusCode::UNAUTHORIZED);
    let auth = admin.send(Method::POST, "auth", Some(r#"{"username":"ops","password":"ops-pass"}"#), false).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&auth.1).unwrap()["code"], 103);
    // Other sources are not.
    assert_eq!(status(&elsewhere.as_user("ops", "ops-pass")).await, StatusCode::OK);

    // One user tried from many sources: 20 failures and that user is refused from anywhere, unchecked,
    // while others still log in from there.
    let victim = json!({"username": "victim", "password": "right-one", "tags": ""});
    assert_eq!(elsewhere.ok(Method::POST, "users", Some(victim)).await, json!([]));
    for source in ["127.0.0.3", "127.0.0.4"] {
        let guesser = admin.with_source(source).as_user("victim", "guess");
        for _ in 0..10 {
            assert_eq!(status(&guesser).await, StatusCode::UNAUTHORIZED);
        }
    }
    let fresh = admin.with_source("127.0.0.5");
    assert_eq!(status(&fresh.as_user("victim", "right-one")).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&fresh.as_user("ops", "ops-pass")).await, StatusCode::OK);

    let logs = stack.mgmt.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("API login failed") && l.contains("user=admin") && l.contains("source=127.0.0.1")),
        "failed logins are logged with user and source"
    );
    assert!(logs.iter().any(|l| l.contains("throttled") && l.contains("source=127.0.0.1")));
    assert!(logs.iter().all(|l| !l.contains("not-the-password") && !l.contains("guess")), "no password in the log");
}

/// Wrong passwords at full speed from 64 clients, with throttling off so that every one is checked:
/// the sidecar's memory stays where it was (a fixed set of hashing workers with reused memory, and a
/// queue with a limit), where it used to grow by 19 MiB per concurrent check.
#[tokio::test]
async fn a_flood_of_wrong_logins_costs_bounded_memory() {
    let stack = Stack::start_with(&["--auth-fail-burst", "0"]).await;
    let wrong = stack.api.as_user("admin", "wrong");
    let flood = |duration: Duration| {
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let wrong = wrong.clone();
                tokio::spawn(async move {
                    let deadline = Instant::now() + duration;
                    let mut checked = 0u32;
                    while Instant::now() < deadline {
                        let status = status(&wrong).await;
                        assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::SERVICE_UNAVAILABLE);
                        checked += u32::from(status == StatusCode::UNAUTHORIZED);
                    }
                    checked
                })
            })
            .collect();
        async move {
            let mut checked = 0;
            for task in tasks {
                checked += task.await.unwrap();
            }
            checked
        }
    };
    // Every hashing worker has its memory once this has run.
    flood(Duration::from_secs(1)).await;
    let before = stack.mgmt.rss_kib();
    let checked = flood(Duration::from_secs(6)).await;
    let after = stack.mgmt.rss_kib();
    assert!(checked > 20, "the flood was checked ({checked} wrong passwords)");
    assert!(after < before + 24 * 1024, "RSS grew from {before} KiB to {after} KiB");
    assert_eq!(status(&stack.api).await, StatusCode::OK, "and the right password still works");
}

/// Usernames that Basic auth cannot carry (`:`), that would forge log lines (control characters) or that
/// are absurdly long are refused with 108; `PUT users/{name}` with a password changes it.
#[tokio::test]
async fn usernames_are_checked_and_a_password_in_put_users_is_applied() {
    let stack = Stack::start().await;
    let api = &stack.api;
    for bad in ["a:b", "line\nbreak", "esc\u{1b}[31m", &"x".repeat(257)] {
        let body = json!({"username": bad, "password": "pw", "tags": ""});
        assert_eq!(api.code(Method::POST, "users", Some(body)).await, 108, "{bad:?}");
    }
    let longest = "y".repeat(256);
    assert_eq!(api.ok(Method::POST, "users", Some(json!({"username": longest, "password": "pw"}))).await, json!([]));

    let body = json!({"username": "ops", "password": "first", "tags": "viewer"});
    assert_eq!(api.ok(Method::POST, "users", Some(body)).await, json!([]));
    assert_eq!(status(&api.as_user("ops", "first")).await, StatusCode::OK);
    assert_eq!(api.ok(Method::PUT, "users/ops", Some(json!({"password": "second"}))).await, json!([]));
    assert_eq!(status(&api.as_user("ops", "first")).await, StatusCode::UNAUTHORIZED, "the old one is gone");
    assert_eq!(status(&api.as_user("ops", "second")).await, StatusCode::OK);
    assert_eq!(api.get("users/ops").await["tags"], "viewer", "tags untouched");
    let both = json!({"password": "third", "tags": "admin"});
    assert_eq!(api.ok(Method::PUT, "users/ops", Some(both)).await, json!([]));
    assert_eq!(status(&api.as_user("ops", "third")).await, StatusCode::OK);
    assert_eq!(api.get("users/ops").await["tags"], "admin");
    assert_eq!(api.code(Method::PUT, "users/ops", Some(json!({"password": ""}))).await, 104);
    assert_eq!(api.code(Method::PUT, "users/ops", Some(json!({"password": 5}))).await, 108);
    assert_eq!(api.code(Method::PUT, "users/nobody", Some(json!({"password": "x"}))).await, 105);
    assert_eq!(status(&api.as_user("ops", "third")).await, StatusCode::OK, "refused changes changed nothing");
}
