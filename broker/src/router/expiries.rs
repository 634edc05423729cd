//! When parked sessions expire: their client ids, filed by the second in which each falls due.
//!
//! An ordered set of (deadline, client id) cost ~64 bytes per parked session: sessions park in about
//! the order of their deadlines, so the set's nodes split half full. Here a session costs its client
//! id in one second's list (16 bytes and the list's spare room) and each second a map entry. Where a
//! session is filed is kept with it ([`Parked`]), so taking it out when it resumes costs the same
//! however long that second's list is: a network blip that parks 100k sessions in one second and
//! resumes them in the next must not scan them.
//!
//! A second's list is looked at once the second has begun, and only those of its sessions whose
//! deadline has passed go: a session expires at its deadline (give or take the sweep's period), never
//! early.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use crate::session::ClientId;

/// Where a parked session's deadline is filed: the second it falls due in (counted from the router's
/// epoch, from 1: second `n` holds the deadlines in `[n - 1, n)` seconds), and its place in that
/// second's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    second: NonZeroU32,
    index: u32,
}

/// Since when a session is parked, and where its deadline is filed (none for a session that lasts
/// until the broker stops). 16 bytes, as an `Instant` alone would be.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parked {
    /// Milliseconds from the router's epoch; negative for a session restored as parked before it.
    since_ms: i64,
    due: Option<Due>,
}

pub(super) struct Expiries {
    epoch: Instant,
    due: BTreeMap<NonZeroU32, Vec<ClientId>>,
}

impl Expiries {
    pub(super) fn new() -> Expiries {
        Expiries { epoch: Instant::now(), due: BTreeMap::new() }
    }

    /// Files the deadline of a session parked at `since` that lasts `expiry` after it (`None`: until the
    /// broker stops, nothing filed).
    pub(super) fn park(&mut self, client_id: &ClientId, since: Instant, expiry: Option<Duration>) -> Parked {
        let since_ms = self.ms(since);
        let due = expiry.and_then(|expiry| {
            let deadline_ms = since_ms.saturating_add(i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX));
            // Past u32 seconds (136 years) a deadline is never reached by this process.
            let second = NonZeroU32::new(u32::try_from(deadline_ms.max(0) / 1000 + 1).ok()?)?;
            let list = self.due.entry(second).or_default();
            list.push(client_id.clone());
            Some(Due { second, index: (list.len() - 1) as u32 })
        });
        Parked { since_ms, due }
    }

    /// Takes out the deadline `parked` filed for `client_id`. The list's last entry moves into its
    /// place: returned, with its new place, for its session's [`Parked`] to be told.
    #[must_use]
    pub(super) fn unpark(&mut self, client_id: &ClientId, parked: Parked) -> Option<(ClientId, Due)> {
        let due = parked.due?;
        let list = self.due.get_mut(&due.second)?;
        // A second already taken by `take_due` holds nothing any more.
        if list.get(due.index as usize).is_none_or(|filed| **filed != **client_id) {
            return None;
        }
        list.swap_remove(due.index as usize);
        if list.is_empty() {
            self.due.remove(&due.second);
            return None;
        }
        if list.len() < list.capacity() / 4 {
            list.shrink_to(list.len() * 2);
        }
        let moved = list.get(due.index as usize)?.clone();
        Some((moved, due))
    }

    /// The seconds begun by `now`, whose lists may hold deadlines that have passed.
    pub(super) fn begun(&self, now: Instant) -> Vec<NonZeroU32> {
        let now_ms = self.ms(now);
        self.due.keys().take_while(|second| (i64::from(second.get()) - 1) * 1000 <= now_ms).copied().collect()
    }

    /// The list of `second`, taken out whole (a session filed in it is [`Parked::due_in`] it).
    pub(super) fn take(&mut self, second: NonZeroU32) -> Vec<ClientId> {
        self.due.remove(&second).unwrap_or_default()
    }

    /// Files `later` (taken from `second`'s list, not due yet) there again; `moved` tells each
    /// session its new place.
    pub(super) fn refile(&mut self, second: NonZeroU32, later: Vec<ClientId>, mut moved: impl FnMut(&ClientId, Due)) {
        if later.is_empty() {
            return;
        }
        // Appended: a session may have been filed in that second meanwhile.
        let list = self.due.entry(second).or_default();
        for client_id in later {
            moved(&client_id, Due { second, index: list.len() as u32 });
            list.push(client_id);
        }
    }

    /// Whether a session parked as `parked`, kept for `expiry`, is due by `now`.
    pub(super) fn has_passed(&self, parked: &Parked, expiry: Option<Duration>, now: Instant) -> bool {
        expiry.is_some_and(|expiry| {
            parked.since_ms.saturating_add(i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX)) <= self.ms(now)
        })
    }

    /// How long the session has been parked.
    pub(super) fn parked_for(&self, parked: &Parked) -> Duration {
        Duration::from_millis(self.ms(Instant::now()).saturating_sub(parked.since_ms).max(0) as u64)
    }

    /// How many deadlines are filed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.due.values().map(Vec::len).sum()
    }

    fn ms(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.epoch) {
            Some(after) => after.as_millis() as i64,
            None => -(self.epoch.duration_since(at).as_millis() as i64),
        }
    }
}

impl Parked {
    /// Whether this session's deadline is filed under `second`.
    pub(super) fn due_in(&self, second: NonZeroU32) -> bool {
        self.due.is_some_and(|due| due.second == second)
    }

    /// Tells the session that its deadline moved in its list.
    pub(super) fn moved_to(&mut self, due: Due) {
        self.due = Some(due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::from(s)
    }

    #[test]
    fn parked_state_is_as_small_as_an_instant() {
        assert_eq!(std::mem::size_of::<Parked>(), std::mem::size_of::<Instant>());
    }

    /// Takes out what is due by `now` as the router does: the lists of the seconds begun, less what
    /// is not due yet, filed again.
    fn expire(expiries: &mut Expiries, parked: &mut [(ClientId, Parked, Duration)], now: Instant) -> Vec<ClientId> {
        let mut gone = Vec::new();
        for second in expiries.begun(now) {
            let mut later = Vec::new();
            for id in expiries.take(second) {
                let (_, p, expiry) = parked.iter().find(|(i, ..)| *i == id).expect("filed");
                assert!(p.due_in(second));
                if expiries.has_passed(p, Some(*expiry), now) {
                    gone.push(id);
                } else {
                    later.push(id);
                }
            }
            expiries.refile(second, later, |id, due| {
                parked.iter_mut().find(|(i, ..)| i == id).expect("filed").1.moved_to(due);
            });
        }
        gone
    }

    #[test]
    fn sessions_expire_at_their_deadline_never_early() {
        let mut expiries = Expiries::new();
        let start = expiries.epoch;
        let mut parked: Vec<(ClientId, Parked, Duration)> = [("a", 1500), ("b", 1900), ("c", 1700), ("d", 5000)]
            .into_iter()
            .map(|(i, ms)| {
                let expiry = Duration::from_millis(ms);
                (id(i), expiries.park(&id(i), start, Some(expiry)), expiry)
            })
            .collect();
        expiries.park(&id("forever"), start, None);
        assert_eq!(expiries.len(), 4);
        assert!(expire(&mut expiries, &mut parked, start + Duration::from_millis(1499)).is_empty());
        assert_eq!(expire(&mut expiries, &mut parked, start + Duration::from_millis(1500)), vec![id("a")]);
        assert_eq!(expire(&mut expiries, &mut parked, start + Duration::from_millis(1800)), vec![id("c")]);
        assert_eq!(expire(&mut expiries, &mut parked, start + Duration::from_millis(4999)), vec![id("b")]);
        assert_eq!(expire(&mut expiries, &mut parked, start + Duration::from_secs(60)), vec![id("d")]);
        assert_eq!(expiries.len(), 0);
    }

    #[test]
    fn a_resumed_session_is_taken_out_and_the_one_moved_into_its_place_told() {
        let mut expiries = Expiries::new();
        let start = expiries.epoch;
        let ids: Vec<ClientId> = (0..4).map(|i| id(&format!("c{i}"))).collect();
        let mut parked: Vec<Parked> =
            ids.iter().map(|i| expiries.park(i, start, Some(Duration::from_secs(10)))).collect();
        // c1 resumes: the last one (c3) takes its place.
        let (moved, due) = expiries.unpark(&ids[1], parked[1]).expect("c3 moved");
        assert!(ClientId::ptr_eq(&moved, &ids[3]));
        parked[3].moved_to(due);
        // Taking c3 out from its new place works; c1 cannot be taken out twice.
        assert!(expiries.unpark(&ids[1], parked[1]).is_none());
        let _ = expiries.unpark(&ids[3], parked[3]);
        assert_eq!(expiries.len(), 2);
        let second = expiries.begun(start + Duration::from_secs(10))[0];
        assert_eq!(expiries.take(second), vec![ids[0].clone(), ids[2].clone()]);
        // Once taken, a second's ids are not there to take out.
        assert!(expiries.unpark(&ids[0], parked[0]).is_none());
    }

    #[test]
    fn a_session_parked_before_the_epoch_counts_from_then() {
        let mut expiries = Expiries::new();
        let Some(earlier) = expiries.epoch.checked_sub(Duration::from_secs(30)) else { return };
        let parked = expiries.park(&id("old"), earlier, Some(Duration::from_secs(40)));
        assert!(expiries.parked_for(&parked) >= Duration::from_secs(30));
        let expiry = Some(Duration::from_secs(40));
        assert!(!expiries.has_passed(&parked, expiry, expiries.epoch + Duration::from_millis(9_999)));
        assert!(expiries.has_passed(&parked, expiry, expiries.epoch + Duration::from_secs(10)));
    }
}
