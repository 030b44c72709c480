//! Output: text for people, JSON for scripts (`--output json`).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Prints `value` as JSON, or as text via `text`.
pub fn print<T: Serialize>(format: Format, value: &T, text: impl FnOnce(&T) -> String) {
    match format {
        Format::Json => println!("{}", tollgate_client::to_json(value)),
        Format::Text => println!("{}", text(value)),
    }
}

/// Text rendering of a JSON array of objects: one line per item with the chosen fields.
pub fn lines(items: &serde_json::Value, fields: &[&str]) -> String {
    let Some(arr) = items.as_array() else {
        return items.to_string();
    };
    if arr.is_empty() {
        return "(none)".to_owned();
    }
    arr.iter()
        .map(|item| {
            fields
                .iter()
                .map(|f| {
                    let v = item.get(*f).cloned().unwrap_or(serde_json::Value::Null);
                    let s = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    format!("{f}={s}")
                })
                .collect::<Vec<_>>()
                .join("  ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
