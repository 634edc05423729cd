//! MQTT topics and filters as NATS subjects, so that NATS's interest graph does the routing between
//! nodes: a message goes only to the nodes with a filter that matches it.
//!
//! A topic level becomes one subject token. NATS gives meaning to `.`, whitespace, and to `*` and `>`
//! as whole tokens, and has no empty token; MQTT allows all of these in a level. So a level keeps its
//! ASCII letters, digits, `-` and `_`, and every other byte becomes `~` and two hex digits; an empty
//! level is `~` alone. Distinct levels make distinct tokens, and a token says which level it was.
//! `+` becomes `*`; `#` becomes `>`, and since `a/#` also matches `a` while `a.>` does not match `a`,
//! such a filter takes two subjects.
//!
//! NATS bounds a protocol line (4 KiB by default), and a topic may have 64 KiB. A topic whose subject
//! is longer than [`LONG`] travels on [`LONG_SUBJECT`], which every node hears and each filters by
//! its own trie. A filter subject is never shorter than the subjects it matches (each `*` and `>`
//! stands for at least one character), so a filter whose subject passes [`LONG`] can match only long
//! topics, and needs no subscription of its own.

/// Where messages travel, by topic.
pub const MESSAGE_PREFIX: &str = "midge.m";
/// Topics too long for a subject of their own.
pub const LONG_SUBJECT: &str = "midge.long";
/// The longest subject a topic gets; well under NATS's 4 KiB protocol line.
pub const LONG: usize = 3000;

/// The NATS queue group of the shared subscription `route` (`$share/{group}/{filter}`): the same on
/// every node, bounded in length whatever the route's.
pub fn queue_group(route: &str) -> String {
    format!("midge-{}", &digest(route)[..32])
}

/// SHA-256 of `text`, in hex: a name for it that every node computes alike, whatever its build.
pub fn digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The subject a message on `topic` is published to.
pub fn for_topic(topic: &str) -> String {
    let mut subject = String::with_capacity(MESSAGE_PREFIX.len() + 1 + topic.len());
    subject.push_str(MESSAGE_PREFIX);
    for level in topic.split('/') {
        subject.push('.');
        push_level(&mut subject, level);
    }
    if subject.len() > LONG {
        return LONG_SUBJECT.to_string();
    }
    subject
}

/// The subjects that carry every message `filter` matches (but for long topics, see above): one, or
/// two for a filter ending in `/#`; none if every topic it matches is long.
pub fn for_filter(filter: &str) -> Vec<String> {
    let mut subject = String::from(MESSAGE_PREFIX);
    let mut parent = None;
    for level in filter.split('/') {
        match level {
            "+" => subject.push_str(".*"),
            "#" => {
                // `a/#` matches `a` itself; `#` alone has no parent.
                if subject.len() > MESSAGE_PREFIX.len() {
                    parent = Some(subject.clone());
                }
                subject.push_str(".>");
            }
            _ => {
                subject.push('.');
                push_level(&mut subject, level);
            }
        }
    }
    [Some(subject), parent].into_iter().flatten().filter(|s| s.len() <= LONG).collect()
}

/// `text` as one subject token, by the rule for topic levels.
pub fn token(text: &str) -> String {
    let mut token = String::with_capacity(text.len());
    push_level(&mut token, text);
    token
}

fn push_level(subject: &mut String, level: &str) {
    if level.is_empty() {
        subject.push('~');
        return;
    }
    for byte in level.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            subject.push(byte as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            subject.push('~');
            subject.push(HEX[usize::from(byte >> 4)] as char);
            subject.push(HEX[usize::from(byte & 15)] as char);
        }
    }
}

/// The topic a message subject was made from; `None` for anything `for_topic` does not make.
pub fn topic_of(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(MESSAGE_PREFIX)?.strip_prefix('.')?;
    let mut topic = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            topic.push(b'/');
        }
        if token == "~" {
            continue;
        }
        let mut bytes = token.bytes();
        while let Some(byte) = bytes.next() {
            if byte == b'~' {
                let hex = [bytes.next()?, bytes.next()?];
                topic.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                topic.push(byte);
            } else {
                return None;
            }
        }
    }
    String::from_utf8(topic).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::topic::matches;

    /// NATS's own matching: `*` is one token, `>` one or more at the end.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut p = pattern.split('.');
        let mut s = subject.split('.');
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn valid_token(token: &str) -> bool {
        !token.is_empty() && !token.contains(|c: char| c.is_whitespace() || c == '.') && token != "*" && token != ">"
    }

    #[test]
    fn awkward_levels_survive() {
        for topic in ["a", "a/b", "/", "//", "a.b/ c", "*/>", "€/日本", "~/~7E", "a//b/", "$SYS/x", "+"] {
            let subject = for_topic(topic);
            assert!(subject.split('.').skip(2).all(valid_token), "{topic:?} gave {subject:?}");
            assert_eq!(topic_of(&subject).as_deref(), Some(topic), "{subject}");
        }
        assert_eq!(for_topic("a.b/ c"), "midge.m.a~2Eb.~20c");
        assert_eq!(for_filter("a/+/#"), ["midge.m.a.*.>", "midge.m.a.*"]);
        assert_eq!(for_filter("#"), ["midge.m.>"]);
    }

    #[test]
    fn long_topics_share_one_subject() {
        let long = "x/".repeat(1600);
        assert_eq!(for_topic(&long), LONG_SUBJECT);
        assert!(for_filter(&format!("{long}#")).is_empty(), "only long topics can match it");
        assert_eq!(for_filter("#"), ["midge.m.>"]);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[ab.~ *>€]{1,3}", Just("a".to_string())]
    }

    proptest! {
        /// A filter's subjects match a topic's subject exactly when the filter matches the topic (a
        /// long topic goes everywhere and is matched by each node's trie instead).
        #[test]
        fn subjects_match_as_filters_do(
            topic in prop::collection::vec(level(), 1..5),
            filter in prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..4),
            hash in any::<bool>(),
        ) {
            let topic = topic.join("/");
            let mut filter = filter;
            if hash || filter.is_empty() {
                filter.push("#".into());
            }
            let filter = filter.join("/");
            let subject = for_topic(&topic);
            prop_assert_eq!(topic_of(&subject), Some(topic.clone()));
            let by_nats = for_filter(&filter).iter().any(|pattern| nats_matches(pattern, &subject));
            // (No `$` topics here: NATS knows nothing of MQTT's rule for them, the receiving trie does.)
            prop_assert_eq!(by_nats, matches(&filter, &topic), "{} against {}", filter, topic);
        }
    }
}
