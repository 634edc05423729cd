//! Throttling of failed logins, per source address and per username.
//!
//! Each source and each username has a bucket of failures it may make: `burst` at once, refilled at
//! `burst` a minute (a username gets twice that, as one account may be tried from many sources). A
//! username's bucket lets anyone who can reach the server lock that user out for a while; for a name
//! whose availability matters more than guessing it does (a long random secret), pass no username. A
//! login whose source or username has an empty bucket is refused at once without checking its password,
//! so a password guesser costs the server next to nothing and learns nothing. A success empties no
//! bucket and fills none: the only way back is time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources and usernames remembered at once. Past this, buckets that have filled up again are
/// forgotten; if none has, new sources and names go untracked (the bounded hashing queue still limits
/// what their checks cost).
const MAX_BUCKETS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures a source may make at once, and a minute after that; 0 turns throttling off.
    pub burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { burst: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Source(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Whether the refusal that emptied it was logged (once per episode).
    logged: bool,
}

/// Why a login was refused without a check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Throttled {
    #[error("too many failed logins from this address")]
    Source,
    #[error("too many failed logins for this user")]
    User,
    #[error("too many sources and users failing at once")]
    Full,
}

pub struct Throttle {
    limits: Limits,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl Throttle {
    pub fn new(limits: Limits) -> Throttle {
        Throttle { limits, buckets: Mutex::new(HashMap::new()) }
    }

    fn capacity(&self, key: &Key) -> f64 {
        match key {
            Key::Source(_) => self.limits.burst as f64,
            Key::User(_) => 2.0 * self.limits.burst as f64,
        }
    }

    /// Refill rate per second: a whole burst a minute.
    fn rate(&self) -> f64 {
        self.limits.burst as f64 / 60.0
    }

    fn refilled(&self, key: &Key, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate()).min(self.capacity(key))
    }

    /// May a login from `source` (as `user`, throttled per user too if given) be checked? Call before
    /// the (expensive) check.
    pub fn check(&self, source: IpAddr, user: Option<&str>) -> Result<(), Throttled> {
        if self.limits.burst == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for (key, refused) in keys(source, user).zip([Throttled::Source, Throttled::User]) {
            let Some(bucket) = buckets.get(&key).copied() else { continue };
            if self.refilled(&key, &bucket, now) < 1.0 {
                if !bucket.logged {
                    let user = user.unwrap_or_default().escape_debug();
                    tracing::warn!(%source, %user, "{refused}: refusing logins without checking them for a while");
                    buckets.insert(key, Bucket { logged: true, ..bucket });
                }
                return Err(refused);
            }
        }
        Ok(())
    }

    /// Counts a failed login from `source` (as `user`, if it is throttled per user).
    pub fn failed(&self, source: IpAddr, user: Option<&str>) -> Result<(), Throttled> {
        if self.limits.burst == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys(source, user) {
            let tokens = match buckets.get(&key) {
                Some(bucket) => self.refilled(&key, bucket, now),
                None => {
                    if buckets.len() >= MAX_BUCKETS {
                        buckets.retain(|key, bucket| self.refilled(key, bucket, now) < self.capacity(key));
                    }
                    if buckets.len() >= MAX_BUCKETS {
                        return Err(Throttled::Full);
                    }
                    self.capacity(&key)
                }
            };
            let logged = buckets.get(&key).is_some_and(|b| b.logged) && tokens < 1.0;
            buckets.insert(key, Bucket { tokens: (tokens - 1.0).max(0.0), at: now, logged });
        }
        Ok(())
    }

    /// Sources and usernames being remembered (for tests and figures).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// How long until `source` may be checked again, were it to stop failing now.
    pub fn retry_after(&self, source: IpAddr) -> Duration {
        let key = Key::Source(source);
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(&key) {
            Some(bucket) if self.rate() > 0.0 => {
                let missing = (1.0 - self.refilled(&key, bucket, Instant::now())).max(0.0);
                Duration::from_secs_f64(missing / self.rate())
            }
            _ => Duration::ZERO,
        }
    }
}

fn keys(source: IpAddr, user: Option<&str>) -> impl Iterator<Item = Key> {
    std::iter::once(Key::Source(source)).chain(user.map(|u| Key::User(u.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_source_is_throttled_after_its_burst_and_others_are_not() {
        let throttle = Throttle::new(Limits { burst: 3 });
        for _ in 0..3 {
            assert_eq!(throttle.check(ip(1), Some("alice")), Ok(()));
            throttle.failed(ip(1), Some("alice")).unwrap();
        }
        assert_eq!(throttle.check(ip(1), Some("alice")), Err(Throttled::Source));
        assert_eq!(throttle.check(ip(1), Some("bob")), Err(Throttled::Source), "whatever the user");
        assert_eq!(throttle.check(ip(2), Some("bob")), Ok(()));
        assert!(throttle.retry_after(ip(1)) > Duration::from_secs(10));
        // alice has failed 3 of her 6; 3 more from another source empty her bucket too.
        assert_eq!(throttle.check(ip(2), Some("alice")), Ok(()));
        for _ in 0..3 {
            throttle.failed(ip(2), Some("alice")).unwrap();
        }
        assert_eq!(throttle.check(ip(3), Some("alice")), Err(Throttled::User));
        assert_eq!(throttle.check(ip(3), Some("carol")), Ok(()));
    }

    #[test]
    fn buckets_refill_with_time() {
        let throttle = Throttle::new(Limits { burst: 60 });
        let past = Instant::now() - Duration::from_secs(2);
        throttle.buckets.lock().unwrap().insert(Key::Source(ip(1)), Bucket { tokens: 0.0, at: past, logged: false });
        // A burst of 60 a minute refills one a second: two seconds later, one more check is allowed.
        assert_eq!(throttle.check(ip(1), Some("x")), Ok(()));
    }

    #[test]
    fn zero_burst_turns_throttling_off_and_memory_is_bounded() {
        let off = Throttle::new(Limits { burst: 0 });
        for _ in 0..100 {
            off.failed(ip(1), Some("x")).unwrap();
        }
        assert_eq!(off.check(ip(1), Some("x")), Ok(()));
        assert_eq!(off.tracked(), 0);

        let throttle = Throttle::new(Limits { burst: 1 });
        let mut full = 0;
        for n in 0..(MAX_BUCKETS as u32) {
            let source = IpAddr::from((0x0a00_0000 + n).to_be_bytes());
            if throttle.failed(source, Some("same")).is_err() {
                full += 1;
            }
        }
        assert!(throttle.tracked() <= MAX_BUCKETS);
        assert!(full > 0, "past the bound, new sources go untracked");
        // Without a username, only the source is throttled: failures cannot lock a name out.
        let throttle = Throttle::new(Limits { burst: 2 });
        for source in 1..=5 {
            for _ in 0..2 {
                throttle.failed(ip(source), None).unwrap();
            }
        }
        assert_eq!(throttle.check(ip(6), None), Ok(()));
        assert_eq!(throttle.check(ip(1), None), Err(Throttled::Source));
    }
}
