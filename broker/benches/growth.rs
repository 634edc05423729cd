//! Pauses from growth: the longest single insert while a table grows to a million entries, a plain
//! hash map against the router's `GrowingMap`, with keys and values the size of the router's clients
//! table's (an `Arc<str>` client id and about 200 bytes). `cargo bench -p midge-broker --bench growth`;
//! figures in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use midge_broker::router::growing_map::GrowingMap;
use midge_broker::router::subscriptions::FastMap;

const ENTRIES: usize = 1_000_000;

type Value = [u64; 26];

/// (longest insert, inserts over 1 ms, total)
fn fill(mut insert: impl FnMut(Arc<str>, Value)) -> (Duration, usize, Duration) {
    let keys: Vec<Arc<str>> = (0..ENTRIES).map(|i| Arc::from(format!("device-{i:08}"))).collect();
    let started = Instant::now();
    let (mut longest, mut over_1ms) = (Duration::ZERO, 0);
    for (i, key) in keys.into_iter().enumerate() {
        let t = Instant::now();
        insert(key, [i as u64; 26]);
        let took = t.elapsed();
        longest = longest.max(took);
        over_1ms += usize::from(took > Duration::from_millis(1));
    }
    (longest, over_1ms, started.elapsed())
}

fn main() {
    for round in 1..=3 {
        let mut plain: FastMap<Arc<str>, Value> = FastMap::default();
        let (longest, slow, total) = fill(|k, v| {
            plain.insert(k, v);
        });
        black_box(&plain);
        drop(plain);
        println!("round {round}: HashMap     longest insert {longest:>10.3?}, inserts over 1 ms: {slow:>3}, total {total:.2?}");
        let mut growing: GrowingMap<Arc<str>, Value> = GrowingMap::default();
        let (longest, slow, total) = fill(|k, v| {
            growing.insert(k, v);
        });
        black_box(&growing);
        drop(growing);
        println!("round {round}: GrowingMap  longest insert {longest:>10.3?}, inserts over 1 ms: {slow:>3}, total {total:.2?}");
    }
}
