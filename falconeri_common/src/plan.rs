//! Expanding a spec's inputs into datums, given a listing of each atom.
//! Pure: listing storage is the caller's job.
//!
//! Globs decide which files of an atom make which datum ([`crate::glob`]).
//! `join` and `group` work on [`KeyedFile`]s: each matched file with the
//! key its atom's `join_on` or `group_by` makes of the glob's capture
//! groups. Sorted by key, they go through a [`KeyedCombiner`], which holds
//! the files of one key at a time; sorting is the caller's (in memory here,
//! on disk in falconerid when the listings are large).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    fingerprint::DatumKeys,
    glob::{GlobMatch, GlobMatcher, KeyTemplate},
    pipeline::{AtomInput, Input, check_repo_name},
};

/// One object found by listing an atom's URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Where the object can be downloaded from.
    pub uri: String,
    /// '/'-separated, relative to the atom URI, no leading '/'.
    pub relative_path: String,
    pub size: u64,
    /// What the store's listing says identifies this version of the object,
    /// besides its size (see [`crate::fingerprint`]): `etag:…` on S3,
    /// `md5:…` or `generation:…` with `crc32c:…` on GCS, `mtime:…` (in
    /// nanoseconds) for `file://`. Empty when the store said nothing.
    #[serde(default)]
    pub identity: String,
}

/// One file a worker downloads before processing a datum.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlannedFile {
    pub uri: String,
    /// Where the file goes under the worker's `pfs` directory:
    /// `<repo>/<relative_path>`.
    pub local_path: String,
    /// The object's size and store identity (`<size> <identity>`), for the
    /// datum's fingerprint; empty for files read back from the database
    /// (a retry), whose datums carry their old fingerprint instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
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
    #[error("repo `{repo}`: {reason}")]
    InvalidGlob { repo: String, reason: String },
    #[error(
        "{uri}: the listing is not in byte order at {relative_path:?}; falconeri plans \
         datums from sorted listings (S3 directory buckets do not list in order)"
    )]
    Unsorted { uri: String, relative_path: String },
}

/// Expands `input` into datums. `listings[i]` is the listing of
/// `input.atoms()[i]`, in any order.
///
/// Glob `/` makes an atom's whole listing one datum (none if it is empty);
/// `/*` makes one datum per top-level file or directory; other globs as
/// [`crate::glob`] says. `cross` combines one datum from each child, in
/// child order, the first child varying slowest; `union` concatenates its
/// children's datums; `join` and `group` are [`KeyedCombiner`]'s, in byte
/// order of their keys. Within an atom, datums and files are in byte order
/// of their paths, so the plan is deterministic.
///
/// This holds the whole plan in memory. Job start-up streams instead: it
/// walks [`plan_parts`], feeds each atom's listing page by page through an
/// [`AtomPlanner`], and draws a cross's datums one by one from
/// [`plan_cross`]. Both ways give the same datums in the same order.
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

/// One piece of an input that start-up plans on its own, in order: the
/// children of a top-level `union` one after another (nested unions
/// flattened), each atom streamed, each cross planned as a whole.
#[derive(Debug, Clone, Copy)]
pub enum PlanPart<'a> {
    /// Streamed: its listing is fed page by page to an [`AtomPlanner`].
    Atom(&'a AtomInput),
    /// The children of a cross: each child's listing is held whole (a
    /// cross needs every datum of a child once per datum of the others),
    /// but the product is drawn one datum at a time.
    Cross(&'a [Input]),
    /// The atoms of a join or group: each listing is streamed into
    /// [`KeyedFile`]s, which the caller sorts by key (on disk if need be)
    /// and feeds to a [`KeyedCombiner`].
    Keyed(KeyedKind, &'a [Input]),
}

impl PlanPart<'_> {
    /// The atoms whose listings this part needs, in [`Input::atoms`] order.
    pub fn atoms(&self) -> Vec<&AtomInput> {
        match self {
            PlanPart::Atom(atom) => vec![*atom],
            PlanPart::Cross(children) | PlanPart::Keyed(_, children) => {
                children.iter().flat_map(Input::atoms).collect()
            }
        }
    }
}

/// `input` split into the parts start-up plans in turn; their datums,
/// concatenated, are [`plan_datums`]'s.
pub fn plan_parts(input: &Input) -> Vec<PlanPart<'_>> {
    fn walk<'a>(input: &'a Input, parts: &mut Vec<PlanPart<'a>>) {
        match input {
            Input::Atom(atom) => parts.push(PlanPart::Atom(atom)),
            Input::Union(children) => children.iter().for_each(|child| walk(child, parts)),
            Input::Cross(children) => parts.push(PlanPart::Cross(children)),
            Input::Join(children) => parts.push(PlanPart::Keyed(KeyedKind::Join, children)),
            Input::Group(children) => parts.push(PlanPart::Keyed(KeyedKind::Group, children)),
        }
    }
    let mut parts = Vec::new();
    walk(input, &mut parts);
    parts
}

/// The datums of a cross of `children`, drawn lazily. `listings` are the
/// listings of the children's atoms, in [`Input::atoms`] order.
pub fn plan_cross(
    children: &[Input],
    listings: &[Vec<ObjectInfo>],
) -> Result<CrossProduct, PlanError> {
    check_distinct_repos(children)?;
    let mut planner = Planner { listings, next: 0 };
    // Plan every child before combining, so every listing is checked even
    // when an earlier child is empty.
    let planned = children
        .iter()
        .map(|child| planner.plan(child))
        .collect::<Result<Vec<_>, _>>()?;
    if planner.next != listings.len() {
        return Err(PlanError::ListingCount {
            expected: planner.next,
            actual: listings.len(),
        });
    }
    CrossProduct::new(planned)
}

/// Walks the input tree, handing out listings in [`Input::atoms`] order.
struct Planner<'a> {
    listings: &'a [Vec<ObjectInfo>],
    next: usize,
}

/// The datums of a join or group whose files all fit in memory.
fn combine_in_memory(
    kind: KeyedKind,
    atoms: &[&AtomInput],
    mut files: Vec<KeyedFile>,
) -> Result<Vec<PlannedDatum>, PlanError> {
    files.sort();
    let mut combiner = KeyedCombiner::new(kind, atoms);
    let mut datums = Vec::new();
    for file in files {
        combiner.push(file, &mut datums)?;
    }
    combiner.finish(&mut datums)?;
    Ok(datums)
}

impl<'l> Planner<'l> {
    /// The next atom's listing, sorted by path.
    fn next_listing(&mut self) -> Result<Vec<&'l ObjectInfo>, PlanError> {
        // `plan_datums` checked the count, so this only fails if the walk
        // order ever drifts from `Input::atoms`.
        let listing = self
            .listings
            .get(self.next)
            .ok_or_else(|| PlanError::ListingCount {
                expected: self.next + 1,
                actual: self.listings.len(),
            })?;
        self.next += 1;
        let mut sorted: Vec<&ObjectInfo> = listing.iter().collect();
        sorted.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
        Ok(sorted)
    }

    fn plan(&mut self, input: &Input) -> Result<Vec<PlannedDatum>, PlanError> {
        match input {
            Input::Atom(atom) => {
                let sorted = self.next_listing()?;
                let mut planner = AtomPlanner::new(atom)?;
                let mut items = Vec::new();
                for object in sorted {
                    planner.push(object, &mut items)?;
                }
                Ok(collect_datums(items))
            }
            Input::Join(inputs) | Input::Group(inputs) => {
                let kind = if matches!(input, Input::Join(_)) {
                    KeyedKind::Join
                } else {
                    KeyedKind::Group
                };
                check_distinct_repos(inputs)?;
                let part = PlanPart::Keyed(kind, inputs);
                let atoms = part.atoms();
                let mut files = Vec::new();
                for (index, atom) in atoms.iter().enumerate() {
                    let sorted = self.next_listing()?;
                    let mut planner = AtomPlanner::new(atom)?.keyed(index)?;
                    for object in sorted {
                        planner.push_keyed(object, &mut files)?;
                    }
                }
                combine_in_memory(kind, &atoms, files)
            }
            Input::Union(inputs) => {
                let mut datums = Vec::new();
                for child in inputs {
                    datums.extend(self.plan(child)?);
                }
                Ok(datums)
            }
            Input::Cross(inputs) => {
                let count = PlanPart::Cross(inputs).atoms().len();
                let listings =
                    self.listings
                        .get(self.next..self.next + count)
                        .ok_or_else(|| PlanError::ListingCount {
                            expected: self.next + count,
                            actual: self.listings.len(),
                        })?;
                self.next += count;
                Ok(plan_cross(inputs, listings)?.collect())
            }
        }
    }
}

/// What planning emits, in order: `Datum` opens a datum, and the `File`s
/// after it, up to the next `Datum`, are its files. A datum of a whole
/// 100,000-object prefix thus never has to exist as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanItem {
    Datum,
    File(PlannedFile),
}

/// Gathers [`PlanItem`]s into whole datums.
pub fn collect_datums(items: impl IntoIterator<Item = PlanItem>) -> Vec<PlannedDatum> {
    let mut batch = DatumBatch::default();
    items.into_iter().for_each(|item| batch.push(item));
    // Planners open a datum before its first file; files before any datum
    // would make one of their own.
    if !batch.continued.is_empty() {
        batch.datums.insert(
            0,
            PlannedDatum {
                files: batch.continued,
            },
        );
    }
    batch.datums
}

/// A slice of a streamed plan, as it goes to the database in one
/// transaction (`Job::append_datums`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DatumBatch {
    /// More files of the last datum of the batch before: a datum's files
    /// may span batches.
    pub continued: Vec<PlannedFile>,
    /// New datums, in order. The last one may continue in the next batch.
    pub datums: Vec<PlannedDatum>,
    /// The fingerprints of `datums`, by position, where known: a datum
    /// whose files may continue in the next batch has none yet (nor has a
    /// datum beyond the end of this list).
    pub keys: Vec<Option<DatumKeys>>,
    /// The fingerprint of the last datum of the batch before, which this
    /// batch's `continued` files (if any) completed.
    pub continued_keys: Option<DatumKeys>,
    /// What the planner already matched (an incremental job's previous
    /// run, read in order: `models::PreviousRun`): for `datums`, by
    /// position like `keys`, the datum that ran with the same fingerprint
    /// and its job; `Job::append_datums` looks up only the others. By
    /// position rather than by fingerprint, so a matched datum costs no
    /// copy of its fingerprint and no hashing of it.
    pub known: Vec<Option<(i64, i64)>>,
    /// The same for `continued_keys`.
    pub continued_known: Option<(i64, i64)>,
}

impl DatumBatch {
    /// Adds the next item of a streamed plan: a file before any new datum
    /// of this batch belongs to the last datum of the batch before.
    pub fn push(&mut self, item: PlanItem) {
        match item {
            PlanItem::Datum => self.datums.push(PlannedDatum { files: Vec::new() }),
            PlanItem::File(file) => match self.datums.last_mut() {
                Some(datum) => datum.files.push(file),
                None => self.continued.push(file),
            },
        }
    }

    /// True when the batch would add nothing.
    pub fn is_empty(&self) -> bool {
        self.continued.is_empty() && self.datums.is_empty() && self.continued_keys.is_none()
    }
}

/// Plans one atom from its listing in byte order of relative path, one
/// object at a time, remembering only the last path and the files that are
/// string prefixes of it. It checks what [`plan_datums`] checks: safe
/// paths, no path twice, no path that is both a file and a directory; and
/// that the listing really is sorted, since grouping files into datums
/// depends on it (all paths under a matched directory are contiguous in
/// byte order). Files the glob does not match are checked, then skipped.
#[derive(Debug)]
pub struct AtomPlanner<'a> {
    atom: &'a AtomInput,
    matcher: GlobMatcher,
    /// For a join or group: the atom's place among its siblings and its key
    /// template.
    keyed: Option<(u32, KeyTemplate)>,
    /// The last path seen, then the earlier ones that are string prefixes
    /// of it, longest last: only these can turn out to be directories of a
    /// later path (in byte order, anything after the last path that starts
    /// with such a path also starts with it as a string).
    prefix_files: Vec<String>,
    /// The root of the open datum ("" once the one datum of `/` is open).
    open: Option<String>,
}

impl<'a> AtomPlanner<'a> {
    /// A planner for `atom`, whose repo name and glob are checked here.
    pub fn new(atom: &'a AtomInput) -> Result<Self, PlanError> {
        check_repo_name(&atom.repo).map_err(|reason| PlanError::InvalidRepo {
            repo: atom.repo.clone(),
            reason,
        })?;
        let matcher = atom
            .glob
            .matcher()
            .map_err(|reason| PlanError::InvalidGlob {
                repo: atom.repo.clone(),
                reason,
            })?;
        Ok(AtomPlanner {
            atom,
            matcher,
            keyed: None,
            prefix_files: Vec::new(),
            open: None,
        })
    }

    /// Makes this the planner of the `index`th atom of a join or group,
    /// whose files [`Self::push_keyed`] turns into [`KeyedFile`]s.
    pub fn keyed(mut self, index: usize) -> Result<Self, PlanError> {
        let invalid = |reason: String| PlanError::InvalidGlob {
            repo: self.atom.repo.clone(),
            reason,
        };
        let template = self
            .atom
            .join_on
            .as_deref()
            .or(self.atom.group_by.as_deref())
            .ok_or_else(|| invalid("a join needs `join_on`, a group `group_by`".to_owned()))?;
        let template = KeyTemplate::parse(template).map_err(invalid)?;
        let index = u32::try_from(index).map_err(|_| PlanError::TooManyDatums)?;
        self.keyed = Some((index, template));
        Ok(self)
    }

    /// The part of the atom that needs listing: only paths starting with
    /// it can match the glob.
    pub fn list_prefix(&self) -> &str {
        self.matcher.list_prefix()
    }

    /// Plans the next object of the listing, appending to `out`.
    pub fn push(&mut self, object: &ObjectInfo, out: &mut Vec<PlanItem>) -> Result<(), PlanError> {
        let Some(matched) = self.check(object)? else {
            return Ok(());
        };
        if self.open.as_deref() != Some(matched.root) {
            self.open = Some(matched.root.to_owned());
            out.push(PlanItem::Datum);
        }
        out.push(PlanItem::File(self.planned_file(object)));
        Ok(())
    }

    /// Plans the next object of a join's or group's atom (see
    /// [`Self::keyed`]), appending its [`KeyedFile`] to `out`.
    pub fn push_keyed(
        &mut self,
        object: &ObjectInfo,
        out: &mut Vec<KeyedFile>,
    ) -> Result<(), PlanError> {
        let Some(matched) = self.check(object)? else {
            return Ok(());
        };
        let Some((input, template)) = &self.keyed else {
            return Err(PlanError::InvalidGlob {
                repo: self.atom.repo.clone(),
                reason: "planned as a join or group input without a key".to_owned(),
            });
        };
        out.push(KeyedFile {
            key: matched.key(template),
            input: *input,
            root: matched.root.to_owned(),
            file: self.planned_file(object),
        });
        Ok(())
    }

    fn planned_file(&self, object: &ObjectInfo) -> PlannedFile {
        PlannedFile {
            uri: object.uri.clone(),
            local_path: format!("{}/{}", self.atom.repo, object.relative_path),
            identity: format!("{} {}", object.size, object.identity),
        }
    }

    /// Checks the next object and says which datum it belongs to, if any.
    fn check<'o>(&mut self, object: &'o ObjectInfo) -> Result<Option<GlobMatch<'o>>, PlanError> {
        let path = object.relative_path.as_str();
        check_relative_path(path).map_err(|reason| PlanError::UnsafePath {
            uri: object.uri.clone(),
            relative_path: path.to_owned(),
            reason,
        })?;
        if let Some(last) = self.prefix_files.last() {
            match path.cmp(last.as_str()) {
                std::cmp::Ordering::Equal => {
                    return Err(PlanError::DuplicatePath {
                        uri: self.atom.uri.clone(),
                        relative_path: path.to_owned(),
                    });
                }
                std::cmp::Ordering::Less => {
                    return Err(PlanError::Unsorted {
                        uri: self.atom.uri.clone(),
                        relative_path: path.to_owned(),
                    });
                }
                std::cmp::Ordering::Greater => {}
            }
        }
        while self
            .prefix_files
            .last()
            .is_some_and(|file| !path.starts_with(file.as_str()))
        {
            self.prefix_files.pop();
        }
        // Each remaining file is a proper prefix of `path` (equal paths were
        // refused above); `path` lies under it if a '/' follows.
        if let Some(file) = self
            .prefix_files
            .iter()
            .find(|file| path.as_bytes().get(file.len()) == Some(&b'/'))
        {
            return Err(PlanError::FileAndDirectory {
                uri: self.atom.uri.clone(),
                relative_path: file.clone(),
            });
        }
        self.prefix_files.push(path.to_owned());
        Ok(self.matcher.datum_of(path))
    }
}

/// Whether a keyed part is a join or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyedKind {
    Join,
    Group,
}

/// One file of a join's or group's atom, with its key. The derived order
/// (key, then atom, then datum root, then file) is the order a
/// [`KeyedCombiner`] needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyedFile {
    /// What `join_on` or `group_by` made of the glob's capture groups.
    pub key: Vec<u8>,
    /// The atom's place in the join or group.
    pub input: u32,
    /// The glob match (datum root) the file belongs to within its atom.
    pub root: String,
    pub file: PlannedFile,
}

/// Turns [`KeyedFile`]s, sorted, into the datums of a join or group,
/// holding only the files of the current key.
///
/// A group makes one datum per key, with every file of every atom that has
/// that key. A join makes, per key, one datum per combination of one glob
/// match from each atom (the first atom varying slowest), when every atom
/// has the key; when some lack it, the atoms that have it are combined only
/// if one of them is `outer_join`, and otherwise the key makes nothing.
#[derive(Debug)]
pub struct KeyedCombiner {
    kind: KeyedKind,
    outer: Vec<bool>,
    key: Option<Vec<u8>>,
    /// The current key's glob matches, per atom: (root, files).
    matches: Vec<Vec<(String, Vec<PlannedFile>)>>,
}

impl KeyedCombiner {
    /// A combiner for the atoms of one join or group, in order.
    pub fn new(kind: KeyedKind, atoms: &[&AtomInput]) -> KeyedCombiner {
        KeyedCombiner {
            kind,
            outer: atoms.iter().map(|atom| atom.outer_join).collect(),
            key: None,
            matches: vec![Vec::new(); atoms.len()],
        }
    }

    /// Takes the next file in sorted order, appending the datums of the
    /// key before it once its key changes.
    pub fn push(&mut self, file: KeyedFile, out: &mut Vec<PlannedDatum>) -> Result<(), PlanError> {
        if self.key.as_ref() != Some(&file.key) {
            self.finish(out)?;
            self.key = Some(file.key);
        }
        let matches = usize::try_from(file.input)
            .ok()
            .and_then(|index| self.matches.get_mut(index))
            .ok_or(PlanError::ListingCount {
                expected: self.outer.len(),
                actual: file.input as usize + 1,
            })?;
        match matches.last_mut() {
            Some((root, files)) if *root == file.root => files.push(file.file),
            _ => matches.push((file.root, vec![file.file])),
        }
        Ok(())
    }

    /// Appends the datums of the last key.
    pub fn finish(&mut self, out: &mut Vec<PlannedDatum>) -> Result<(), PlanError> {
        if self.key.take().is_none() {
            return Ok(());
        }
        let matches = std::mem::replace(&mut self.matches, vec![Vec::new(); self.outer.len()]);
        match self.kind {
            KeyedKind::Group => out.push(PlannedDatum {
                files: matches
                    .into_iter()
                    .flatten()
                    .flat_map(|(_, files)| files)
                    .collect(),
            }),
            KeyedKind::Join => {
                let complete = matches.iter().all(|m| !m.is_empty());
                let outer_present = matches
                    .iter()
                    .zip(&self.outer)
                    .any(|(m, outer)| *outer && !m.is_empty());
                if !(complete || outer_present) {
                    return Ok(());
                }
                let children: Vec<Vec<PlannedDatum>> = matches
                    .into_iter()
                    .filter(|m| !m.is_empty())
                    .map(|m| {
                        m.into_iter()
                            .map(|(_, files)| PlannedDatum { files })
                            .collect()
                    })
                    .collect();
                // A key's matches are few (one per atom, in the usual
                // join); their product is what the user asked for.
                out.extend(CrossProduct::new(children)?);
            }
        }
        Ok(())
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

/// The datums of a cross, one combination at a time, the first child
/// varying slowest; nothing but the children is held.
#[derive(Debug)]
pub struct CrossProduct {
    children: Vec<Vec<PlannedDatum>>,
    /// The indexes of the next combination, or None when done.
    next: Option<Vec<usize>>,
    remaining: usize,
}

impl CrossProduct {
    fn new(children: Vec<Vec<PlannedDatum>>) -> Result<Self, PlanError> {
        if children.is_empty() || children.iter().any(Vec::is_empty) {
            return Ok(CrossProduct {
                children: Vec::new(),
                next: None,
                remaining: 0,
            });
        }
        let remaining = children
            .iter()
            .try_fold(1usize, |total, child| total.checked_mul(child.len()))
            .ok_or(PlanError::TooManyDatums)?;
        Ok(CrossProduct {
            next: Some(vec![0; children.len()]),
            children,
            remaining,
        })
    }

    /// How many datums are left to draw.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl Iterator for CrossProduct {
    type Item = PlannedDatum;

    fn next(&mut self) -> Option<PlannedDatum> {
        let indexes = self.next.as_mut()?;
        let files = indexes
            .iter()
            .zip(&self.children)
            .flat_map(|(&i, child)| child[i].files.iter().cloned())
            .collect();
        // Advance like an odometer, the last child turning fastest.
        let mut position = indexes.len();
        loop {
            if position == 0 {
                self.next = None;
                break;
            }
            position -= 1;
            indexes[position] += 1;
            if indexes[position] < self.children[position].len() {
                break;
            }
            indexes[position] = 0;
        }
        self.remaining = self.remaining.saturating_sub(1);
        Some(PlannedDatum { files })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
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
    use crate::pipeline::Glob;

    fn atom(uri: &str, repo: &str, glob: Glob) -> Input {
        Input::Atom(AtomInput::new(uri, repo, glob))
    }

    /// A listing of `base` (ending in '/') holding `paths`.
    fn listing(base: &str, paths: &[&str]) -> Vec<ObjectInfo> {
        paths
            .iter()
            .map(|path| ObjectInfo {
                uri: format!("{base}{path}"),
                relative_path: (*path).to_owned(),
                size: 1,
                identity: String::new(),
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
                        identity: "1 ".into(),
                    },
                    PlannedFile {
                        uri: "s3://b/in/a/b.txt".into(),
                        local_path: "in/a/b.txt".into(),
                        identity: "1 ".into(),
                    },
                    PlannedFile {
                        uri: "s3://b/in/z.txt".into(),
                        local_path: "in/z.txt".into(),
                        identity: "1 ".into(),
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
                identity: String::new(),
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

    /// Plans `input` the way start-up does: part by part, each atom's
    /// sorted listing fed in pages of `page` objects.
    fn plan_streaming(
        input: &Input,
        listings: &[Vec<ObjectInfo>],
        page: usize,
    ) -> Result<Vec<PlannedDatum>, PlanError> {
        let mut listings = listings.iter().cloned();
        let mut items = Vec::new();
        let mut datums = Vec::new();
        for part in plan_parts(input) {
            match part {
                PlanPart::Atom(atom) => {
                    let mut listing = listings.next().unwrap();
                    listing.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
                    let mut planner = AtomPlanner::new(atom)?;
                    for chunk in listing.chunks(page) {
                        for object in chunk {
                            planner.push(object, &mut items)?;
                        }
                    }
                    datums.extend(collect_datums(items.drain(..)));
                }
                PlanPart::Cross(children) => {
                    let needed: Vec<_> = listings.by_ref().take(part.atoms().len()).collect();
                    datums.extend(plan_cross(children, &needed)?);
                }
                PlanPart::Keyed(kind, _) => {
                    let atoms = part.atoms();
                    let mut files = Vec::new();
                    for (index, atom) in atoms.iter().enumerate() {
                        let mut listing = listings.next().unwrap();
                        listing.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
                        let mut planner = AtomPlanner::new(atom)?.keyed(index)?;
                        for object in &listing {
                            planner.push_keyed(object, &mut files)?;
                        }
                    }
                    datums.extend(combine_in_memory(kind, &atoms, files)?);
                }
            }
        }
        Ok(datums)
    }

    #[test]
    fn streaming_plans_equal_whole_plans() {
        let awkward = [
            "a", "a-b", "a.b/c", "ab", "b/x", "b/y/z", "b-", "c d", "z/1", "z/2", "é",
        ];
        let input = Input::Union(vec![
            atom("s3://b/x/", "x", Glob::TopLevelEntries),
            atom("s3://b/y/", "y", Glob::WholeRepo),
            Input::Union(vec![Input::Cross(vec![
                atom("s3://b/p/", "p", Glob::TopLevelEntries),
                atom("s3://b/q/", "q", Glob::TopLevelEntries),
            ])]),
        ]);
        let listings = vec![
            listing("s3://b/x/", &awkward),
            listing("s3://b/y/", &awkward),
            listing("s3://b/p/", &["1", "2/a", "2/b"]),
            listing("s3://b/q/", &["u", "v"]),
        ];
        let whole = plan_datums(&input, &listings).unwrap();
        assert_eq!(whole.len(), 9 + 1 + 4);
        for page in 1..=awkward.len() {
            assert_eq!(plan_streaming(&input, &listings, page).unwrap(), whole);
        }
    }

    #[test]
    fn top_level_datums_follow_byte_order() {
        // "a-b" < "a/x" in byte order, so the file comes before the directory.
        let input = atom("s3://b/in/", "in", Glob::TopLevelEntries);
        let datums = plan_datums(&input, &[listing("s3://b/in/", &["a/x", "a-b", "a/y"])]).unwrap();
        assert_eq!(
            local_paths(&datums),
            vec![vec!["in/a-b"], vec!["in/a/x", "in/a/y"]]
        );
    }

    fn top_level_atom() -> AtomInput {
        AtomInput::new("s3://b/in/", "in", Glob::TopLevelEntries)
    }

    /// One tree, planned with each glob: the datums, as their paths
    /// relative to the atom.
    #[test]
    fn what_each_glob_makes_datums_of() {
        let tree = [
            "2023-12-31.log",
            "2024-01-02.log",
            "2024-01-x.csv",
            "a.csv",
            "apple/core.txt",
            "b.txt",
            "bee/hive/honey.csv",
            "bee/wax.txt",
            "cat",
        ];
        let table: &[(&str, &[&[&str]])] = &[
            ("/", &[&tree]),
            (
                "/*",
                &[
                    &["2023-12-31.log"],
                    &["2024-01-02.log"],
                    &["2024-01-x.csv"],
                    &["a.csv"],
                    &["apple/core.txt"],
                    &["b.txt"],
                    &["bee/hive/honey.csv", "bee/wax.txt"],
                    &["cat"],
                ],
            ),
            (
                "/*/*",
                &[
                    &["apple/core.txt"],
                    &["bee/hive/honey.csv"],
                    &["bee/wax.txt"],
                ],
            ),
            (
                "/**",
                &[
                    &["2023-12-31.log"],
                    &["2024-01-02.log"],
                    &["2024-01-x.csv"],
                    &["a.csv"],
                    &["apple/core.txt"],
                    &["b.txt"],
                    &["bee/hive/honey.csv"],
                    &["bee/wax.txt"],
                    &["cat"],
                ],
            ),
            ("/*.csv", &[&["2024-01-x.csv"], &["a.csv"]]),
            (
                "/**/*.csv",
                &[&["2024-01-x.csv"], &["a.csv"], &["bee/hive/honey.csv"]],
            ),
            ("/2024-??-*", &[&["2024-01-02.log"], &["2024-01-x.csv"]]),
            (
                "/{a,b}*",
                &[
                    &["a.csv"],
                    &["apple/core.txt"],
                    &["b.txt"],
                    &["bee/hive/honey.csv", "bee/wax.txt"],
                ],
            ),
            ("/[ab]??", &[&["bee/hive/honey.csv", "bee/wax.txt"]]),
            (
                "/[!0-9a]*",
                &[&["b.txt"], &["bee/hive/honey.csv", "bee/wax.txt"], &["cat"]],
            ),
            ("/bee/*", &[&["bee/hive/honey.csv"], &["bee/wax.txt"]]),
            ("/nothing*", &[]),
        ];
        let objects = listing("s3://b/in/", &tree);
        for (glob, expected) in table {
            let input = atom("s3://b/in/", "in", Glob::from(*glob));
            let datums = plan_datums(&input, std::slice::from_ref(&objects)).unwrap();
            let got: Vec<Vec<&str>> = datums
                .iter()
                .map(|d| {
                    d.files
                        .iter()
                        .map(|f| f.local_path.strip_prefix("in/").unwrap())
                        .collect()
                })
                .collect();
            let expected: Vec<Vec<&str>> = expected.iter().map(|d| d.to_vec()).collect();
            assert_eq!(got, expected, "glob {glob}");
            // Streaming gives the same datums, page by page.
            for page in [1, 3] {
                assert_eq!(
                    plan_streaming(&input, std::slice::from_ref(&objects), page).unwrap(),
                    datums,
                    "glob {glob}, pages of {page}"
                );
            }
        }
    }

    #[test]
    fn bad_globs_are_refused_by_the_planner() {
        let input = atom("s3://b/in/", "in", Glob::from("/(*"));
        let err = plan_datums(&input, &[listing("s3://b/in/", &["a"])]).unwrap_err();
        assert!(matches!(err, PlanError::InvalidGlob { .. }), "{err}");
    }

    fn keyed_atom(uri: &str, repo: &str, glob: &str, key: &str, outer: bool) -> Input {
        let mut atom = AtomInput::new(uri, repo, Glob::from(glob));
        atom.join_on = Some(key.to_owned());
        atom.outer_join = outer;
        Input::Atom(atom)
    }

    fn group_atom(uri: &str, repo: &str, glob: &str, key: &str) -> Input {
        let mut atom = AtomInput::new(uri, repo, Glob::from(glob));
        atom.group_by = Some(key.to_owned());
        Input::Atom(atom)
    }

    /// Two inputs, readings and parts, joined on the number in their names.
    fn join_of(outer: (bool, bool)) -> Vec<Vec<String>> {
        let input = Input::Join(vec![
            keyed_atom("s3://b/r/", "readings", "/ID(*).txt", "$1", outer.0),
            keyed_atom("s3://b/p/", "parts", "/*/part-(*).csv", "$1", outer.1),
        ]);
        let listings = [
            listing("s3://b/r/", &["ID1.txt", "ID2.txt", "ID4.txt", "other.txt"]),
            listing(
                "s3://b/p/",
                &[
                    "x/part-1.csv",
                    "y/part-1.csv",
                    "x/part-3.csv",
                    "x/part-4.csv",
                ],
            ),
        ];
        let datums = plan_datums(&input, &listings).unwrap();
        local_paths(&datums)
            .into_iter()
            .map(|d| d.into_iter().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn inner_join_keeps_only_matches() {
        assert_eq!(
            join_of((false, false)),
            vec![
                // Key 1 matches twice in parts: one datum each.
                vec!["readings/ID1.txt", "parts/x/part-1.csv"],
                vec!["readings/ID1.txt", "parts/y/part-1.csv"],
                vec!["readings/ID4.txt", "parts/x/part-4.csv"],
            ]
        );
    }

    #[test]
    fn outer_join_keeps_the_outer_inputs_unmatched_datums() {
        assert_eq!(
            join_of((true, false)),
            vec![
                vec!["readings/ID1.txt", "parts/x/part-1.csv"],
                vec!["readings/ID1.txt", "parts/y/part-1.csv"],
                vec!["readings/ID2.txt"],
                vec!["readings/ID4.txt", "parts/x/part-4.csv"],
            ]
        );
        assert_eq!(
            join_of((true, true)),
            vec![
                vec!["readings/ID1.txt", "parts/x/part-1.csv"],
                vec!["readings/ID1.txt", "parts/y/part-1.csv"],
                vec!["readings/ID2.txt"],
                vec!["parts/x/part-3.csv"],
                vec!["readings/ID4.txt", "parts/x/part-4.csv"],
            ]
        );
    }

    #[test]
    fn a_join_without_matches_has_no_datums() {
        let input = Input::Join(vec![
            keyed_atom("s3://b/r/", "r", "/(*).txt", "$1", false),
            keyed_atom("s3://b/p/", "p", "/(*).csv", "$1", false),
        ]);
        let listings = [
            listing("s3://b/r/", &["a.txt"]),
            listing("s3://b/p/", &["b.csv"]),
        ];
        assert_eq!(plan_datums(&input, &listings).unwrap(), vec![]);
    }

    #[test]
    fn join_keys_combine_several_groups() {
        // `$2$1` on one side matches `$1$2` on the other.
        let input = Input::Join(vec![
            keyed_atom("s3://b/r/", "r", "/(*)-(*).txt", "$2/$1", false),
            keyed_atom("s3://b/p/", "p", "/(*)/(*).csv", "$1/$2", false),
        ]);
        let listings = [
            listing("s3://b/r/", &["a-b.txt", "c-d.txt"]),
            listing("s3://b/p/", &["b/a.csv", "c/d.csv"]),
        ];
        assert_eq!(
            local_paths(&plan_datums(&input, &listings).unwrap()),
            vec![vec!["r/a-b.txt", "p/b/a.csv"]]
        );
    }

    #[test]
    fn group_gathers_every_input_by_key() {
        let input = Input::Group(vec![
            group_atom("s3://b/r/", "r", "/*-(*).txt", "$1"),
            group_atom("s3://b/p/", "p", "/(*)/*", "$1"),
        ]);
        let listings = [
            listing("s3://b/r/", &["1-a.txt", "2-a.txt", "1-b.txt", "9-z.txt"]),
            listing("s3://b/p/", &["a/x", "a/y/z", "b/x", "c/x"]),
        ];
        assert_eq!(
            local_paths(&plan_datums(&input, &listings).unwrap()),
            vec![
                vec!["r/1-a.txt", "r/2-a.txt", "p/a/x", "p/a/y/z"],
                vec!["r/1-b.txt", "p/b/x"],
                vec!["p/c/x"],
                vec!["r/9-z.txt"],
            ]
        );
        // One input grouped alone.
        let input = Input::Group(vec![group_atom("s3://b/r/", "r", "/*-(*).txt", "$1")]);
        assert_eq!(
            local_paths(&plan_datums(&input, &listings[..1]).unwrap()),
            vec![
                vec!["r/1-a.txt", "r/2-a.txt"],
                vec!["r/1-b.txt"],
                vec!["r/9-z.txt"]
            ]
        );
    }

    #[test]
    fn joins_combine_with_cross_and_union() {
        let input = Input::Union(vec![
            Input::Cross(vec![
                atom("s3://b/c/", "c", Glob::WholeRepo),
                Input::Join(vec![
                    keyed_atom("s3://b/r/", "r", "/(*).txt", "$1", false),
                    keyed_atom("s3://b/p/", "p", "/(*).csv", "$1", false),
                ]),
            ]),
            Input::Group(vec![group_atom("s3://b/g/", "g", "/(?)*", "$1")]),
        ]);
        let listings = [
            listing("s3://b/c/", &["conf"]),
            listing("s3://b/r/", &["a.txt", "b.txt"]),
            listing("s3://b/p/", &["a.csv", "b.csv"]),
            listing("s3://b/g/", &["xa", "xb", "y"]),
        ];
        let whole = plan_datums(&input, &listings).unwrap();
        assert_eq!(
            local_paths(&whole),
            vec![
                vec!["c/conf", "r/a.txt", "p/a.csv"],
                vec!["c/conf", "r/b.txt", "p/b.csv"],
                vec!["g/xa", "g/xb"],
                vec!["g/y"],
            ]
        );
        assert_eq!(plan_streaming(&input, &listings, 1).unwrap(), whole);
    }

    #[test]
    fn atom_planner_refuses_unsorted_listings() {
        let atom_input = top_level_atom();
        let mut planner = AtomPlanner::new(&atom_input).unwrap();
        let mut items = Vec::new();
        let objects = listing("s3://b/in/", &["b", "a"]);
        planner.push(&objects[0], &mut items).unwrap();
        let err = planner.push(&objects[1], &mut items).unwrap_err();
        assert_eq!(
            err,
            PlanError::Unsorted {
                uri: "s3://b/in/".into(),
                relative_path: "a".into()
            }
        );
    }

    /// The planner keeps a path's file ancestors, never the whole listing:
    /// a flat listing of 10,000 files leaves one remembered path, and a
    /// conflict found 10,000 objects later is still caught.
    #[test]
    fn atom_planner_memory_is_bounded_by_depth() {
        let atom_input = top_level_atom();
        let mut planner = AtomPlanner::new(&atom_input).unwrap();
        let mut items = Vec::new();
        let mut paths: Vec<String> = vec!["d".into()];
        paths.extend((0..10_000).map(|i| format!("d-{i:05}")));
        paths.push("d/late".into());
        let objects: Vec<ObjectInfo> = paths
            .iter()
            .map(|p| ObjectInfo {
                uri: format!("s3://b/in/{p}"),
                relative_path: p.clone(),
                size: 0,
                identity: String::new(),
            })
            .collect();
        for object in &objects[..objects.len() - 1] {
            planner.push(object, &mut items).unwrap();
            assert!(
                planner.prefix_files.len() <= 2,
                "{:?}",
                planner.prefix_files
            );
            items.clear();
        }
        let err = planner
            .push(&objects[objects.len() - 1], &mut items)
            .unwrap_err();
        assert_eq!(
            err,
            PlanError::FileAndDirectory {
                uri: "s3://b/in/".into(),
                relative_path: "d".into()
            }
        );
    }

    #[test]
    fn cross_products_are_drawn_lazily() {
        let children = vec![
            atom("s3://b/x/", "x", Glob::TopLevelEntries),
            atom("s3://b/y/", "y", Glob::TopLevelEntries),
        ];
        let names: Vec<String> = (0..1000).map(|i| format!("{i:04}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let listings = [listing("s3://b/x/", &names), listing("s3://b/y/", &names)];
        let mut product = plan_cross(&children, &listings).unwrap();
        assert_eq!(product.remaining(), 1_000_000);
        let first = product.next().unwrap();
        assert_eq!(
            first
                .files
                .iter()
                .map(|f| f.local_path.as_str())
                .collect::<Vec<_>>(),
            ["x/0000", "y/0000"]
        );
        assert_eq!(product.nth(999).unwrap().files[0].local_path, "x/0001");
        assert_eq!(product.remaining(), 1_000_000 - 1001);
        assert!(plan_cross(&children, &listings[..1]).is_err());
    }

    #[test]
    fn plan_parts_flatten_unions_and_keep_crosses() {
        let input = Input::Union(vec![
            atom("s3://b/x/", "x", Glob::WholeRepo),
            Input::Union(vec![atom("s3://b/y/", "y", Glob::WholeRepo)]),
            Input::Cross(vec![
                atom("s3://b/p/", "p", Glob::WholeRepo),
                Input::Union(vec![atom("s3://b/q/", "q", Glob::WholeRepo)]),
            ]),
        ]);
        let parts = plan_parts(&input);
        let shapes: Vec<Vec<&str>> = parts
            .iter()
            .map(|part| part.atoms().iter().map(|a| a.repo.as_str()).collect())
            .collect();
        assert_eq!(shapes, vec![vec!["x"], vec!["y"], vec!["p", "q"]]);
        assert!(matches!(parts[2], PlanPart::Cross(_)));
    }

    #[test]
    fn planned_datums_serialize() {
        let datum = PlannedDatum {
            files: vec![PlannedFile {
                uri: "s3://b/x".into(),
                local_path: "in/x".into(),
                identity: String::new(),
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
