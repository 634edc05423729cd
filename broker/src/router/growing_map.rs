//! A hash map that never holds the router up for long to grow.
//!
//! A `HashMap` grows by doubling: the insert that crosses its capacity moves every entry into a table
//! twice the size, under the router's lock, while every client waits. At a million sessions that is
//! hundreds of megabytes copied in one go (tens of milliseconds, measured in BENCHMARKS.md). This map
//! starts as one plain map and, once it holds [`SPLIT_AT`] entries, splits into [`SHARDS`] maps chosen by
//! the key's hash: from then on a doubling moves one shard's entries, a 128th of the whole (the longest
//! insert on the way to a million clients: 2.3 ms against 270 ms). Small maps (most of the trie's) stay
//! one plain map and pay nothing.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;

use super::subscriptions::FastMap;

/// Entries at which a map splits into shards.
pub const SPLIT_AT: usize = 8 * 1024;
/// Shards of a split map.
pub const SHARDS: usize = 128;

pub struct GrowingMap<K, V> {
    inner: Inner<K, V>,
}

enum Inner<K, V> {
    One(FastMap<K, V>),
    /// Boxed: most maps never split, and a split map's shards are one allocation.
    Sharded(Box<Sharded<K, V>>),
}

struct Sharded<K, V> {
    shards: Vec<FastMap<K, V>>,
    /// Picks the shard; seeded apart from the shards' own hashers.
    hasher: RandomState,
    len: usize,
}

impl<K, V> Default for GrowingMap<K, V> {
    fn default() -> Self {
        GrowingMap { inner: Inner::One(FastMap::default()) }
    }
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) >> 57) as usize % SHARDS
    }
}

impl<K: Hash + Eq, V> GrowingMap<K, V> {
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::One(map) => map.len(),
            Inner::Sharded(sharded) => sharded.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.get_key_value(key).map(|(_, v)| v)
    }

    pub fn get_key_value<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
    {
        match &self.inner {
            Inner::One(map) => map.get_key_value(key),
            Inner::Sharded(sharded) => sharded.shards[sharded.shard_of(key)].get_key_value(key),
        }
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        match &mut self.inner {
            Inner::One(map) => map.get_mut(key),
            Inner::Sharded(sharded) => {
                let shard = sharded.shard_of(key);
                sharded.shards[shard].get_mut(key)
            }
        }
    }

    /// Inserts or replaces; the old value, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.split_if_due();
        match &mut self.inner {
            Inner::One(map) => map.insert(key, value),
            Inner::Sharded(sharded) => {
                let shard = sharded.shard_of(&key);
                let old = sharded.shards[shard].insert(key, value);
                sharded.len += usize::from(old.is_none());
                old
            }
        }
    }

    /// The value for `key`, inserted from `make` if missing.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        self.split_if_due();
        match &mut self.inner {
            Inner::One(map) => map.entry(key).or_insert_with(make),
            Inner::Sharded(sharded) => {
                let shard = sharded.shard_of(&key);
                match sharded.shards[shard].entry(key) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        sharded.len += 1;
                        entry.insert(make())
                    }
                }
            }
        }
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        match &mut self.inner {
            Inner::One(map) => map.remove(key),
            Inner::Sharded(sharded) => {
                let shard = sharded.shard_of(key);
                let removed = sharded.shards[shard].remove(key);
                sharded.len -= usize::from(removed.is_some());
                removed
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let (one, sharded) = match &self.inner {
            Inner::One(map) => (Some(map.iter()), None),
            Inner::Sharded(sharded) => (None, Some(sharded.shards.iter().flat_map(|shard| shard.iter()))),
        };
        one.into_iter().flatten().chain(sharded.into_iter().flatten())
    }

    /// Splits a plain map that has reached [`SPLIT_AT`] entries: a one-time move of that many.
    fn split_if_due(&mut self) {
        let Inner::One(map) = &mut self.inner else { return };
        if map.len() < SPLIT_AT {
            return;
        }
        let mut sharded = Sharded {
            shards: (0..SHARDS).map(|_| FastMap::default()).collect(),
            hasher: RandomState::default(),
            len: map.len(),
        };
        for (key, value) in std::mem::take(map) {
            let shard = sharded.shard_of(&key);
            sharded.shards[shard].insert(key, value);
        }
        self.inner = Inner::Sharded(Box::new(sharded));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Whatever the operations, the map answers as a plain one does, across the split.
        #[test]
        fn agrees_with_a_plain_map(ops in prop::collection::vec((0u8..3, 0u32..40_000, any::<u16>()), 0..60_000)) {
            let mut map: GrowingMap<u32, u16> = GrowingMap::default();
            let mut plain: BTreeMap<u32, u16> = BTreeMap::new();
            for (op, key, value) in ops {
                match op {
                    0 => prop_assert_eq!(map.insert(key, value), plain.insert(key, value)),
                    1 => prop_assert_eq!(map.remove(&key), plain.remove(&key)),
                    _ => {
                        let bump = |v: &mut u16| *v = v.wrapping_add(1);
                        bump(map.get_or_insert_with(key, || value));
                        bump(plain.entry(key).or_insert(value));
                    }
                }
            }
            prop_assert_eq!(map.len(), plain.len());
            let mut entries: Vec<(u32, u16)> = map.iter().map(|(k, v)| (*k, *v)).collect();
            entries.sort();
            prop_assert_eq!(entries, plain.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn lookups_by_borrowed_keys_after_the_split() {
        let mut map: GrowingMap<std::sync::Arc<str>, usize> = GrowingMap::default();
        for i in 0..SPLIT_AT * 2 {
            map.insert(format!("client-{i}").into(), i);
        }
        assert!(matches!(map.inner, Inner::Sharded(_)));
        assert_eq!(map.get("client-7"), Some(&7));
        let late = format!("client-{}", SPLIT_AT + 5);
        assert_eq!(map.get_key_value(late.as_str()).map(|(k, _)| &**k), Some(late.as_str()));
        *map.get_mut("client-7").unwrap() += 1;
        assert_eq!(map.remove("client-7"), Some(8));
        assert!(map.get("client-7").is_none());
        assert_eq!(map.len(), SPLIT_AT * 2 - 1);
    }
}
