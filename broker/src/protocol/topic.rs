//! Topic names and filters: validation and the reference matcher.
//!
//! `matches` is the plain definition of MQTT matching; the subscription trie must agree with it (a
//! property test checks that) and retained-message and ACL checks use it directly.

/// A topic a message may be published to: non-empty, no wildcards, no NUL (3.1.1 §4.7).
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= u16::MAX as usize && !topic.contains(['+', '#', '\0'])
}

/// A subscription filter: `+` fills a whole level, `#` is a whole level and the last one.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > u16::MAX as usize || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "#" if is_last => {}
            "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// A subscription's filter as a client wrote it: a plain filter, or a shared subscription's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription<'a> {
    /// A filter. EMQ's `$local/` prefix (keep the subscription on this node) is taken off: with one
    /// node, every subscription is local.
    Plain(&'a str),
    /// `$share/{group}/{filter}` (MQTT 5 §4.8.2, and EMQ for 3.1.1 alike), or EMQ's `$queue/{filter}`,
    /// which is the one group `$queue`: each message goes to one member of the group.
    Shared { group: &'a str, filter: &'a str },
}

impl<'a> Subscription<'a> {
    /// The filter messages are matched against.
    pub fn filter(&self) -> &'a str {
        match self {
            Subscription::Plain(filter) | Subscription::Shared { filter, .. } => filter,
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Subscription::Shared { .. })
    }
}

/// Reads what a client subscribes to; `None` if it is no valid filter (a share name must be a non-empty
/// level without wildcards, followed by a filter).
pub fn parse_subscription(written: &str) -> Option<Subscription<'_>> {
    if let Some(rest) = written.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/')?;
        let valid = !group.is_empty() && !group.contains(['+', '#']) && valid_topic_filter(filter);
        return valid.then_some(Subscription::Shared { group, filter });
    }
    if let Some(filter) = written.strip_prefix("$queue/") {
        return valid_topic_filter(filter).then_some(Subscription::Shared { group: "$queue", filter });
    }
    let filter = written.strip_prefix("$local/").unwrap_or(written);
    valid_topic_filter(filter).then_some(Subscription::Plain(filter))
}

/// Topics only the broker (`$SYS`) or the management principal (control topics) may publish to.
pub fn broker_owned(topic: &str) -> bool {
    midge_shared::control::is_control_topic(topic) || topic == "$SYS" || topic.starts_with("$SYS/")
}

/// Can `filter` match a broker-owned topic? Wildcards at the first level never match `$` topics, so
/// only a filter that names `$SYS` or the control prefix can.
pub fn reaches_broker_owned(filter: &str) -> bool {
    let first = filter.split('/').next().unwrap_or_default();
    first == "$SYS" || first == midge_shared::control::PREFIX.trim_end_matches('/')
}

/// Does `filter` match `topic`? Wildcards at the first level never match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "/", "a/b", "/World", "$SYS/x", " ", "a//b"] {
            assert!(valid_topic_name(ok), "{ok}");
        }
        for bad in ["", "a/+", "#", "a/#/b", "a\0b", "a+b"] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn shared_and_local_subscriptions() {
        use Subscription::*;
        let cases = [
            ("a/+", Some(Plain("a/+"))),
            ("$local/a/#", Some(Plain("a/#"))),
            ("$share/g/a/+", Some(Shared { group: "g", filter: "a/+" })),
            ("$share/g/#", Some(Shared { group: "g", filter: "#" })),
            ("$queue/a", Some(Shared { group: "$queue", filter: "a" })),
            ("$share/g", None),
            ("$share//a", None),
            ("$share/g+/a", None),
            ("$share/g/a/#/b", None),
            ("$queue/", None),
            ("$local/", None),
        ];
        for (written, expected) in cases {
            assert_eq!(parse_subscription(written), expected, "{written}");
        }
    }

    #[test]
    fn filters() {
        for ok in ["a", "#", "+", "a/#", "+/+", "/+", "a/+/b", "$SYS/#", "a//b", "/"] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a/b#", "a+/b", "++", "#/", "a\0"] {
            assert!(!valid_topic_filter(bad), "{bad:?}");
        }
    }

    #[test]
    fn broker_owned_topics_and_the_filters_that_reach_them() {
        for topic in ["$SYS", "$SYS/brokers", "$midge/ctl/n/req"] {
            assert!(broker_owned(topic), "{topic}");
        }
        for topic in ["$SYSTEM", "SYS/x", "$share/g/t", "a/$SYS"] {
            assert!(!broker_owned(topic), "{topic}");
        }
        for filter in ["$SYS/#", "$SYS", "$SYS/+/x", "$midge/#", "$midge/ctl/+/req"] {
            assert!(reaches_broker_owned(filter), "{filter}");
        }
        for filter in ["#", "+/brokers/#", "$SYSTEM/#", "a/$SYS/#", "$midge-x/#"] {
            assert!(!reaches_broker_owned(filter), "{filter}");
        }
    }

    #[test]
    fn matching() {
        let yes = [
            ("a/b", "a/b"),
            ("a/+", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("#", "a/b"),
            ("+/+", "/b"),
            ("/+", "/World"),
            ("+", ""),
            ("$SYS/#", "$SYS/brokers"),
            ("$SYS/+/x", "$SYS/a/x"),
            ("a//b", "a//b"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} ~ {t}");
        }
        let no = [
            ("a/b", "a"),
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("+", "$x"),
            ("a", "a/b"),
            ("/+", "World"),
        ];
        for (f, t) in no {
            assert!(!matches(f, t), "{f} !~ {t}");
        }
    }
}
