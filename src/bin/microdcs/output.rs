//! How the operator commands print: a readable table by default, JSON for
//! scripts (`--json`). One place, so every command looks and scripts the
//! same way.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

/// `--json`, shared by every command that prints records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::Args)]
pub(crate) struct OutputArgs {
    /// Print JSON (one document on stdout) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A table with a header row and no borders, columns padded to their widest
/// cell, as `kubectl get` prints.
pub(crate) fn table<H, R, C>(header: H, rows: R) -> String
where
    H: IntoIterator,
    H::Item: Into<comfy_table::Cell>,
    R: IntoIterator<Item = C>,
    C: IntoIterator,
    C::Item: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    for row in rows {
        t.add_row(row);
    }
    // comfy-table pads the first column with one space on the left; the
    // lines are trimmed so the output starts at column 0 like `kubectl`.
    t.lines()
        .map(|l| l.trim().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pretty-printed JSON of `value`.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serialising our own plain records cannot fail (no maps with non-string
    // keys, no failing Serialize impls).
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_under_a_header() {
        let s = table(
            ["ID", "STATE"],
            [vec!["job-1", "Running"], vec!["a-longer-id", "Ended"]],
        );
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert!(lines[0].starts_with("ID "), "{s}");
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(lines[1].find("Running"), Some(col), "{s}");
        assert_eq!(lines[2].find("Ended"), Some(col), "{s}");
    }

    #[test]
    fn json_is_one_document() {
        let v: serde_json::Value = serde_json::from_str(&json(&[1, 2])).unwrap();
        assert_eq!(v, serde_json::json!([1, 2]));
    }
}
