//! JetStream key-value buckets, made as the key-value convention has it (a stream `KV_<name>` on
//! `$KV.<name>.>`, one message per key) by this code rather than the client's `create_key_value`,
//! which first reads the account's info in a shape Debian's nats-server 2.9 does not send. Three
//! replicas where the NATS cluster has three servers, else one.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;

use super::ClusterError;

/// The bucket `name`, made if it is not there yet.
pub async fn open(js: &jetstream::Context, name: &str) -> Result<kv::Store, ClusterError> {
    let mut config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 3,
        ..Default::default()
    };
    if let Err(e) = js.get_or_create_stream(config.clone()).await {
        tracing::info!(bucket = name, error = %e, "bucket with 3 replicas refused; trying 1");
        config.num_replicas = 1;
        js.get_or_create_stream(config).await.map_err(nats)?;
    }
    js.get_key_value(name).await.map_err(nats)
}

/// Any text as a key: letters, digits, `-` and `_` as they are, every other byte `=` and two hex
/// digits (keys allow `-/_=.` and alphanumerics, and `.` and `/` mean something to NATS). `.` is left
/// to join such keys into a path.
pub fn key(text: &str) -> String {
    let mut key = String::with_capacity(text.len() + 1);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            key.push(byte as char);
        } else {
            key.push_str(&format!("={byte:02X}"));
        }
    }
    if key.is_empty() {
        key.push('=');
    }
    key
}

/// The text `key` was made from, if it was made by [`key`].
pub fn text(key: &str) -> Option<String> {
    if key == "=" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(key.len());
    let mut rest = key.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'=' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// How long reading a bucket through may go without an entry before it is given up.
const READ_STALL: Duration = Duration::from_secs(5);

/// Every current entry under `keys` (a key filter: `>` for all, `<prefix>.>` for a path) that `keep`
/// keeps, deleted keys left out, read in one pass of one consumer rather than a request per key.
pub async fn entries(
    store: &kv::Store,
    keys: &str,
    mut keep: impl FnMut(&kv::Entry) -> bool,
) -> Result<Vec<kv::Entry>, ClusterError> {
    // Where nothing matches, the watch sends nothing at all, not even word that it is done: the
    // stream is asked first (fresh: `status()` gives its state as it was when the bucket was opened).
    // For the whole bucket its message count says it; for part of it, the first of its subjects
    // there (listing every subject of a large bucket would be megabytes).
    let empty = if keys == ">" {
        store.stream.get_info().await.map_err(nats)?.state.messages == 0
    } else {
        let mut subjects = store.stream.info_with_subjects(format!("{}{keys}", store.prefix)).await.map_err(nats)?;
        subjects.next().await.transpose().map_err(nats)?.is_none()
    };
    if empty {
        return Ok(Vec::new());
    }
    let mut watch = store.watch_with_history(keys).await.map_err(nats)?;
    let mut kept = Vec::new();
    loop {
        let entry = tokio::time::timeout(READ_STALL, watch.next()).await;
        let entry = entry.map_err(|_| nats("a bucket's entries stopped coming"))?;
        let entry = entry.ok_or_else(|| nats("a bucket's entries ended early"))?.map_err(nats)?;
        let last = entry.delta == 0;
        if entry.operation == kv::Operation::Put && keep(&entry) {
            kept.push(entry);
        }
        if last {
            return Ok(kept);
        }
    }
}

pub fn nats(error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_text_is_a_valid_distinct_key() {
        let valid = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b));
        let texts = ["", "a", "a.b", "a/b", "a=2E", "日本", " ", "=", "A"];
        let keys: Vec<String> = texts.iter().map(|text| key(text)).collect();
        for (text, k) in texts.iter().zip(&keys) {
            assert!(valid(k), "{text:?} gave {k:?}");
        }
        for (text_in, k) in texts.iter().zip(&keys) {
            assert_eq!(text(k).as_deref(), Some(*text_in));
        }
        let mut distinct = keys.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
    }
}
