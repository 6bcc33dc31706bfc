//! Pachyderm-style glob patterns: which paths of an atom's listing a glob
//! matches, which datum each file belongs to, and the capture groups that
//! `join_on` and `group_by` read. Pure: no I/O.
//!
//! A glob is matched against the paths of an atom's files and directories,
//! relative to the atom URI (the leading `/` of the glob is its root). A
//! file belongs to the datum rooted at the *shortest* prefix of its path (at
//! a `/` boundary) that the glob matches: a matched directory is one datum
//! holding its whole subtree, a matched file a datum of one file, and files
//! with no matching prefix are left out. So `/` is the whole atom, `/*` each
//! top-level entry, `/*/*` each entry one level down (top-level files left
//! out). A glob whose last component is `**` (`/**`, `/logs/**`) matches
//! files only, one datum each: a directory match would just repeat them.
//!
//! Wildcards are globset's (ripgrep's glob engine): `*` and `?` stay within
//! one path component, `**` spans components, `[abc]`, `[!a-z]` and
//! `{a,b}` work as in a shell, and `\` escapes. Matching is on the UTF-8
//! bytes of a path, so `?` and a class match one byte. Parentheses outside a
//! class or `{…}` are capture groups, numbered by their opening parenthesis
//! as in a regular expression; each stretch of glob between them is
//! compiled by globset and the groups are put around the pieces.

use regex::bytes::{Regex, RegexBuilder};

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct GlobMatcher {
    kind: Kind,
    list_prefix: String,
    groups: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `/`: everything is one datum (no captures).
    Whole,
    /// `/*`: the top-level entry (no captures), without a regex, since it is
    /// the common case and planning a million files should not pay for one.
    TopLevel,
    /// `/**`: every file is its own datum.
    EveryFile,
    /// Anything else.
    Pattern { regex: Regex, files_only: bool },
}

/// The datum a file belongs to.
#[derive(Debug)]
pub struct GlobMatch<'p> {
    /// The matched path: a prefix of the file's path at a `/` boundary
    /// (the whole path for a file match, "" for `/`).
    pub root: &'p str,
    captures: Option<regex::bytes::Captures<'p>>,
}

impl GlobMatch<'_> {
    /// The key `template` (`join_on` or `group_by`) makes of this match's
    /// capture groups; a group that did not take part is empty. Bytes, not
    /// text: `?` may have split a character.
    pub fn key(&self, template: &KeyTemplate) -> Vec<u8> {
        let mut key = Vec::new();
        match &self.captures {
            Some(captures) => captures.expand(template.expand.as_bytes(), &mut key),
            // A glob without groups has no `$n` to fill in (validation
            // refuses a template that names one), so only literals remain.
            None => key.extend_from_slice(template.literal.as_bytes()),
        }
        key
    }
}

impl GlobMatcher {
    /// Compiles `glob`, which must start with `/`.
    pub fn new(glob: &str) -> Result<GlobMatcher, String> {
        let Some(pattern) = glob.strip_prefix('/') else {
            return Err(format!(
                "`{glob}` must start with `/` (the root of the input)"
            ));
        };
        let list_prefix = literal_prefix(pattern);
        let simple = |kind| {
            Ok(GlobMatcher {
                kind,
                list_prefix: list_prefix.clone(),
                groups: 0,
            })
        };
        match pattern {
            "" => return simple(Kind::Whole),
            "*" => return simple(Kind::TopLevel),
            "**" => return simple(Kind::EveryFile),
            _ => {}
        }
        if pattern.ends_with('/') {
            return Err(format!(
                "`{glob}` must not end with `/`: a glob names entries, not their contents"
            ));
        }
        let (regex, groups) = translate(pattern).map_err(|err| format!("`{glob}`: {err}"))?;
        let regex = RegexBuilder::new(&regex)
            .unicode(false)
            .build()
            .map_err(|err| format!("`{glob}` cannot be compiled: {err}"))?;
        let files_only = pattern == "**" || pattern.ends_with("/**");
        Ok(GlobMatcher {
            kind: Kind::Pattern { regex, files_only },
            list_prefix,
            groups,
        })
    }

    /// The literal start of the glob (without its leading `/`), up to the
    /// first wildcard: only paths starting with it can match, so only that
    /// much of the store needs listing ("" lists the whole atom).
    pub fn list_prefix(&self) -> &str {
        &self.list_prefix
    }

    /// How many capture groups the glob has.
    pub fn capture_groups(&self) -> usize {
        self.groups
    }

    /// The datum `path` (a file's path relative to the atom) belongs to, or
    /// `None` if the glob leaves it out.
    pub fn datum_of<'p>(&self, path: &'p str) -> Option<GlobMatch<'p>> {
        let simple = |root| {
            Some(GlobMatch {
                root,
                captures: None,
            })
        };
        match &self.kind {
            Kind::Whole => simple(""),
            Kind::TopLevel => simple(path.split('/').next().unwrap_or(path)),
            Kind::EveryFile => simple(path),
            Kind::Pattern { regex, files_only } => {
                let full = || {
                    regex.captures(path.as_bytes()).map(|captures| GlobMatch {
                        root: path,
                        captures: Some(captures),
                    })
                };
                if *files_only {
                    return full();
                }
                // The shortest matching prefix: each directory, then the
                // file itself.
                for (end, _) in path.match_indices('/') {
                    let prefix = &path[..end];
                    if let Some(captures) = regex.captures(prefix.as_bytes()) {
                        return Some(GlobMatch {
                            root: prefix,
                            captures: Some(captures),
                        });
                    }
                }
                full()
            }
        }
    }
}

/// The characters of a glob that are not literal.
const SPECIAL: &[char] = &['*', '?', '[', ']', '{', '}', '(', ')', '\\'];

fn literal_prefix(pattern: &str) -> String {
    let end = pattern.find(SPECIAL).unwrap_or(pattern.len());
    pattern[..end].to_owned()
}

/// Translates a glob (without its leading `/`) into an anchored regular
/// expression (bytes, no Unicode classes), and counts its capture groups.
fn translate(pattern: &str) -> Result<(String, usize), String> {
    let mut regex = String::from("^");
    let mut groups = 0;
    let mut open = 0usize;
    let mut piece = String::new();
    // Where we are inside `[…]` and `{…}`, where parentheses are literal.
    let mut in_class = false;
    let mut braces = 0usize;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                piece.push(c);
                if let Some(next) = chars.next() {
                    piece.push(next);
                }
            }
            '[' if !in_class => {
                in_class = true;
                piece.push(c);
                // `[]…]` and `[!]…]` hold a literal `]`.
                if chars.peek() == Some(&'!') {
                    piece.extend(chars.next());
                }
                if chars.peek() == Some(&']') {
                    piece.extend(chars.next());
                }
            }
            ']' if in_class => {
                in_class = false;
                piece.push(c);
            }
            '{' if !in_class => {
                braces += 1;
                piece.push(c);
            }
            '}' if !in_class && braces > 0 => {
                braces -= 1;
                piece.push(c);
            }
            '(' | ')' if !in_class && braces > 0 => {
                return Err("a capture group cannot be inside `{…}`".to_owned());
            }
            '(' if !in_class => {
                regex.push_str(&compile_piece(&std::mem::take(&mut piece))?);
                regex.push('(');
                groups += 1;
                open += 1;
            }
            ')' if !in_class => {
                if open == 0 {
                    return Err("`)` closes no capture group".to_owned());
                }
                regex.push_str(&compile_piece(&std::mem::take(&mut piece))?);
                regex.push(')');
                open -= 1;
            }
            _ => piece.push(c),
        }
    }
    if open > 0 {
        return Err("a capture group `(` is never closed".to_owned());
    }
    regex.push_str(&compile_piece(&piece)?);
    regex.push('$');
    Ok((regex, groups))
}

/// One stretch of glob between parentheses, as globset compiles it, without
/// globset's anchors and flags (the caller anchors the whole).
fn compile_piece(piece: &str) -> Result<String, String> {
    if piece.is_empty() {
        return Ok(String::new());
    }
    let glob = globset::GlobBuilder::new(piece)
        // `*` and `?` never cross a `/`, as in Pachyderm and a shell.
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|err| err.kind().to_string())?;
    let regex = glob.regex();
    let body = regex
        .strip_prefix("(?-u)^")
        .and_then(|rest| rest.strip_suffix('$'))
        .ok_or_else(|| format!("unexpected translation of `{piece}`: {regex}"))?;
    Ok(body.to_owned())
}

/// A parsed `join_on` or `group_by`: text with `$1` or `${1}` where a
/// capture group goes (`$$` is a literal `$`), as in Pachyderm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    /// The same template with every group written `${n}`: the regex
    /// crate would read `$1x` as a group named `1x`.
    expand: String,
    /// The template with its groups left out, for globs without groups.
    literal: String,
    /// The groups it refers to, in order.
    pub groups: Vec<usize>,
}

impl KeyTemplate {
    /// Parses `template`; names are refused (globs have numbered groups
    /// only).
    pub fn parse(template: &str) -> Result<KeyTemplate, String> {
        let (groups, expand, literal) = parse_template(template)?;
        Ok(KeyTemplate {
            expand,
            literal,
            groups,
        })
    }
}

fn parse_template(template: &str) -> Result<(Vec<usize>, String, String), String> {
    let mut groups = Vec::new();
    let mut expand = String::new();
    let mut literal = String::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            // Copy up to the next `$` (slicing at a `$` is always on a
            // character boundary).
            let end = template[i..].find('$').map_or(template.len(), |at| i + at);
            expand.push_str(&template[i..end]);
            literal.push_str(&template[i..end]);
            i = end;
            continue;
        }
        let rest = &template[i + 1..];
        if rest.starts_with('$') {
            expand.push_str("$$");
            literal.push('$');
            i += 2;
            continue;
        }
        let (digits, used) = match rest.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => return Err("`${` is never closed".to_owned()),
            },
            None => {
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                (&rest[..end], end)
            }
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(
                "`$` must be followed by a capture group number, as in `$1` or `${1}` \
                 (`$$` is a literal `$`)"
                    .to_owned(),
            );
        }
        let group: usize = digits
            .parse()
            .map_err(|_| format!("capture group `{digits}` is out of range"))?;
        groups.push(group);
        expand.push_str(&format!("${{{group}}}"));
        i += 1 + used;
    }
    Ok((groups, expand, literal))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// What `glob` makes of each path: the datum root and, for globs with
    /// groups, the `$1`…`$n` captures joined by `|`.
    fn check(glob: &str, cases: &[(&str, Option<&str>)]) {
        let matcher = GlobMatcher::new(glob).unwrap();
        for (path, expected) in cases {
            let got = matcher.datum_of(path).map(|m| m.root);
            assert_eq!(got, *expected, "glob {glob}, path {path}");
        }
    }

    #[test]
    fn datum_roots() {
        check("/", &[("a", Some("")), ("b/c/d", Some(""))]);
        check("/*", &[("a", Some("a")), ("b/c/d", Some("b"))]);
        check(
            "/*/*",
            &[("a", None), ("b/c", Some("b/c")), ("b/c/d/e", Some("b/c"))],
        );
        check(
            "/**",
            &[("a", Some("a")), ("b/c/d", Some("b/c/d")), ("é", Some("é"))],
        );
        check(
            "/logs/**",
            &[
                ("logs/a", Some("logs/a")),
                ("logs/x/y", Some("logs/x/y")),
                ("other/a", None),
            ],
        );
        check(
            "/**/*.csv",
            &[
                ("a.csv", Some("a.csv")),
                ("x/y/b.csv", Some("x/y/b.csv")),
                ("x/b.txt", None),
                // A directory whose name matches holds its subtree.
                ("d.csv/inner.txt", Some("d.csv")),
            ],
        );
        check(
            "/*.csv",
            &[
                ("a.csv", Some("a.csv")),
                ("a.txt", None),
                ("x/a.csv", None),
                (".csv", Some(".csv")),
            ],
        );
        check(
            "/2024-??-*",
            &[
                ("2024-01-03.log", Some("2024-01-03.log")),
                ("2024-1-03.log", None),
                ("2024-02-x/part-1", Some("2024-02-x")),
                ("2023-01-01", None),
            ],
        );
        check(
            "/{a,b}*",
            &[
                ("apple", Some("apple")),
                ("bee/x", Some("bee")),
                ("cat", None),
            ],
        );
        check(
            "/[a-c]?",
            &[
                ("a1", Some("a1")),
                ("d1", None),
                ("b", None),
                ("c2/x", Some("c2")),
            ],
        );
        check("/[!a-c]*", &[("a1", None), ("d1", Some("d1"))]);
        check(
            "/data/*",
            &[
                ("data/x", Some("data/x")),
                ("data/x/y", Some("data/x")),
                ("data", None),
            ],
        );
        // `*` never crosses a `/`.
        check("/a*z", &[("a/z", None), ("abz", Some("abz"))]);
        // Escapes and literal parentheses in a class.
        check("/\\*", &[("*", Some("*")), ("a", None)]);
        check("/[(]x", &[("(x", Some("(x"))]);
    }

    #[test]
    fn list_prefixes() {
        for (glob, prefix) in [
            ("/", ""),
            ("/*", ""),
            ("/**", ""),
            ("/*.csv", ""),
            ("/2024-??-*", "2024-"),
            ("/logs/2024/*.csv", "logs/2024/"),
            ("/logs/(*)/x", "logs/"),
            ("/{a,b}*", ""),
            ("/abc", "abc"),
            ("/a\\*b", "a"),
        ] {
            assert_eq!(
                GlobMatcher::new(glob).unwrap().list_prefix(),
                prefix,
                "{glob}"
            );
        }
    }

    /// Pachyderm's own examples over `/foo/bar-123/ABC.txt`.
    #[test]
    fn capture_groups() {
        let path = "foo/bar-123/ABC.txt";
        for (glob, template, root, key) in [
            ("/(*)", "$1", "foo", "foo"),
            ("/*/bar-(*)", "$1", "foo/bar-123", "123"),
            ("/(*)/*/(??)*.txt", "$1 $2", path, "foo AB"),
            ("/*/(bar-(123))/*", "$1,$2", path, "bar-123,123"),
            ("/(*)/*/(??)*.txt", "${2}x$1$$", path, "ABxfoo$"),
            ("/(*)/*/(??)*.txt", "$2é", path, "ABé"),
        ] {
            let matcher = GlobMatcher::new(glob).unwrap();
            let matched = matcher.datum_of(path).unwrap();
            assert_eq!(matched.root, root, "{glob}");
            let template = KeyTemplate::parse(template).unwrap();
            assert_eq!(
                String::from_utf8(matched.key(&template)).unwrap(),
                key,
                "{glob} {template:?}"
            );
        }
        assert_eq!(
            GlobMatcher::new("/*/(bar-(123))/*")
                .unwrap()
                .capture_groups(),
            2
        );
        assert_eq!(GlobMatcher::new("/*").unwrap().capture_groups(), 0);
    }

    #[test]
    fn bad_globs() {
        for (glob, message) in [
            ("*", "must start with `/`"),
            ("/a/", "must not end with `/`"),
            ("/(a", "never closed"),
            ("/a)", "closes no capture group"),
            ("/{a,(b)}", "inside `{…}`"),
            ("/[a", "unclosed character class"),
            ("/{a,b", "unclosed alternate group"),
        ] {
            let err = GlobMatcher::new(glob).unwrap_err();
            assert!(err.contains(message), "{glob}: {err}");
        }
    }

    #[test]
    fn templates() {
        let parse = |t| KeyTemplate::parse(t).map(|t| t.groups);
        assert_eq!(parse("$1").unwrap(), vec![1]);
        assert_eq!(parse("${2}-$1x").unwrap(), vec![2, 1]);
        assert_eq!(parse("$$").unwrap(), Vec::<usize>::new());
        assert!(parse("$a").is_err());
        assert!(parse("${1").is_err());
        assert!(parse("$").is_err());
        // `$1x` is group 1 then `x`, not a group named `1x`.
        let matcher = GlobMatcher::new("/(*)").unwrap();
        let matched = matcher.datum_of("ab").unwrap();
        let key = matched.key(&KeyTemplate::parse("$1x").unwrap());
        assert_eq!(key, b"abx");
    }
}
