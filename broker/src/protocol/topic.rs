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
