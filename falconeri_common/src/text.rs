//! Free text from workers and commands, made storable on every database.
//!
//! PostgreSQL's `text` cannot hold a NUL byte (SQLite can), so a command's
//! output or an error message containing one would be refused. Such text is
//! stored with each NUL replaced by U+2400 SYMBOL FOR NULL (`␀`): the same on
//! both databases, visible to a reader, and never an error.

use std::borrow::Cow;

/// `text` with every NUL replaced by `␀`; borrowed when it has none.
pub fn escape_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{2400}"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_become_the_nul_symbol() {
        assert_eq!(escape_nul("a\0b\0"), "a\u{2400}b\u{2400}");
        assert!(matches!(escape_nul("plain"), Cow::Borrowed("plain")));
    }
}
