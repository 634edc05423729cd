//! Shared subscriptions: which member of a group gets a message (`shared_subscription_strategy`, as
//! EMQ names them).

use serde::{Deserialize, Serialize};

use super::subscriptions::SharedGroup;
use crate::session::ClientId;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Any member, at random.
    Random,
    /// Each member in turn.
    #[default]
    RoundRobin,
    /// The same member until it goes offline or leaves.
    Sticky,
    /// The member the publisher's connection hashes to: one publisher's messages stay in order at one
    /// member.
    Hash,
}

/// The member of `group` to get a message published by the connection `origin`: an online one where
/// there is one (`online` says which), the choice's index and whether it is online. Without any online
/// member, the strategy's own choice, whose session queues the message.
pub fn pick(
    group: &SharedGroup,
    strategy: SharedStrategy,
    origin: u64,
    online: impl Fn(&ClientId) -> bool,
) -> Option<(usize, bool)> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = match strategy {
        SharedStrategy::RoundRobin | SharedStrategy::Sticky => group.next.get(),
        SharedStrategy::Random => rand::random::<u32>() as usize,
        // Fibonacci hashing spreads consecutive connection ids over the members.
        SharedStrategy::Hash => (origin.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize,
    } % n;
    let found = (0..n).map(|i| (start + i) % n).find(|&i| online(&group.members[i].0));
    let (chosen, is_online) = match found {
        Some(i) => (i, true),
        None => (start, false),
    };
    match strategy {
        SharedStrategy::RoundRobin => group.next.set(chosen + 1),
        SharedStrategy::Sticky => group.next.set(chosen),
        SharedStrategy::Random | SharedStrategy::Hash => {}
    }
    Some((chosen, is_online))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;

    use super::*;
    use crate::protocol::{QoS, SubscriptionOptions};
    use crate::session::SharedKey;

    fn group(members: &[&str]) -> SharedGroup {
        let options = SubscriptionOptions::qos(QoS::AtMostOnce);
        SharedGroup {
            key: Arc::new(SharedKey { group: "g".into(), filter: "t".into() }),
            members: members.iter().map(|m| (ClientId::from(*m), options)).collect(),
            next: Cell::new(0),
        }
    }

    fn picks(g: &SharedGroup, strategy: SharedStrategy, origin: u64, offline: &[&str], n: usize) -> Vec<String> {
        let online = |c: &ClientId| !offline.contains(&&**c);
        (0..n).map(|_| g.members[pick(g, strategy, origin, online).unwrap().0].0.to_string()).collect()
    }

    #[test]
    fn strategies() {
        let g = group(&["a", "b", "c"]);
        assert_eq!(picks(&g, SharedStrategy::RoundRobin, 1, &[], 4), ["a", "b", "c", "a"]);
        // Offline members are passed over.
        assert_eq!(picks(&g, SharedStrategy::RoundRobin, 1, &["c"], 3), ["b", "a", "b"]);
        let g = group(&["a", "b", "c"]);
        assert_eq!(picks(&g, SharedStrategy::Sticky, 1, &[], 3), ["a", "a", "a"]);
        assert_eq!(picks(&g, SharedStrategy::Sticky, 1, &["a"], 2), ["b", "b"]);
        // One publisher, one member; publishers spread.
        let one = picks(&g, SharedStrategy::Hash, 7, &[], 3);
        assert!(one.iter().all(|m| *m == one[0]), "{one:?}");
        let spread: std::collections::BTreeSet<String> =
            (0..64).flat_map(|origin| picks(&g, SharedStrategy::Hash, origin, &[], 1)).collect();
        assert_eq!(spread.len(), 3);
        let random: std::collections::BTreeSet<String> =
            picks(&g, SharedStrategy::Random, 1, &["b"], 64).into_iter().collect();
        assert_eq!(random.into_iter().collect::<Vec<_>>(), ["a", "c"]);
        // Nobody online: the strategy's choice, said to be offline.
        let g = group(&["a", "b"]);
        assert_eq!(pick(&g, SharedStrategy::RoundRobin, 1, |_| false), Some((0, false)));
        assert_eq!(pick(&group(&[]), SharedStrategy::RoundRobin, 1, |_| true), None);
    }
}
