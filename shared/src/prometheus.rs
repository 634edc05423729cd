//! Prometheus's text exposition format for a node's metrics and stats: what the sidecar serves for every
//! node at `GET /metrics` and a broker for itself at `--metrics-listen`, so a dashboard reads one set of
//! names either way.
//!
//! The broker's names become Prometheus's: `messages/received` is `midge_messages_received_total`, a
//! counter; `clients/count` is `midge_clients_count`, a gauge; each sample has the `node` label.

use std::collections::BTreeMap;
use std::fmt::Write;

/// A node's figures by their broker names.
pub type Figures = BTreeMap<String, u64>;

/// One metric family: its type, and its samples by node.
struct Family<'a> {
    kind: &'static str,
    samples: Vec<(&'a str, u64)>,
}

/// Metrics (counters) and stats (gauges) by node, one family after another, each with its TYPE line.
pub fn exposition(metrics: &BTreeMap<String, Figures>, stats: &BTreeMap<String, Figures>) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (by_node, kind, suffix) in [(metrics, "counter", "_total"), (stats, "gauge", "")] {
        for (node, figures) in by_node {
            for (key, value) in figures {
                let name = format!("midge_{}{suffix}", metric_name(key));
                families.entry(name).or_insert(Family { kind, samples: Vec::new() }).samples.push((node, *value));
            }
        }
    }
    let mut text = String::new();
    for (name, Family { kind, samples }) in families {
        let _ = writeln!(text, "# TYPE {name} {kind}");
        for (node, value) in samples {
            let _ = writeln!(text, "{name}{{node=\"{}\"}} {value}", label_value(node));
        }
    }
    text
}

/// `messages/qos1/received` → `messages_qos1_received`: Prometheus names allow `[a-zA-Z0-9_:]`.
fn metric_name(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
pub fn label_value(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_by_node() {
        let node = |name: &str, pairs: &[(&str, u64)]| {
            (name.to_string(), pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Figures>())
        };
        let metrics =
            BTreeMap::from([node("a@h", &[("messages/received", 3)]), node("b\"@h", &[("messages/received", 4)])]);
        let stats = BTreeMap::from([node("a@h", &[("clients/count", 1), ("clients/max", 2)])]);
        assert_eq!(
            exposition(&metrics, &stats),
            "# TYPE midge_clients_count gauge\n\
             midge_clients_count{node=\"a@h\"} 1\n\
             # TYPE midge_clients_max gauge\n\
             midge_clients_max{node=\"a@h\"} 2\n\
             # TYPE midge_messages_received_total counter\n\
             midge_messages_received_total{node=\"a@h\"} 3\n\
             midge_messages_received_total{node=\"b\\\"@h\"} 4\n"
        );
    }
}
