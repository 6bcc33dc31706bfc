//! Expanding a spec's inputs into datums, given a listing of each atom.
//! Pure: listing storage is the caller's job.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
};

use serde::{Deserialize, Serialize};

use crate::pipeline::{AtomInput, Glob, Input, check_repo_name};

/// One object found by listing an atom's URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Where the object can be downloaded from.
    pub uri: String,
    /// '/'-separated, relative to the atom URI, no leading '/'.
    pub relative_path: String,
    pub size: u64,
}

/// One file a worker downloads before processing a datum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub uri: String,
    /// Where the file goes under the worker's `pfs` directory:
    /// `<repo>/<relative_path>`.
    pub local_path: String,
}

/// One unit of work: the files one run of the transform sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDatum {
    pub files: Vec<PlannedFile>,
}

/// Why inputs could not be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the input has {expected} atoms, but {actual} listings were given")]
    ListingCount { expected: usize, actual: usize },
    #[error("{uri}: unsafe relative path {relative_path:?}: {reason}")]
    UnsafePath {
        uri: String,
        relative_path: String,
        reason: &'static str,
    },
    #[error("{uri}: {relative_path:?} is listed twice")]
    DuplicatePath { uri: String, relative_path: String },
    #[error("{uri}: {relative_path:?} is both a file and a directory")]
    FileAndDirectory { uri: String, relative_path: String },
    #[error("repo `{repo}`: {reason}")]
    InvalidRepo { repo: String, reason: String },
    #[error("repo `{repo}` comes from more than one input of a cross")]
    DuplicateRepo { repo: String },
    #[error("the cross product has too many datums to plan")]
    TooManyDatums,
}

/// Expands `input` into datums. `listings[i]` is the listing of
/// `input.atoms()[i]`.
///
/// Glob `/` makes an atom's whole listing one datum (none if it is empty);
/// `/*` makes one datum per top-level file or directory. `cross` combines
/// one datum from each child, in child order, the first child varying
/// slowest; `union` concatenates its children's datums. Within an atom,
/// datums and files are sorted by path, so the plan is deterministic.
pub fn plan_datums(
    input: &Input,
    listings: &[Vec<ObjectInfo>],
) -> Result<Vec<PlannedDatum>, PlanError> {
    let expected = input.atoms().len();
    if expected != listings.len() {
        return Err(PlanError::ListingCount {
            expected,
            actual: listings.len(),
        });
    }
    let mut planner = Planner { listings, next: 0 };
    planner.plan(input)
}

/// Walks the input tree, handing out listings in [`Input::atoms`] order.
struct Planner<'a> {
    listings: &'a [Vec<ObjectInfo>],
    next: usize,
}

impl Planner<'_> {
    fn plan(&mut self, input: &Input) -> Result<Vec<PlannedDatum>, PlanError> {
        match input {
            Input::Atom(atom) => {
                // `plan_datums` checked the count, so this only fails if the
                // walk order ever drifts from `Input::atoms`.
                let listing =
                    self.listings
                        .get(self.next)
                        .ok_or_else(|| PlanError::ListingCount {
                            expected: self.next + 1,
                            actual: self.listings.len(),
                        })?;
                self.next += 1;
                plan_atom(atom, listing)
            }
            Input::Union(inputs) => {
                let mut datums = Vec::new();
                for child in inputs {
                    datums.extend(self.plan(child)?);
                }
                Ok(datums)
            }
            Input::Cross(inputs) => {
                check_distinct_repos(inputs)?;
                // Plan every child before combining, so every listing is
                // checked even when an earlier child is empty.
                let children = inputs
                    .iter()
                    .map(|child| self.plan(child))
                    .collect::<Result<Vec<_>, _>>()?;
                cross(children)
            }
        }
    }
}

/// Each datum of a cross has one directory per repo, so two children
/// providing the same repo would collide.
fn check_distinct_repos(inputs: &[Input]) -> Result<(), PlanError> {
    let mut seen = BTreeSet::new();
    for child in inputs {
        let repos: BTreeSet<&str> = child.atoms().iter().map(|a| a.repo.as_str()).collect();
        for repo in repos {
            if !seen.insert(repo) {
                return Err(PlanError::DuplicateRepo {
                    repo: repo.to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn cross(children: Vec<Vec<PlannedDatum>>) -> Result<Vec<PlannedDatum>, PlanError> {
    if children.is_empty() || children.iter().any(Vec::is_empty) {
        return Ok(Vec::new());
    }
    // With no empty child, every partial product is at most the total, so
    // checking the total once rules out overflow below.
    children
        .iter()
        .try_fold(1usize, |total, child| total.checked_mul(child.len()))
        .ok_or(PlanError::TooManyDatums)?;
    let mut datums = vec![PlannedDatum { files: Vec::new() }];
    for child in children {
        let mut combined = Vec::with_capacity(datums.len() * child.len());
        for left in &datums {
            for right in &child {
                let mut files = Vec::with_capacity(left.files.len() + right.files.len());
                files.extend_from_slice(&left.files);
                files.extend_from_slice(&right.files);
                combined.push(PlannedDatum { files });
            }
        }
        datums = combined;
    }
    Ok(datums)
}

fn plan_atom(atom: &AtomInput, listing: &[ObjectInfo]) -> Result<Vec<PlannedDatum>, PlanError> {
    check_repo_name(&atom.repo).map_err(|reason| PlanError::InvalidRepo {
        repo: atom.repo.clone(),
        reason,
    })?;
    for object in listing {
        check_relative_path(&object.relative_path).map_err(|reason| PlanError::UnsafePath {
            uri: object.uri.clone(),
            relative_path: object.relative_path.clone(),
            reason,
        })?;
    }

    let mut objects: Vec<&ObjectInfo> = listing.iter().collect();
    objects.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    check_paths_are_a_tree(&atom.uri, &objects)?;

    let file = |object: &ObjectInfo| PlannedFile {
        uri: object.uri.clone(),
        local_path: format!("{}/{}", atom.repo, object.relative_path),
    };
    match atom.glob {
        Glob::WholeRepo if objects.is_empty() => Ok(Vec::new()),
        Glob::WholeRepo => Ok(vec![PlannedDatum {
            files: objects.into_iter().map(file).collect(),
        }]),
        Glob::TopLevelEntries => {
            let mut entries: BTreeMap<&str, Vec<PlannedFile>> = BTreeMap::new();
            for object in objects {
                let top = object
                    .relative_path
                    .split('/')
                    .next()
                    .unwrap_or(&object.relative_path);
                entries.entry(top).or_default().push(file(object));
            }
            Ok(entries
                .into_values()
                .map(|files| PlannedDatum { files })
                .collect())
        }
    }
}

/// Rejects listings that cannot be written to disk: the same path twice, or
/// a path that is a file and also has files under it (possible in object
/// stores). `objects` must be sorted by relative path.
fn check_paths_are_a_tree(uri: &str, objects: &[&ObjectInfo]) -> Result<(), PlanError> {
    if let Some(pair) = objects
        .windows(2)
        .find(|pair| pair[0].relative_path == pair[1].relative_path)
    {
        return Err(PlanError::DuplicatePath {
            uri: uri.to_owned(),
            relative_path: pair[0].relative_path.clone(),
        });
    }
    let paths: BTreeSet<&str> = objects.iter().map(|o| o.relative_path.as_str()).collect();
    for path in &paths {
        let dir = format!("{path}/");
        let first_after = paths
            .range::<str, _>((Bound::Included(dir.as_str()), Bound::Unbounded))
            .next();
        if first_after.is_some_and(|p| p.starts_with(&dir)) {
            return Err(PlanError::FileAndDirectory {
                uri: uri.to_owned(),
                relative_path: (*path).to_owned(),
            });
        }
    }
    Ok(())
}

/// A relative path is safe when joining it to a directory cannot leave that
/// directory or name something other than a file.
fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("it is empty");
    }
    if path.starts_with('/') {
        return Err("it is absolute");
    }
    if path.contains('\\') {
        return Err("it contains a backslash");
    }
    if path.contains('\0') {
        return Err("it contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("it has an empty component"),
            "." | ".." => return Err("it has a `.` or `..` component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    // Unwrapping is how a test says "this must succeed".
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn atom(uri: &str, repo: &str, glob: Glob) -> Input {
        Input::Atom(AtomInput {
            uri: uri.into(),
            repo: repo.into(),
            glob,
        })
    }

    /// A listing of `base` (ending in '/') holding `paths`.
    fn listing(base: &str, paths: &[&str]) -> Vec<ObjectInfo> {
        paths
            .iter()
            .map(|path| ObjectInfo {
                uri: format!("{base}{path}"),
                relative_path: (*path).to_owned(),
                size: 1,
            })
            .collect()
    }

    /// Each datum as its local paths, for compact assertions.
    fn local_paths(datums: &[PlannedDatum]) -> Vec<Vec<&str>> {
        datums
            .iter()
            .map(|d| d.files.iter().map(|f| f.local_path.as_str()).collect())
            .collect()
    }

    #[test]
    fn whole_repo_is_one_datum() {
        let input = atom("s3://b/in/", "in", Glob::WholeRepo);
        let datums = plan_datums(
            &input,
            &[listing("s3://b/in/", &["z.txt", "a/b.txt", "a.txt"])],
        )
        .unwrap();
        assert_eq!(
            datums,
            vec![PlannedDatum {
                files: vec![
                    PlannedFile {
                        uri: "s3://b/in/a.txt".into(),
                        local_path: "in/a.txt".into(),
                    },
                    PlannedFile {
                        uri: "s3://b/in/a/b.txt".into(),
                        local_path: "in/a/b.txt".into(),
                    },
                    PlannedFile {
                        uri: "s3://b/in/z.txt".into(),
                        local_path: "in/z.txt".into(),
                    },
                ]
            }]
        );
    }

    #[test]
    fn empty_whole_repo_has_no_datums() {
        let input = atom("s3://b/in/", "in", Glob::WholeRepo);
        assert_eq!(plan_datums(&input, &[vec![]]).unwrap(), vec![]);
    }

    #[test]
    fn top_level_entries_are_datums() {
        let input = atom("gs://b/books/", "books", Glob::TopLevelEntries);
        let datums = plan_datums(
            &input,
            &[listing("gs://b/books/", &["c.txt", "a.txt", "b.txt"])],
        )
        .unwrap();
        assert_eq!(
            local_paths(&datums),
            [["books/a.txt"], ["books/b.txt"], ["books/c.txt"]]
        );
        assert_eq!(datums[0].files[0].uri, "gs://b/books/a.txt");
    }

    #[test]
    fn top_level_directories_group_everything_under_them() {
        let input = atom("file:///data/", "data", Glob::TopLevelEntries);
        let datums = plan_datums(
            &input,
            &[listing(
                "file:///data/",
                &[
                    "dir/sub/deep.txt",
                    "dir/x.txt",
                    "a-b",
                    "dir2/y",
                    "top.txt",
                    "dir/a.txt",
                ],
            )],
        )
        .unwrap();
        assert_eq!(
            local_paths(&datums),
            vec![
                vec!["data/a-b"],
                vec!["data/dir/a.txt", "data/dir/sub/deep.txt", "data/dir/x.txt"],
                vec!["data/dir2/y"],
                vec!["data/top.txt"],
            ]
        );
    }

    #[test]
    fn empty_top_level_has_no_datums() {
        let input = atom("s3://b/in/", "in", Glob::TopLevelEntries);
        assert_eq!(plan_datums(&input, &[vec![]]).unwrap(), vec![]);
    }

    #[test]
    fn plans_are_deterministic() {
        let input = atom("s3://b/in/", "in", Glob::TopLevelEntries);
        let a = plan_datums(&input, &[listing("s3://b/in/", &["b/2", "a", "b/1"])]).unwrap();
        let b = plan_datums(&input, &[listing("s3://b/in/", &["b/1", "b/2", "a"])]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn cross_is_a_cartesian_product_in_child_order() {
        let input = Input::Cross(vec![
            atom("s3://b/x/", "x", Glob::TopLevelEntries),
            atom("s3://b/y/", "y", Glob::TopLevelEntries),
        ]);
        let datums = plan_datums(
            &input,
            &[
                listing("s3://b/x/", &["1", "2"]),
                listing("s3://b/y/", &["a", "b", "c"]),
            ],
        )
        .unwrap();
        assert_eq!(
            local_paths(&datums),
            [
                ["x/1", "y/a"],
                ["x/1", "y/b"],
                ["x/1", "y/c"],
                ["x/2", "y/a"],
                ["x/2", "y/b"],
                ["x/2", "y/c"],
            ]
        );
    }

    #[test]
    fn cross_with_an_empty_child_has_no_datums() {
        let input = Input::Cross(vec![
            atom("s3://b/x/", "x", Glob::TopLevelEntries),
            atom("s3://b/y/", "y", Glob::WholeRepo),
        ]);
        let datums = plan_datums(&input, &[listing("s3://b/x/", &["1", "2"]), vec![]]).unwrap();
        assert_eq!(datums, vec![]);
        assert_eq!(plan_datums(&Input::Cross(vec![]), &[]).unwrap(), vec![]);
    }

    #[test]
    fn cross_still_checks_listings_after_an_empty_child() {
        let input = Input::Cross(vec![
            atom("s3://b/x/", "x", Glob::WholeRepo),
            atom("s3://b/y/", "y", Glob::WholeRepo),
        ]);
        let err = plan_datums(&input, &[vec![], listing("s3://b/y/", &["../etc"])]).unwrap_err();
        assert!(matches!(err, PlanError::UnsafePath { .. }), "{err}");
    }

    #[test]
    fn union_concatenates() {
        let input = Input::Union(vec![
            atom("s3://b/x/", "x", Glob::TopLevelEntries),
            atom("s3://b/y/", "y", Glob::WholeRepo),
            atom("s3://b/z/", "x", Glob::TopLevelEntries),
        ]);
        let datums = plan_datums(
            &input,
            &[
                listing("s3://b/x/", &["2", "1"]),
                listing("s3://b/y/", &["a", "b"]),
                listing("s3://b/z/", &["q"]),
            ],
        )
        .unwrap();
        assert_eq!(
            local_paths(&datums),
            vec![vec!["x/1"], vec!["x/2"], vec!["y/a", "y/b"], vec!["x/q"]]
        );
        assert_eq!(datums[3].files[0].uri, "s3://b/z/q");
    }

    /// The shape of the reference spec nested-inputs.json.
    #[test]
    fn cross_of_a_union() {
        let input = Input::Cross(vec![
            atom("s3://c/categories/", "categories", Glob::WholeRepo),
            Input::Union(vec![
                atom("s3://c/books/", "books", Glob::TopLevelEntries),
                atom("s3://c/more-books/", "more-books", Glob::TopLevelEntries),
            ]),
        ]);
        let datums = plan_datums(
            &input,
            &[
                listing("s3://c/categories/", &["fiction.txt", "poetry.txt"]),
                listing("s3://c/books/", &["b1.txt", "b2.txt"]),
                listing("s3://c/more-books/", &["m1/p1.txt", "m1/p2.txt"]),
            ],
        )
        .unwrap();
        assert_eq!(
            local_paths(&datums),
            vec![
                vec![
                    "categories/fiction.txt",
                    "categories/poetry.txt",
                    "books/b1.txt"
                ],
                vec![
                    "categories/fiction.txt",
                    "categories/poetry.txt",
                    "books/b2.txt"
                ],
                vec![
                    "categories/fiction.txt",
                    "categories/poetry.txt",
                    "more-books/m1/p1.txt",
                    "more-books/m1/p2.txt",
                ],
            ]
        );
    }

    #[test]
    fn union_of_crosses() {
        let input = Input::Union(vec![
            Input::Cross(vec![
                atom("s3://b/a/", "a", Glob::TopLevelEntries),
                atom("s3://b/b/", "b", Glob::TopLevelEntries),
            ]),
            Input::Cross(vec![
                atom("s3://b/a/", "a", Glob::WholeRepo),
                atom("s3://b/c/", "c", Glob::WholeRepo),
            ]),
        ]);
        let datums = plan_datums(
            &input,
            &[
                listing("s3://b/a/", &["1", "2"]),
                listing("s3://b/b/", &["x"]),
                listing("s3://b/a/", &["1", "2"]),
                listing("s3://b/c/", &["y"]),
            ],
        )
        .unwrap();
        assert_eq!(
            local_paths(&datums),
            vec![
                vec!["a/1", "b/x"],
                vec!["a/2", "b/x"],
                vec!["a/1", "a/2", "c/y"]
            ]
        );
    }

    #[test]
    fn listing_count_must_match() {
        let input = Input::Cross(vec![
            atom("s3://b/x/", "x", Glob::WholeRepo),
            atom("s3://b/y/", "y", Glob::WholeRepo),
        ]);
        let err = plan_datums(&input, &[vec![]]).unwrap_err();
        assert_eq!(
            err,
            PlanError::ListingCount {
                expected: 2,
                actual: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "the input has 2 atoms, but 1 listings were given"
        );
        assert!(plan_datums(&input, &[vec![], vec![], vec![]]).is_err());
    }

    #[test]
    fn unsafe_paths_are_rejected() {
        for (path, reason) in [
            ("", "it is empty"),
            ("/etc/passwd", "it is absolute"),
            ("../x", "it has a `.` or `..` component"),
            ("a/../../x", "it has a `.` or `..` component"),
            ("a/./x", "it has a `.` or `..` component"),
            ("..", "it has a `.` or `..` component"),
            ("a//b", "it has an empty component"),
            ("dir/", "it has an empty component"),
            ("a\\b", "it contains a backslash"),
            ("a\0b", "it contains a NUL byte"),
        ] {
            let input = atom("s3://b/in/", "in", Glob::WholeRepo);
            let objects = vec![ObjectInfo {
                uri: "s3://b/in/evil".into(),
                relative_path: path.into(),
                size: 0,
            }];
            let err = plan_datums(&input, &[objects]).unwrap_err();
            assert_eq!(
                err,
                PlanError::UnsafePath {
                    uri: "s3://b/in/evil".into(),
                    relative_path: path.into(),
                    reason,
                }
            );
            assert!(
                err.to_string()
                    .starts_with("s3://b/in/evil: unsafe relative path")
            );
        }
        // Dots inside names are fine.
        let input = atom("s3://b/in/", "in", Glob::WholeRepo);
        plan_datums(&input, &[listing("s3://b/in/", &["..a", "a..b/.c"])]).unwrap();
    }

    #[test]
    fn paths_must_form_a_tree() {
        let input = atom("s3://b/in/", "in", Glob::TopLevelEntries);
        let err = plan_datums(&input, &[listing("s3://b/in/", &["a", "b", "a"])]).unwrap_err();
        assert_eq!(
            err,
            PlanError::DuplicatePath {
                uri: "s3://b/in/".into(),
                relative_path: "a".into()
            }
        );
        // "a-b" sorts between "a" and "a/c", so this needs more than a
        // neighbour check.
        let err = plan_datums(&input, &[listing("s3://b/in/", &["a", "a-b", "a/c"])]).unwrap_err();
        assert_eq!(
            err,
            PlanError::FileAndDirectory {
                uri: "s3://b/in/".into(),
                relative_path: "a".into()
            }
        );
        plan_datums(&input, &[listing("s3://b/in/", &["a", "a-b", "ab/c"])]).unwrap();
    }

    #[test]
    fn bad_repos_are_rejected() {
        for repo in ["", "..", "a/b", "out"] {
            let input = atom("s3://b/in/", repo, Glob::WholeRepo);
            let err = plan_datums(&input, &[listing("s3://b/in/", &["x"])]).unwrap_err();
            assert!(
                matches!(err, PlanError::InvalidRepo { .. }),
                "{repo}: {err}"
            );
        }
        let input = Input::Cross(vec![
            atom("s3://b/x/", "x", Glob::WholeRepo),
            Input::Union(vec![
                atom("s3://b/y/", "y", Glob::WholeRepo),
                atom("s3://b/x2/", "x", Glob::WholeRepo),
            ]),
        ]);
        let err = plan_datums(&input, &[vec![], vec![], vec![]]).unwrap_err();
        assert_eq!(err, PlanError::DuplicateRepo { repo: "x".into() });
    }

    #[test]
    fn planned_datums_serialize() {
        let datum = PlannedDatum {
            files: vec![PlannedFile {
                uri: "s3://b/x".into(),
                local_path: "in/x".into(),
            }],
        };
        let json = serde_json::to_string(&datum).unwrap();
        assert_eq!(
            json,
            r#"{"files":[{"uri":"s3://b/x","local_path":"in/x"}]}"#
        );
        assert_eq!(serde_json::from_str::<PlannedDatum>(&json).unwrap(), datum);
    }
}
