//! Topic names shared by the broker and the sidecar.

/// Root of the broker's system tree. Topics under `$` are never matched by a `#` or `+` at the root.
pub const SYS_PREFIX: &str = "$SYS/";

/// `$SYS/brokers`: the comma-joined node names (retained).
pub const SYS_BROKERS: &str = "$SYS/brokers";

/// `$SYS/brokers/{node}/` — the per-node branch of the system tree.
pub fn node_prefix(node: &str) -> String {
    format!("$SYS/brokers/{node}/")
}

/// `$SYS/brokers/{node}/{suffix}`.
pub fn node_topic(node: &str, suffix: &str) -> String {
    format!("$SYS/brokers/{node}/{suffix}")
}

/// `$SYS/brokers/{node}/clients/{clientid}/{event}` with event `connected` or `disconnected`.
pub fn client_event(node: &str, client_id: &str, event: &str) -> String {
    format!("$SYS/brokers/{node}/clients/{client_id}/{event}")
}

/// Splits `$SYS/brokers/{node}/{rest}` into `(node, rest)`. Node names contain no `/`.
pub fn parse_node_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("$SYS/brokers/")?;
    rest.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_topics() {
        assert_eq!(node_prefix("midge@127.0.0.1"), "$SYS/brokers/midge@127.0.0.1/");
        assert!(node_prefix("n").starts_with(SYS_PREFIX));
        let t = node_topic("n@h", "metrics/bytes/sent");
        assert_eq!(parse_node_topic(&t), Some(("n@h", "metrics/bytes/sent")));
        assert_eq!(parse_node_topic(SYS_BROKERS), None);
        assert_eq!(client_event("n", "c/1", "connected"), "$SYS/brokers/n/clients/c/1/connected");
    }
}
