//! Topic names shared by the broker and the sidecar.

/// Root of the broker's system tree. Topics under `$` are never matched by a `#` or `+` at the root.
pub const SYS_PREFIX: &str = "$SYS/";

/// `$SYS/brokers/{node}/` — the per-node branch of the system tree.
pub fn node_prefix(node: &str) -> String {
    format!("$SYS/brokers/{node}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_prefix_is_under_sys() {
        assert_eq!(
            node_prefix("midge@127.0.0.1"),
            "$SYS/brokers/midge@127.0.0.1/"
        );
        assert!(node_prefix("n").starts_with(SYS_PREFIX));
    }
}
