//! Text that falconeri stores as it was given: what a command printed, why an
//! attempt failed.
//!
//! PostgreSQL's `TEXT` cannot hold a NUL byte (it answers `invalid byte
//! sequence for encoding "UTF8": 0x00`) while SQLite can, so free text that
//! comes from outside is passed through [`escape_nul`] before it is stored:
//! both databases then hold, and show, the same string. Every other request
//! field refuses NUL bytes outright (see `falconerid::error`).

use std::borrow::Cow;

use serde_json::Value;

/// What a NUL byte becomes in stored text: U+2400 SYMBOL FOR NULL, which
/// shows where the NUL was and is valid in every encoding we store.
pub const NUL_REPLACEMENT: char = '\u{2400}';

/// `text` with every NUL byte replaced by [`NUL_REPLACEMENT`] (`␀`).
///
/// Borrows when there is nothing to replace, which is nearly always; the
/// scan is a `memchr`. Applying it twice changes nothing more, so callers at
/// several layers may each apply it. A `␀` already in `text` stays as it is:
/// after escaping, the two can no longer be told apart.
pub fn escape_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{2400}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The JSON path (`claim.worker_id`, `transform.cmd[1]`) of every string
/// and object key in `value` that holds a NUL byte.
/// Members named in `free_text` are skipped whole: their text is stored
/// through [`escape_nul`] instead of being refused. A key is shown escaped,
/// so the path itself never carries a NUL.
pub fn nul_paths(value: &Value, free_text: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    walk(value, &mut String::new(), free_text, &mut found);
    found
}

fn walk(value: &Value, path: &mut String, free_text: &[&str], found: &mut Vec<String>) {
    match value {
        Value::String(text) if text.contains('\0') => found.push(path.clone()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, path, free_text, found);
                path.truncate(len);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                if free_text.contains(&key.as_str()) {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&escape_nul(key));
                if key.contains('\0') {
                    found.push(path.clone());
                } else {
                    walk(member, path, free_text, found);
                }
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(input: &str, expected: &str) {
        let escaped = escape_nul(input);
        assert_eq!(escaped, expected, "escape_nul({input:?})");
        assert!(!escaped.contains('\0'));
        // Idempotent: escaping what was stored changes nothing.
        assert_eq!(escape_nul(&escaped), expected);
    }

    #[test]
    fn nul_bytes_become_the_symbol_for_null() {
        check("a\0b", "a\u{2400}b");
        check("\0", "␀");
        check("\0\0", "␀␀");
        check("end\0", "end␀");
        check("\0start", "␀start");
        check("é\0ü", "é␀ü");
    }

    #[test]
    fn text_without_nul_is_borrowed_unchanged() {
        for text in [
            "",
            "plain",
            "tab\tand\nnewline",
            "already ␀ escaped",
            "\u{1}\u{7f}",
        ] {
            check(text, text);
            assert!(matches!(escape_nul(text), Cow::Borrowed(_)), "{text:?}");
        }
    }

    #[test]
    fn nul_paths_name_every_field_with_a_nul() {
        let value = json!({
            "claim": { "worker_id": "w\u{0}1", "attempt": 1 },
            "output": "free \u{0} text",
            "files": [{ "path": "ok" }, { "path": "\u{0}" }],
            "env": { "K\u{0}": "v" },
            "fine": "no nul here",
        });
        let mut paths = nul_paths(&value, &["output"]);
        paths.sort();
        assert_eq!(paths, ["claim.worker_id", "env.K␀", "files[1].path"]);
        // Without the allow-list, free text is refused like anything else.
        assert!(nul_paths(&value, &[]).contains(&"output".to_owned()));
        assert_eq!(nul_paths(&json!("\u{0}"), &[]), [""]);
        assert_eq!(nul_paths(&json!(["a", ["\u{0}"]]), &[]), ["[1][0]"]);
        assert!(nul_paths(&json!({ "a": [1, null, true] }), &[]).is_empty());
    }
}
