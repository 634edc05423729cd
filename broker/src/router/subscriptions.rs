//! The subscription trie: topic filter levels as edges, subscribers at the node where a filter ends.
//! Matching a topic walks one path per wildcard branch, so its cost follows the topic's depth and the
//! number of matching filters, not the number of subscriptions.
//!
//! Every routed message walks this trie under the router's lock, so the walk is kept lean: the `+` and
//! `#` children are fields rather than map entries (one lookup per level instead of three), the topic
//! is split as it is walked rather than into a vector first, and the maps hash with foldhash, which is
//! several times faster than std's SipHash on short keys and still seeded at random per map.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::tiny_map::TinyMap;
use crate::protocol::SubscriptionOptions;
use crate::session::{ClientId, SharedKey};

/// The hash maps on the routing path.
pub type FastMap<K, V> = HashMap<K, V, RandomState>;

#[derive(Default)]
struct Node {
    /// Children by a literal level: most nodes have one, kept inline; a level under which a million
    /// device ids sit grows without a pause (see `tiny_map.rs`, `growing_map.rs`).
    children: TinyMap<Box<str>, Box<Node>>,
    /// The `+` child: any one level.
    plus: Option<Box<Node>>,
    /// The `#` child: this level's parent and everything below it.
    hash: Option<Box<Node>>,
    subscribers: TinyMap<ClientId, SubscriptionOptions>,
    /// Shared subscriptions' groups on the filter that ends here, by name; boxed, as most filters have
    /// none.
    shared: Option<Box<FastMap<Box<str>, SharedGroup>>>,
}

/// The members of one shared subscription (a group on a filter): each message goes to one of them.
#[derive(Debug)]
pub struct SharedGroup {
    pub key: Arc<SharedKey>,
    /// In the order they joined.
    pub members: Vec<(ClientId, SubscriptionOptions)>,
    /// Where the next round-robin pick starts, or the sticky member: matching takes `&self`, so the
    /// choice is kept in a cell (the router's lock makes it the only writer).
    pub next: Cell<usize>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.shared.is_none()
    }

    /// The child for `level`, made if it is missing.
    fn child_or_insert(&mut self, level: &str) -> &mut Node {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.children.get_or_insert_with(level.into(), Box::default),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level).map(|child| &mut **child),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }
}

#[derive(Default)]
pub struct SubscriptionTree {
    root: Node,
    /// Number of (client, filter) pairs, shared subscriptions' memberships included.
    subscriptions: usize,
    /// Number of distinct filters with at least one subscriber (EMQ's "routes" on one node), each
    /// shared subscription's group counted apart.
    filters: usize,
}

impl SubscriptionTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Adds or replaces `client`'s subscription to `filter`. Returns true when it is new.
    pub fn subscribe(&mut self, filter: &str, client: &ClientId, options: SubscriptionOptions) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        if node.subscribers.is_empty() {
            self.filters += 1;
        }
        let is_new = node.subscribers.insert(client.clone(), options).is_none();
        if is_new {
            self.subscriptions += 1;
        }
        is_new
    }

    /// Adds or replaces `client`'s membership of the shared subscription `group` on `filter`. Returns
    /// true when it is new.
    pub fn subscribe_shared(
        &mut self,
        group: &str,
        filter: &str,
        client: &ClientId,
        options: SubscriptionOptions,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        let groups = node.shared.get_or_insert_with(Box::default);
        let shared = groups.entry(group.into()).or_insert_with(|| {
            self.filters += 1;
            let key = Arc::new(SharedKey { group: group.into(), filter: filter.into() });
            SharedGroup { key, members: Vec::new(), next: Cell::new(0) }
        });
        if let Some(member) = shared.members.iter_mut().find(|(c, _)| c == client) {
            member.1 = options;
            return false;
        }
        shared.members.push((client.clone(), options));
        self.subscriptions += 1;
        true
    }

    /// Removes `client`'s subscription to `filter`, pruning empty branches. Returns true if it existed.
    pub fn unsubscribe(&mut self, filter: &str, client: &str) -> bool {
        self.remove(filter, client, None)
    }

    /// Removes `client` from the shared subscription `group` on `filter`. Returns true if it was in.
    pub fn unsubscribe_shared(&mut self, group: &str, filter: &str, client: &str) -> bool {
        self.remove(filter, client, Some(group))
    }

    fn remove(&mut self, filter: &str, client: &str, group: Option<&str>) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let (removed, emptied) = remove(&mut self.root, &levels, client, group);
        if removed {
            self.subscriptions -= 1;
        }
        if emptied {
            self.filters -= 1;
        }
        removed
    }

    /// Appends every (client, its options) whose filter matches `topic`, and every shared
    /// subscription's group that does. A client with several matching filters appears once per
    /// filter; callers fold those to the highest granted QoS.
    pub fn matches<'a>(
        &'a self,
        topic: &str,
        out: &mut Vec<(ClientId, SubscriptionOptions)>,
        groups: &mut Vec<&'a SharedGroup>,
    ) {
        // Wildcards at the root never match `$` topics.
        walk(&self.root, Some(topic), !topic.starts_with('$'), out, groups);
    }

    /// The shared subscription `group` on `filter`, if it has members.
    pub fn shared_group(&self, group: &str, filter: &str) -> Option<&SharedGroup> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = match level {
                "+" => node.plus.as_deref()?,
                "#" => node.hash.as_deref()?,
                _ => node.children.get(level)?,
            };
        }
        node.shared.as_ref()?.get(group)
    }
}

/// The first level of a topic and what follows its `/`, if anything does.
fn split_level(topic: &str) -> (&str, Option<&str>) {
    match topic.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (topic, None),
    }
}

fn collect<'a>(node: &'a Node, out: &mut Vec<(ClientId, SubscriptionOptions)>, groups: &mut Vec<&'a SharedGroup>) {
    out.extend(node.subscribers.iter().map(|(c, q)| (c.clone(), *q)));
    if let Some(shared) = &node.shared {
        groups.extend(shared.values());
    }
}

/// Matches the levels in `rest` (none left: `None`) below `node`, which matched the levels before;
/// `wildcards` is false for the first level of a `$` topic.
fn walk<'a>(
    node: &'a Node,
    rest: Option<&str>,
    wildcards: bool,
    out: &mut Vec<(ClientId, SubscriptionOptions)>,
    groups: &mut Vec<&'a SharedGroup>,
) {
    if let (Some(hash), true) = (&node.hash, wildcards) {
        collect(hash, out, groups);
    }
    let Some(rest) = rest else {
        collect(node, out, groups);
        return;
    };
    let (level, rest) = split_level(rest);
    if let (Some(plus), true) = (&node.plus, wildcards) {
        walk(plus, rest, true, out, groups);
    }
    if let Some(child) = node.children.get(level) {
        walk(child, rest, true, out, groups);
    }
}

/// `(removed, filter or group now has no subscribers)`.
fn remove(node: &mut Node, levels: &[&str], client: &str, group: Option<&str>) -> (bool, bool) {
    match levels.split_first() {
        None => match group {
            None => {
                let removed = node.subscribers.remove(client).is_some();
                (removed, removed && node.subscribers.is_empty())
            }
            Some(group) => remove_member(node, group, client),
        },
        Some((level, rest)) => {
            let Some(child) = node.child_mut(level) else {
                return (false, false);
            };
            let result = remove(child, rest, client, group);
            if child.is_empty() {
                node.remove_child(level);
            }
            result
        }
    }
}

fn remove_member(node: &mut Node, group: &str, client: &str) -> (bool, bool) {
    let Some(groups) = node.shared.as_mut() else { return (false, false) };
    let Some(shared) = groups.get_mut(group) else { return (false, false) };
    let Some(i) = shared.members.iter().position(|(c, _)| &**c == client) else { return (false, false) };
    shared.members.remove(i);
    let emptied = shared.members.is_empty();
    if emptied {
        groups.remove(group);
        if groups.is_empty() {
            node.shared = None;
        }
    }
    (true, emptied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{topic, QoS};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn id(s: &str) -> ClientId {
        std::sync::Arc::from(s)
    }

    fn matched(tree: &SubscriptionTree, topic: &str) -> BTreeMap<String, Vec<QoS>> {
        let mut out = Vec::new();
        tree.matches(topic, &mut out, &mut Vec::new());
        let mut map: BTreeMap<String, Vec<QoS>> = BTreeMap::new();
        for (c, options) in out {
            map.entry(c.to_string()).or_default().push(options.qos);
        }
        for v in map.values_mut() {
            v.sort();
        }
        map
    }

    #[test]
    fn counts_and_pruning() {
        let mut tree = SubscriptionTree::new();
        assert!(tree.subscribe("a/+", &id("c1"), SubscriptionOptions::qos(QoS::AtMostOnce)));
        assert!(!tree.subscribe("a/+", &id("c1"), SubscriptionOptions::qos(QoS::AtLeastOnce)));
        assert!(tree.subscribe("a/+", &id("c2"), SubscriptionOptions::qos(QoS::AtMostOnce)));
        assert!(tree.subscribe("#", &id("c1"), SubscriptionOptions::qos(QoS::AtMostOnce)));
        assert_eq!((tree.subscription_count(), tree.filter_count()), (3, 2));
        assert!(tree.unsubscribe("a/+", "c1"));
        assert!(!tree.unsubscribe("a/+", "c1"));
        assert!(!tree.unsubscribe("x/y", "c1"));
        assert_eq!((tree.subscription_count(), tree.filter_count()), (2, 2));
        assert!(tree.unsubscribe("a/+", "c2"));
        assert!(tree.unsubscribe("#", "c1"));
        assert_eq!((tree.subscription_count(), tree.filter_count()), (0, 0));
        assert!(tree.root.is_empty());
    }

    #[test]
    fn shared_groups_are_matched_counted_and_pruned() {
        let mut tree = SubscriptionTree::new();
        let options = SubscriptionOptions::qos(QoS::AtMostOnce);
        assert!(tree.subscribe_shared("g", "a/+", &id("c1"), options));
        assert!(!tree.subscribe_shared("g", "a/+", &id("c1"), options));
        assert!(tree.subscribe_shared("g", "a/+", &id("c2"), options));
        assert!(tree.subscribe_shared("h", "a/+", &id("c1"), options));
        assert!(tree.subscribe("a/+", &id("c1"), options));
        // Two groups and the plain filter: three routes; three memberships and one subscription.
        assert_eq!((tree.subscription_count(), tree.filter_count()), (4, 3));
        let (mut out, mut groups) = (Vec::new(), Vec::new());
        tree.matches("a/x", &mut out, &mut groups);
        assert_eq!(out.len(), 1);
        let mut names: Vec<(&str, usize)> = groups.iter().map(|g| (&*g.key.group, g.members.len())).collect();
        names.sort();
        assert_eq!(names, vec![("g", 2), ("h", 1)]);
        assert_eq!(tree.shared_group("g", "a/+").map(|g| g.members.len()), Some(2));
        assert!(tree.shared_group("g", "a/#").is_none());
        assert!(tree.unsubscribe_shared("g", "a/+", "c1"));
        assert!(!tree.unsubscribe_shared("g", "a/+", "c1"));
        assert!(tree.unsubscribe_shared("g", "a/+", "c2"));
        assert!(tree.unsubscribe_shared("h", "a/+", "c1"));
        assert!(tree.unsubscribe("a/+", "c1"));
        assert_eq!((tree.subscription_count(), tree.filter_count()), (0, 0));
        assert!(tree.root.is_empty());
    }

    #[test]
    fn dollar_topics() {
        let mut tree = SubscriptionTree::new();
        tree.subscribe("#", &id("all"), SubscriptionOptions::qos(QoS::AtMostOnce));
        tree.subscribe("+/brokers", &id("plus"), SubscriptionOptions::qos(QoS::AtMostOnce));
        tree.subscribe("$SYS/#", &id("sys"), SubscriptionOptions::qos(QoS::AtMostOnce));
        let m = matched(&tree, "$SYS/brokers");
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["sys"]);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("".to_string()), Just("$s".to_string())]
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let lvl = prop_oneof![level(), Just("+".to_string())];
        (prop::collection::vec(lvl, 1..5), any::<bool>()).prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".into());
            }
            l.join("/")
        })
    }

    proptest! {
        #[test]
        fn trie_agrees_with_the_naive_matcher(
            subs in prop::collection::vec((filter(), 0u8..4, 0u8..3), 0..30),
            unsubs in prop::collection::vec((filter(), 0u8..4), 0..10),
            topics in prop::collection::vec(topic_name(), 1..10),
        ) {
            let mut tree = SubscriptionTree::new();
            let mut naive: BTreeMap<(String, String), QoS> = BTreeMap::new();
            for (f, c, q) in &subs {
                let q = QoS::from_u8(*q).unwrap();
                tree.subscribe(f, &id(&c.to_string()), SubscriptionOptions::qos(q));
                naive.insert((f.clone(), c.to_string()), q);
            }
            for (f, c) in &unsubs {
                let existed = naive.remove(&(f.clone(), c.to_string())).is_some();
                prop_assert_eq!(tree.unsubscribe(f, &c.to_string()), existed);
            }
            prop_assert_eq!(tree.subscription_count(), naive.len());
            for t in &topics {
                let mut expected: BTreeMap<String, Vec<QoS>> = BTreeMap::new();
                for ((f, c), q) in &naive {
                    if topic::matches(f, t) {
                        expected.entry(c.clone()).or_default().push(*q);
                    }
                }
                for v in expected.values_mut() { v.sort(); }
                prop_assert_eq!(matched(&tree, t), expected, "topic {}", t);
            }
        }
    }
}
