//! Retained messages cluster-wide: the JetStream key-value bucket `midge-retained`, one key per topic,
//! written by the node each message was published on and watched by every node, which keeps its own
//! copy (the router's retained table) from the watch. A node that joins, or whose NATS comes back,
//! reads every one of them first; a retained message that came with its publish is not kept twice.
//!
//! A topic is its own key (escaped, see `bucket::key`) unless that would be too long for a NATS
//! subject; then its key is a digest, and the topic is read from the message. Clearing a topic leaves
//! a delete marker (or, under a digest, the empty message), so that a node back from being away
//! forgets what was cleared meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::{jetstream, Client};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::bucket::{self, key};
use super::subject;
use crate::router::RouterHandle;
use crate::session::Message;
use crate::store::{decode_retained_message, encode_retained};

const BUCKET: &str = "midge-retained";
/// Keys longer than this are digests: a key is part of a subject, and NATS caps a PUB's line at 4 KB.
const LONGEST_KEY: usize = 1024;
/// Marks a digest key; `=` followed by two hex digits is an escape, so `=H` is never a topic's key.
const DIGEST: &str = "=H";

pub fn topic_key(topic: &str) -> String {
    let escaped = key(topic);
    if escaped.len() <= LONGEST_KEY {
        return escaped;
    }
    format!("{DIGEST}{}", subject::digest(topic))
}

/// Starts the writer (this node's retained messages, in order) and the watcher (everyone's).
pub fn start(data: Client, writes: mpsc::Receiver<Arc<Message>>, router: RouterHandle) -> [JoinHandle<()>; 2] {
    let js = jetstream::new(data);
    [tokio::spawn(write(js.clone(), writes)), tokio::spawn(watch(js, router))]
}

/// The bucket, once NATS is there.
async fn bucket(js: &jetstream::Context) -> kv::Store {
    loop {
        match bucket::open(js, BUCKET).await {
            Ok(store) => return store,
            Err(e) => {
                tracing::debug!(error = %e, "retained messages' bucket not reached; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn write(js: jetstream::Context, mut writes: mpsc::Receiver<Arc<Message>>) {
    let mut store = None;
    while let Some(message) = writes.recv().await {
        let store = match &store {
            Some(store) => store,
            None => store.insert(bucket(&js).await),
        };
        let key = topic_key(message.topic_str());
        // A digest key's delete marker could not tell a node that was away which topic was cleared:
        // its clearing is kept as the empty message itself, which names it.
        let written = if message.payload.is_empty() && !key.starts_with(DIGEST) {
            store.delete(&key).await.map_err(|e| e.to_string())
        } else {
            store.put(&key, Bytes::from(encode_retained(&message))).await.map(drop).map_err(|e| e.to_string())
        };
        if let Err(e) = written {
            tracing::warn!(topic = %message.topic_str().escape_debug(), error = %e, "retained message not kept cluster-wide");
        }
    }
}

async fn watch(js: jetstream::Context, router: RouterHandle) {
    let store = bucket(&js).await;
    // The topics of digest keys, learnt from their messages, for when they are cleared.
    let mut digests: HashMap<String, String> = HashMap::new();
    loop {
        let mut entries = match store.watch_with_history(">").await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "retained messages not watched; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = entries.next().await {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::debug!(error = %e, "retained messages' watch broke; watching again");
                    break;
                }
            };
            match entry.operation {
                Operation::Put => match decode_retained_message(&entry.value) {
                    Ok(Some(message)) => {
                        let topic = message.topic_str().to_string();
                        if entry.key.starts_with(DIGEST) {
                            digests.insert(entry.key.clone(), topic.clone());
                        }
                        router.retain_from_cluster(&topic, Some(message));
                    }
                    // Expired on its way.
                    Ok(None) => {}
                    Err(e) => tracing::warn!(key = %entry.key, error = %e, "a retained message unreadable"),
                },
                Operation::Delete | Operation::Purge => {
                    let topic = digests.remove(&entry.key).or_else(|| bucket::text(&entry.key));
                    if let Some(topic) = topic {
                        router.retain_from_cluster(&topic, None);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_topics_get_digest_keys_that_are_not_topics() {
        assert_eq!(topic_key("a/b"), "a=2Fb");
        let long = "x".repeat(2000);
        let digest = topic_key(&long);
        assert!(digest.starts_with(DIGEST) && digest.len() == DIGEST.len() + 64, "{digest}");
        assert_eq!(topic_key(&long), digest, "the same on every node");
        assert_eq!(bucket::text(&digest), None);
        assert_eq!(bucket::text(&topic_key("a/b")).as_deref(), Some("a/b"));
    }
}
