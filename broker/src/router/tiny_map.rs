//! The trie's maps: most of its nodes have one child or one subscriber, and a hash map of one entry
//! still allocates room for four. A `TinyMap` holds one entry inline and becomes a [`GrowingMap`] at the
//! second (and stays one), boxed, so that the map of one entry, the common case, is no larger than it.

use std::borrow::Borrow;
use std::hash::Hash;

use super::growing_map::GrowingMap;

#[derive(Default)]
pub enum TinyMap<K, V> {
    #[default]
    Empty,
    One(K, V),
    Many(Box<GrowingMap<K, V>>),
}

impl<K: Hash + Eq, V> TinyMap<K, V> {
    pub fn is_empty(&self) -> bool {
        match self {
            TinyMap::Empty => true,
            TinyMap::One(..) => false,
            TinyMap::Many(map) => map.is_empty(),
        }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        match self {
            TinyMap::Empty => None,
            TinyMap::One(k, v) => (k.borrow() == key).then_some(v),
            TinyMap::Many(map) => map.get(key),
        }
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        match self {
            TinyMap::Empty => None,
            TinyMap::One(k, v) => ((*k).borrow() == key).then_some(v),
            TinyMap::Many(map) => map.get_mut(key),
        }
    }

    /// Inserts or replaces; the old value, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            TinyMap::Empty => {
                *self = TinyMap::One(key, value);
                None
            }
            TinyMap::One(k, v) if *k == key => Some(std::mem::replace(v, value)),
            TinyMap::One(..) => {
                self.grow();
                self.insert(key, value)
            }
            TinyMap::Many(map) => map.insert(key, value),
        }
    }

    /// The value for `key`, inserted from `make` if missing.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if let TinyMap::One(k, _) = self {
            if *k != key {
                self.grow();
            }
        }
        match self {
            TinyMap::Empty => {
                *self = TinyMap::One(key, make());
                match self {
                    TinyMap::One(_, v) => v,
                    _ => unreachable!("just set"),
                }
            }
            TinyMap::One(_, v) => v,
            TinyMap::Many(map) => map.get_or_insert_with(key, make),
        }
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        match self {
            TinyMap::One(k, _) if (*k).borrow() == key => match std::mem::take(self) {
                TinyMap::One(_, v) => Some(v),
                _ => unreachable!("matched One"),
            },
            TinyMap::Empty | TinyMap::One(..) => None,
            TinyMap::Many(map) => map.remove(key),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let (one, many) = match self {
            TinyMap::Empty => (None, None),
            TinyMap::One(k, v) => (Some((k, v)), None),
            TinyMap::Many(map) => (None, Some(map.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// The one entry becomes a map's first.
    fn grow(&mut self) {
        if let TinyMap::One(k, v) = std::mem::take(self) {
            let mut map = Box::<GrowingMap<K, V>>::default();
            map.insert(k, v);
            *self = TinyMap::Many(map);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn agrees_with_a_plain_map(ops in prop::collection::vec((0u8..3, 0u8..6, any::<u8>()), 0..60)) {
            let mut map: TinyMap<u8, u8> = TinyMap::default();
            let mut plain: BTreeMap<u8, u8> = BTreeMap::new();
            for (op, key, value) in ops {
                match op {
                    0 => prop_assert_eq!(map.insert(key, value), plain.insert(key, value)),
                    1 => prop_assert_eq!(map.remove(&key), plain.remove(&key)),
                    _ => {
                        let bump = |v: &mut u8| *v = v.wrapping_add(1);
                        bump(map.get_or_insert_with(key, || value));
                        bump(plain.entry(key).or_insert(value));
                    }
                }
                prop_assert_eq!(map.is_empty(), plain.is_empty());
                prop_assert_eq!(map.get(&key), plain.get(&key));
            }
            let mut entries: Vec<(u8, u8)> = map.iter().map(|(k, v)| (*k, *v)).collect();
            entries.sort();
            prop_assert_eq!(entries, plain.into_iter().collect::<Vec<_>>());
        }
    }
}
