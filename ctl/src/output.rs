//! What a command prints: a table by default, made for people; with `--json`, the API's `result` as it
//! came, made for scripts.

use serde_json::Value;

/// How a command's result reads as text.
pub enum Render {
    /// These rows (an array of objects), these fields as columns.
    Rows(&'static [&'static str], Value),
    /// A sentence instead of the result.
    Message(String),
}

pub fn print(result: &Value, render: &Render, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(result).unwrap_or_default());
        return;
    }
    match render {
        Render::Rows(columns, rows) => {
            print!("{}", table(columns, rows.as_array().map(Vec::as_slice).unwrap_or_default()))
        }
        Render::Message(message) => println!("{message}"),
    }
}

/// A table with a header line: each column as wide as its widest cell.
pub fn table(columns: &[&str], rows: &[Value]) -> String {
    let mut lines = vec![columns.iter().map(|c| c.to_string()).collect::<Vec<_>>()];
    lines.extend(rows.iter().map(|row| columns.iter().map(|c| cell(&row[*c])).collect()));
    aligned(&lines)
}

fn aligned(rows: &[Vec<String>]) -> String {
    let width = |i: usize| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0);
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len)).map(width).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A JSON value as a table shows it: strings without quotes, nothing for a missing field.
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = [json!({"client_id": "a", "qos": 1}), json!({"client_id": "longer", "qos": 0, "extra": true})];
        assert_eq!(table(&["client_id", "qos"], &rows), "client_id  qos\na          1\nlonger     0\n");
    }
}
