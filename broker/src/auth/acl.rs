//! Access control in EMQ's `acl.conf` form: Erlang terms, one rule per line, first match wins.
//!
//! ```text
//! {allow, {user, "dashboard"}, subscribe, ["$SYS/#"]}.
//! {allow, {ipaddr, "127.0.0.1"}, pubsub, ["$SYS/#", "#"]}.
//! {deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
//! {allow, all}.
//! ```
//! Who: `all`, `{user, U}`, `{client, C}`, `{ipaddr, "a.b.c.d"}` or a CIDR. Access: `publish`,
//! `subscribe`, `pubsub`. Topics: filters (with `%u` and `%c` replaced by the client's username and
//! client id) matched against the topic, or `{eq, T}` for the literal string T.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::protocol::topic;

/// EMQ's default rules, used when no ACL file is configured: `$SYS` is for localhost and the
/// dashboard user, and nobody but localhost may subscribe to `#` itself.
pub const DEFAULT_RULES: &str = r##"
{allow, {user, "dashboard"}, subscribe, ["$SYS/#"]}.
{allow, {ipaddr, "127.0.0.1"}, pubsub, ["$SYS/#", "#"]}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
{allow, all}.
"##;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Nomatch {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// The facts about a client that rules look at.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Shared with the rest of the connection, not copied.
    pub client_id: std::sync::Arc<str>,
    pub username: Option<String>,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq)]
enum Who {
    All,
    User(String),
    Client(String),
    Ip(IpNet),
}

#[derive(Debug, Clone, PartialEq)]
enum TopicRule {
    Filter(String),
    Eq(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    decision: Decision,
    who: Who,
    /// `None` means both publish and subscribe.
    access: Option<Access>,
    /// `None` means every topic (the two-element `{allow, all}` form).
    topics: Option<Vec<TopicRule>>,
}

#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<Rule>,
    nomatch: Nomatch,
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("ACL syntax error at byte {at}: {what}")]
    Syntax { at: usize, what: String },
    #[error("invalid ACL rule {rule}: {what}")]
    Rule { rule: usize, what: String },
}

impl Acl {
    pub fn load(path: Option<&Path>, nomatch: Nomatch) -> Result<Acl, AclError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| AclError::Read(p.display().to_string(), e))?,
            None => DEFAULT_RULES.to_string(),
        };
        Acl::parse(&text, nomatch)
    }

    pub fn parse(text: &str, nomatch: Nomatch) -> Result<Acl, AclError> {
        let terms = parse_terms(text)?;
        let rules = terms
            .into_iter()
            .enumerate()
            .map(|(i, t)| rule(t).map_err(|what| AclError::Rule { rule: i + 1, what }))
            .collect::<Result<_, _>>()?;
        Ok(Acl { rules, nomatch })
    }

    pub fn check(&self, client: &ClientInfo, access: Access, topic: &str) -> Decision {
        for rule in &self.rules {
            if rule.applies(client, access, topic) {
                return rule.decision;
            }
        }
        match self.nomatch {
            Nomatch::Allow => Decision::Allow,
            Nomatch::Deny => Decision::Deny,
        }
    }
}

impl Rule {
    fn applies(&self, client: &ClientInfo, access: Access, topic: &str) -> bool {
        let who = match &self.who {
            Who::All => true,
            Who::User(u) => client.username.as_deref() == Some(u.as_str()),
            Who::Client(c) => *client.client_id == **c,
            Who::Ip(net) => net.contains(&client.ip),
        };
        if !who || self.access.is_some_and(|a| a != access) {
            return false;
        }
        let Some(topics) = &self.topics else {
            return true;
        };
        topics.iter().any(|t| match t {
            TopicRule::Eq(exact) => exact == topic,
            TopicRule::Filter(filter) => match substitute(filter, client) {
                // A subscription filter is matched as if it were a name, so `$SYS/#` covers `$SYS/#`.
                Some(filter) => topic::matches(&filter, topic),
                None => false,
            },
        })
    }
}

/// Replaces `%u` and `%c`; a rule naming `%u` never matches a client without a username.
fn substitute(filter: &str, client: &ClientInfo) -> Option<String> {
    if !filter.contains('%') {
        return Some(filter.to_string());
    }
    let mut out = filter.replace("%c", &client.client_id);
    if out.contains("%u") {
        out = out.replace("%u", client.username.as_deref()?);
    }
    Some(out)
}

/// A per-client cache of publish decisions, bounded in size and age.
#[derive(Debug)]
pub struct AclCache {
    entries: thin_vec::ThinVec<(String, Decision, std::time::Instant)>,
    /// The limits, compact: every connection keeps a cache for as long as it is open.
    max_size: u32,
    ttl_secs: u32,
}

impl AclCache {
    pub fn new(max_size: usize, ttl: std::time::Duration) -> Self {
        let max_size = max_size.try_into().unwrap_or(u32::MAX);
        AclCache { entries: thin_vec::ThinVec::new(), max_size, ttl_secs: ttl.as_secs().try_into().unwrap_or(u32::MAX) }
    }

    /// The cached decision for `topic`, unless it has outlived the TTL (then it is dropped). Only the
    /// entry looked up is checked: this runs for every publish.
    pub fn get(&mut self, topic: &str) -> Option<Decision> {
        let i = self.entries.iter().position(|(t, _, _)| t == topic)?;
        if self.entries[i].2.elapsed() < std::time::Duration::from_secs(self.ttl_secs.into()) {
            return Some(self.entries[i].1);
        }
        self.entries.remove(i);
        None
    }

    pub fn put(&mut self, topic: &str, decision: Decision) {
        if self.max_size == 0 {
            return;
        }
        if self.entries.len() >= self.max_size as usize {
            // Entries are pushed in time order, so the first is the oldest.
            self.entries.remove(0);
        }
        self.entries.push((topic.to_string(), decision, std::time::Instant::now()));
    }

    /// Forgets the decision for one topic (the management API's clean_acl_cache).
    pub fn remove(&mut self, topic: &str) {
        self.entries.retain(|(t, _, _)| t != topic);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

// ---- Erlang terms: just enough of the syntax for acl.conf ----

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Atom(String),
    Str(String),
    Tuple(Vec<Term>),
    List(Vec<Term>),
}

fn rule(term: Term) -> Result<Rule, String> {
    let Term::Tuple(items) = term else {
        return Err("a rule is a tuple".into());
    };
    let decision = match items.first() {
        Some(Term::Atom(a)) if a == "allow" => Decision::Allow,
        Some(Term::Atom(a)) if a == "deny" => Decision::Deny,
        _ => return Err("a rule starts with allow or deny".into()),
    };
    let who = match items.get(1) {
        Some(Term::Atom(a)) if a == "all" => Who::All,
        Some(Term::Tuple(t)) => match &t[..] {
            [Term::Atom(k), Term::Str(v)] if k == "user" => Who::User(v.clone()),
            [Term::Atom(k), Term::Str(v)] if k == "client" => Who::Client(v.clone()),
            [Term::Atom(k), Term::Str(v)] if k == "ipaddr" => Who::Ip(ip_net(v)?),
            _ => return Err(format!("unknown who {t:?}")),
        },
        other => return Err(format!("unknown who {other:?}")),
    };
    if items.len() == 2 {
        return Ok(Rule { decision, who, access: None, topics: None });
    }
    let access = match items.get(2) {
        Some(Term::Atom(a)) if a == "publish" => Some(Access::Publish),
        Some(Term::Atom(a)) if a == "subscribe" => Some(Access::Subscribe),
        Some(Term::Atom(a)) if a == "pubsub" => None,
        other => return Err(format!("access must be publish, subscribe or pubsub, not {other:?}")),
    };
    let topics = match items.get(3) {
        Some(Term::List(list)) if items.len() == 4 => list
            .iter()
            .map(|t| match t {
                Term::Str(s) => Ok(TopicRule::Filter(s.clone())),
                Term::Tuple(eq) => match &eq[..] {
                    [Term::Atom(k), Term::Str(s)] if k == "eq" => Ok(TopicRule::Eq(s.clone())),
                    _ => Err(format!("unknown topic form {eq:?}")),
                },
                other => Err(format!("unknown topic form {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("a rule is {Allow, Who, Access, [Topics]} or {Allow, Who}".into()),
    };
    Ok(Rule { decision, who, access, topics: Some(topics) })
}

fn ip_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|e| format!("bad address {text:?}: {e}"))
}

/// Parses a sequence of `Term.` forms.
fn parse_terms(text: &str) -> Result<Vec<Term>, AclError> {
    let mut p = TermParser { s: text.as_bytes(), at: 0 };
    let mut terms = Vec::new();
    loop {
        p.skip_space();
        if p.at >= p.s.len() {
            return Ok(terms);
        }
        terms.push(p.term()?);
        p.skip_space();
        p.expect(b'.')?;
    }
}

struct TermParser<'a> {
    s: &'a [u8],
    at: usize,
}

impl TermParser<'_> {
    fn error(&self, what: impl Into<String>) -> AclError {
        AclError::Syntax { at: self.at, what: what.into() }
    }

    fn skip_space(&mut self) {
        while let Some(&c) = self.s.get(self.at) {
            if c == b'%' {
                while self.s.get(self.at).is_some_and(|&c| c != b'\n') {
                    self.at += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), AclError> {
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected '{}'", c as char)))
        }
    }

    fn term(&mut self) -> Result<Term, AclError> {
        self.skip_space();
        match self.s.get(self.at) {
            Some(b'{') => self.seq(b'}').map(Term::Tuple),
            Some(b'[') => self.seq(b']').map(Term::List),
            Some(b'"') => self.string().map(Term::Str),
            Some(b'\'') => self.quoted_atom().map(Term::Atom),
            Some(c) if c.is_ascii_lowercase() => {
                let start = self.at;
                while self.s.get(self.at).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'@') {
                    self.at += 1;
                }
                Ok(Term::Atom(String::from_utf8_lossy(&self.s[start..self.at]).into_owned()))
            }
            _ => Err(self.error("expected a term")),
        }
    }

    fn seq(&mut self, close: u8) -> Result<Vec<Term>, AclError> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.s.get(self.at) == Some(&close) {
            self.at += 1;
            return Ok(items);
        }
        loop {
            items.push(self.term()?);
            self.skip_space();
            match self.s.get(self.at) {
                Some(b',') => self.at += 1,
                Some(c) if *c == close => {
                    self.at += 1;
                    return Ok(items);
                }
                _ => return Err(self.error(format!("expected ',' or '{}'", close as char))),
            }
        }
    }

    fn string(&mut self) -> Result<String, AclError> {
        self.delimited(b'"')
    }

    fn quoted_atom(&mut self) -> Result<String, AclError> {
        self.delimited(b'\'')
    }

    fn delimited(&mut self, quote: u8) -> Result<String, AclError> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.at) {
                None => return Err(self.error("unterminated string")),
                Some(b'\\') => {
                    let Some(&c) = self.s.get(self.at + 1) else {
                        return Err(self.error("dangling escape"));
                    };
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.at += 2;
                }
                Some(&c) if c == quote => {
                    self.at += 1;
                    return String::from_utf8(out).map_err(|_| self.error("string is not UTF-8"));
                }
                Some(&c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, user: Option<&str>, ip: &str) -> ClientInfo {
        ClientInfo { client_id: id.into(), username: user.map(Into::into), ip: ip.parse().unwrap() }
    }

    #[test]
    fn emq_default_rules() {
        let acl = Acl::parse(DEFAULT_RULES, Nomatch::Allow).unwrap();
        let remote = client("c", None, "10.0.0.5");
        let local = client("c", None, "127.0.0.1");
        let dash = client("c", Some("dashboard"), "10.0.0.5");
        assert_eq!(acl.check(&remote, Access::Subscribe, "$SYS/#"), Decision::Deny);
        assert_eq!(acl.check(&remote, Access::Subscribe, "$SYS/brokers/+/uptime"), Decision::Deny);
        assert_eq!(acl.check(&remote, Access::Subscribe, "#"), Decision::Deny);
        assert_eq!(acl.check(&remote, Access::Subscribe, "a/#"), Decision::Allow);
        assert_eq!(acl.check(&remote, Access::Publish, "#"), Decision::Allow);
        assert_eq!(acl.check(&local, Access::Subscribe, "$SYS/#"), Decision::Allow);
        assert_eq!(acl.check(&local, Access::Subscribe, "#"), Decision::Allow);
        assert_eq!(acl.check(&dash, Access::Subscribe, "$SYS/brokers"), Decision::Allow);
    }

    #[test]
    fn substitution_cidr_eq_and_nomatch() {
        let text = r##"
            % comment line
            {allow, all, pubsub, ["users/%u/#", "clients/%c"]}.
            {deny, {ipaddr, "192.168.0.0/16"}, publish, ["#"]}.
            {allow, {client, "admin"}, subscribe, [{eq, "a/+"}]}.
            {deny, {'user', "bob"}, subscribe, ["a/+"]}.
        "##;
        let acl = Acl::parse(text, Nomatch::Deny).unwrap();
        let bob = client("b1", Some("bob"), "192.168.3.4");
        let anon = client("x", None, "10.1.1.1");
        let admin = client("admin", None, "10.1.1.1");
        assert_eq!(acl.check(&bob, Access::Publish, "users/bob/x"), Decision::Allow);
        assert_eq!(acl.check(&bob, Access::Publish, "users/eve/x"), Decision::Deny);
        assert_eq!(acl.check(&anon, Access::Publish, "users/undefined/x"), Decision::Deny);
        assert_eq!(acl.check(&bob, Access::Subscribe, "clients/b1"), Decision::Allow);
        assert_eq!(acl.check(&admin, Access::Subscribe, "a/+"), Decision::Allow);
        assert_eq!(acl.check(&admin, Access::Subscribe, "a/b"), Decision::Deny, "nomatch");
        assert_eq!(acl.check(&bob, Access::Subscribe, "a/b"), Decision::Deny);
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(Acl::parse("{allow, all", Nomatch::Allow), Err(AclError::Syntax { .. })));
        assert!(matches!(Acl::parse("{maybe, all}.", Nomatch::Allow), Err(AclError::Rule { rule: 1, .. })));
        assert!(matches!(
            Acl::parse("{allow, {ipaddr, \"nope\"}, pubsub, [\"#\"]}.", Nomatch::Allow),
            Err(AclError::Rule { .. })
        ));
    }

    #[test]
    fn cache_is_bounded_and_clearable() {
        let mut cache = AclCache::new(2, std::time::Duration::from_secs(60));
        cache.put("a", Decision::Allow);
        cache.put("b", Decision::Deny);
        cache.put("c", Decision::Allow);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(Decision::Deny));
        cache.remove("b");
        assert_eq!(cache.get("b"), None);
        assert_eq!(cache.len(), 1);
    }
}
