//! Finding NUL bytes in JSON: the path of every string (or key) that holds
//! one, so a refusal can name the field.
//!
//! No field falconeri stores may hold a NUL (PostgreSQL's `text` cannot, and
//! the two databases must agree), except free text, which is stored through
//! [`crate::text::escape_nul`]. falconerid's request extractors and spec
//! validation use [`nul_paths`] to name what they refuse.

use serde_json::Value;

use crate::text::escape_nul;

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
