//! EMQ's per-connection `rate_limit`: how fast a listener reads from each of its connections. A token
//! bucket: a connection may send `burst` bytes at once, then `rate` bytes a second. Past that its reader
//! simply stops reading until the bucket has refilled, so TCP's own flow control slows the client down;
//! nothing it sent is dropped.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// `"BURST,RATE"`, each a byte count with an optional unit: `"100KB,10KB"` lets a client send 100 KiB
/// at once and 10 KiB a second after that. A bare number is in KB, as EMQ 2.x reads `"100,10"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RateLimit {
    /// Bytes.
    pub burst: u64,
    /// Bytes a second.
    pub rate: u64,
}

impl TryFrom<String> for RateLimit {
    type Error = String;

    fn try_from(text: String) -> Result<RateLimit, String> {
        text.parse()
    }
}

impl From<RateLimit> for String {
    fn from(limit: RateLimit) -> String {
        limit.to_string()
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<RateLimit, String> {
        let wrong = || format!("rate_limit must be \"BURST,RATE\" such as \"100KB,10KB\", not {text:?}");
        let (burst, rate) = text.split_once(',').ok_or_else(wrong)?;
        let (burst, rate) = (bytes(burst).ok_or_else(wrong)?, bytes(rate).ok_or_else(wrong)?);
        if rate == 0 {
            return Err(format!("rate_limit's rate must be above 0: {text:?}"));
        }
        Ok(RateLimit { burst, rate })
    }
}

/// `"100KB"`, `"1MB"`, `"512B"` or `"100"` (KB).
fn bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "B" => 1,
        "" | "K" | "KB" => 1024,
        "M" | "MB" => 1024 * 1024,
        "G" | "GB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(scale)
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B,{}B", self.burst, self.rate)
    }
}

/// The smallest read a limited connection makes.
const MIN_READ: usize = 512;

/// One connection's bucket. Its level may go below zero: a read takes what the socket had, and the
/// debt is then paid off before the next read.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Bucket {
        Bucket { limit, level: limit.burst as f64, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.limit.rate as f64).min(self.limit.burst as f64);
        self.at = now;
    }

    /// Takes `bytes` just read.
    pub fn spend(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.level -= bytes as f64;
    }

    /// How much the next read may take: what the bucket holds, but at least `MIN_READ` so that a
    /// slow rate does not mean a read for every few bytes. A read thus overdraws by `MIN_READ` at most.
    pub fn allowance(&self) -> usize {
        (self.level.max(0.0) as usize).max(MIN_READ)
    }

    /// When reading may go on, if not now: once the bucket is back above empty.
    pub fn resumes_at(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        (self.level <= 0.0).then(|| {
            // At least a millisecond, so that a debt of a fraction of a byte does not spin.
            let wait = (-self.level / self.limit.rate as f64).max(0.001);
            now + Duration::from_secs_f64(wait)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_emq_writes_them() {
        let parsed = |text: &str| text.parse::<RateLimit>();
        assert_eq!(parsed("100KB,10KB"), Ok(RateLimit { burst: 100 * 1024, rate: 10 * 1024 }));
        assert_eq!(parsed("100,10"), Ok(RateLimit { burst: 100 * 1024, rate: 10 * 1024 }));
        assert_eq!(parsed(" 2MB , 512b"), Ok(RateLimit { burst: 2 * 1024 * 1024, rate: 512 }));
        assert_eq!(parsed("0,1B"), Ok(RateLimit { burst: 0, rate: 1 }));
        for wrong in ["", "100KB", "100KB,", "KB,10", "1XB,1", "-1,1", "1,0", "99999999999999999999GB,1"] {
            assert!(parsed(wrong).is_err(), "{wrong:?}");
        }
        let limit = parsed("3KB,1KB").unwrap();
        assert_eq!(limit.to_string().parse::<RateLimit>(), Ok(limit));
    }

    #[test]
    fn a_spent_bucket_waits_for_its_debt_to_be_paid() {
        let start = Instant::now();
        let mut bucket = Bucket::new(RateLimit { burst: 1000, rate: 100 }, start);
        assert_eq!(bucket.resumes_at(start), None, "a full bucket reads");
        assert_eq!(bucket.allowance(), 1000, "what it holds");
        bucket.spend(1500, start);
        assert_eq!(bucket.allowance(), MIN_READ, "an overdrawn one: the least read, once it may");
        assert_eq!(bucket.resumes_at(start), Some(start + Duration::from_secs(5)), "500 bytes of debt at 100/s");
        let later = start + Duration::from_secs(5);
        assert_eq!(bucket.resumes_at(later), Some(later + Duration::from_millis(1)), "exactly empty still waits");
        let much_later = start + Duration::from_secs(60);
        assert_eq!(bucket.resumes_at(much_later), None);
        bucket.spend(1000, much_later);
        assert!(bucket.resumes_at(much_later).is_some(), "refilled no further than the burst");
    }
}
