//! Each message once, however many of a node's subscriptions it matched. A node subscribes to NATS once
//! per filter, so a message on `a/b` reaches a node with `a/+` and `a/#` twice; the copies carry the
//! same origin and sequence number, and the second is dropped here.
//!
//! NATS hands each subscription its messages in order, but the copies of different subscriptions
//! interleave as they please, so a node may see seq 9 before seq 8. Per origin, a window of the last
//! [`WINDOW`] numbers remembers which arrived; a number below the window is taken as seen (it would
//! have to wait behind 64k later messages to get there, far past any subscription's buffer).

use std::collections::HashMap;
use std::time::{Duration, Instant};

const WINDOW: u64 = 1 << 16;
const WORDS: usize = (WINDOW / 64) as usize;
/// An origin silent this long (a node gone, or restarted under a new incarnation) is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(120);

#[derive(Default)]
pub struct Dedupe {
    origins: HashMap<Box<str>, Window>,
    last_sweep: Option<Instant>,
}

struct Window {
    /// The highest number seen.
    high: u64,
    /// Bit `n % WINDOW` says whether `n` arrived, for `n` in `high - WINDOW + 1 ..= high`.
    seen: Box<[u64; WORDS]>,
    last_heard: Instant,
}

impl Window {
    fn bit(n: u64) -> (usize, u64) {
        let at = n % WINDOW;
        ((at / 64) as usize, 1 << (at % 64))
    }

    /// Marks `n`; false if it was marked already (or is too old to tell).
    fn first_time(&mut self, n: u64) -> bool {
        if n > self.high {
            if n - self.high >= WINDOW {
                self.seen.fill(0);
            } else {
                // The numbers now in the window are new (their bits last meant numbers a window
                // older); those skipped may still come. Whole words at a time where they can be.
                let mut skipped = self.high + 1;
                while skipped <= n {
                    let (word, mask) = Window::bit(skipped);
                    if skipped.is_multiple_of(64) && n - skipped >= 63 {
                        self.seen[word] = 0;
                        skipped += 64;
                    } else {
                        self.seen[word] &= !mask;
                        skipped += 1;
                    }
                }
            }
            self.high = n;
        } else if self.high - n >= WINDOW {
            return false;
        }
        let (word, mask) = Window::bit(n);
        let first = self.seen[word] & mask == 0;
        self.seen[word] |= mask;
        first
    }
}

impl Dedupe {
    /// Whether this is the first copy of message `seq` from `origin` (sequence numbers start at 1).
    pub fn first_time(&mut self, origin: &str, seq: u64) -> bool {
        let now = Instant::now();
        if self.last_sweep.is_none_or(|at| now.duration_since(at) > FORGET_AFTER) {
            self.origins.retain(|_, window| now.duration_since(window.last_heard) < FORGET_AFTER);
            self.last_sweep = Some(now);
        }
        let window = match self.origins.get_mut(origin) {
            Some(window) => window,
            None => self.origins.entry(origin.into()).or_insert_with(|| Window {
                high: 0,
                seen: Box::new([0; WORDS]),
                last_heard: now,
            }),
        };
        window.last_heard = now;
        window.first_time(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_dropped_in_any_order() {
        let mut dedupe = Dedupe::default();
        assert!(dedupe.first_time("a", 1));
        assert!(dedupe.first_time("a", 3), "2 may come later");
        assert!(!dedupe.first_time("a", 1));
        assert!(dedupe.first_time("a", 2));
        assert!(!dedupe.first_time("a", 3));
        assert!(!dedupe.first_time("a", 2));
        assert!(dedupe.first_time("b", 2), "origins are counted apart");
        // A jump past the window forgets what it held, and what is older than the window is dropped.
        assert!(dedupe.first_time("a", 3 + WINDOW * 2));
        assert!(!dedupe.first_time("a", 3));
        assert!(dedupe.first_time("a", 4 + WINDOW * 2));
        assert!(dedupe.first_time("a", 2 + WINDOW * 2), "inside the window, not seen");
    }

    #[test]
    fn numbers_reused_around_the_window_are_new() {
        let mut dedupe = Dedupe::default();
        for n in 1..=3 * WINDOW {
            assert!(dedupe.first_time("a", n), "{n}");
        }
        for n in 2 * WINDOW + 1..=3 * WINDOW {
            assert!(!dedupe.first_time("a", n), "{n}");
        }
    }
}
