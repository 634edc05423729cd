//! The subscription trie: topic filter levels as edges, subscribers at the node where a filter ends.
//! Matching a topic walks one path per wildcard branch, so its cost follows the topic's depth and the
//! number of matching filters, not the number of subscriptions.

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::QoS;

/// Who holds a subscription. Client ids are shared, not copied, across every filter of a client.
pub type ClientId = Arc<str>;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subscribers: HashMap<ClientId, QoS>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }
}

#[derive(Default)]
pub struct SubscriptionTree {
    root: Node,
    /// Number of (client, filter) pairs.
    subscriptions: usize,
    /// Number of distinct filters with at least one subscriber (EMQ's "routes" on one node).
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
    pub fn subscribe(&mut self, filter: &str, client: &ClientId, qos: QoS) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.subscribers.is_empty() {
            self.filters += 1;
        }
        let is_new = node.subscribers.insert(client.clone(), qos).is_none();
        if is_new {
            self.subscriptions += 1;
        }
        is_new
    }

    /// Removes `client`'s subscription to `filter`, pruning empty branches. Returns true if it existed.
    pub fn unsubscribe(&mut self, filter: &str, client: &str) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let (removed, emptied) = remove(&mut self.root, &levels, client);
        if removed {
            self.subscriptions -= 1;
        }
        if emptied {
            self.filters -= 1;
        }
        removed
    }

    /// Appends every (client, granted QoS) whose filter matches `topic`. A client with several
    /// matching filters appears once per filter; callers fold those to the highest QoS.
    pub fn matches(&self, topic: &str, out: &mut Vec<(ClientId, QoS)>) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&self.root, &levels, 0, dollar, out);
    }
}

fn walk(node: &Node, levels: &[&str], depth: usize, dollar: bool, out: &mut Vec<(ClientId, QoS)>) {
    // Wildcards at the root never match `$` topics.
    let wildcards = !(dollar && depth == 0);
    if wildcards {
        if let Some(hash) = node.children.get("#") {
            out.extend(hash.subscribers.iter().map(|(c, q)| (c.clone(), *q)));
        }
    }
    let Some((level, rest)) = levels.split_first() else {
        out.extend(node.subscribers.iter().map(|(c, q)| (c.clone(), *q)));
        return;
    };
    if wildcards {
        if let Some(plus) = node.children.get("+") {
            walk(plus, rest, depth + 1, dollar, out);
        }
    }
    if *level != "+" && *level != "#" {
        if let Some(child) = node.children.get(*level) {
            walk(child, rest, depth + 1, dollar, out);
        }
    }
}

/// `(removed, filter now has no subscribers)`.
fn remove(node: &mut Node, levels: &[&str], client: &str) -> (bool, bool) {
    match levels.split_first() {
        None => {
            let removed = node.subscribers.remove(client).is_some();
            (removed, removed && node.subscribers.is_empty())
        }
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return (false, false);
            };
            let result = remove(child, rest, client);
            if child.is_empty() {
                node.children.remove(*level);
            }
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn id(s: &str) -> ClientId {
        Arc::from(s)
    }

    fn matched(tree: &SubscriptionTree, topic: &str) -> BTreeMap<String, Vec<QoS>> {
        let mut out = Vec::new();
        tree.matches(topic, &mut out);
        let mut map: BTreeMap<String, Vec<QoS>> = BTreeMap::new();
        for (c, q) in out {
            map.entry(c.to_string()).or_default().push(q);
        }
        for v in map.values_mut() {
            v.sort();
        }
        map
    }

    #[test]
    fn counts_and_pruning() {
        let mut tree = SubscriptionTree::new();
        assert!(tree.subscribe("a/+", &id("c1"), QoS::AtMostOnce));
        assert!(!tree.subscribe("a/+", &id("c1"), QoS::AtLeastOnce));
        assert!(tree.subscribe("a/+", &id("c2"), QoS::AtMostOnce));
        assert!(tree.subscribe("#", &id("c1"), QoS::AtMostOnce));
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
    fn dollar_topics() {
        let mut tree = SubscriptionTree::new();
        tree.subscribe("#", &id("all"), QoS::AtMostOnce);
        tree.subscribe("+/brokers", &id("plus"), QoS::AtMostOnce);
        tree.subscribe("$SYS/#", &id("sys"), QoS::AtMostOnce);
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
                tree.subscribe(f, &id(&c.to_string()), q);
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
