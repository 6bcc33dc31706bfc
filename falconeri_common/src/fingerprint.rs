//! Datum fingerprints, for incremental runs: what a datum's result depends
//! on, hashed, so a later job of the same pipeline can tell that a datum
//! would compute what an earlier one already did.
//!
//! A datum's **fingerprint** is SHA-256 over a length-prefixed encoding of:
//! - a version tag, so a change to this encoding reruns everything once
//!   rather than matching wrongly;
//! - the transform: `cmd` (in order: arguments are positional), `image`,
//!   `env` (by name: a map, so order cannot matter), and each secret's
//!   reference (`name` plus `mount_path`, or `key` and `env_var`), sorted,
//!   never a value (falconeri never reads one; rotating a secret's value
//!   does not rerun);
//! - the egress URI: the earlier datum's outputs are in its egress, so a job
//!   writing elsewhere must run again to have them;
//! - each input file in planning order: its URI, its local path (the name
//!   the command sees), and its identity (size plus what the store's
//!   listing says about its version: S3 ETag, GCS MD5 or generation with
//!   CRC32C, `file://` modification time).
//!
//! Left out on purpose: resources, parallelism, tries, timeouts, node
//! selectors, tolerations, the service account, the image pull policy and
//! the pipeline name (matches are only looked for within one pipeline
//! anyway). They change how a datum runs, not what it computes.
//!
//! Files are hashed in the order planning gives them, which depends only on
//! the spec and the paths (byte order within an input, inputs in spec
//! order), never on the order a store answered in, so hashing can stream a
//! datum of any size. Reordering a cross's inputs changes the fingerprints:
//! a rerun, the safe side.
//!
//! A datum's **input key** is the same walk over the file URIs and local
//! paths alone: which datum this is, whatever its contents. It finds the
//! datums of the previous run whose inputs are gone (see
//! `Job::vanished`). A datum whose set of files changed (a file added to a
//! directory datum) thus has a new input key: the old one counts as gone.

use sha2::{Digest, Sha256};

use crate::{
    pipeline::{PipelineSpec, Secret},
    plan::PlannedFile,
};

/// Bumped whenever what goes into a fingerprint changes.
const VERSION: &[u8] = b"falconeri datum fingerprint v1";

/// The part of every datum's fingerprint that comes from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformFingerprint([u8; 32]);

impl TransformFingerprint {
    /// Hashes what of `spec` decides a datum's result (see the module doc).
    pub fn of(spec: &PipelineSpec) -> TransformFingerprint {
        let mut hash = Sha256::new();
        put(&mut hash, VERSION);
        let transform = &spec.transform;
        put_count(&mut hash, transform.cmd.len());
        for arg in &transform.cmd {
            put(&mut hash, arg.as_bytes());
        }
        put(&mut hash, transform.image.as_bytes());
        // A BTreeMap iterates in key order.
        put_count(&mut hash, transform.env.len());
        for (name, value) in &transform.env {
            put(&mut hash, name.as_bytes());
            put(&mut hash, value.as_bytes());
        }
        let mut secrets: Vec<[&str; 4]> = transform
            .secrets
            .iter()
            .map(|secret| match secret {
                Secret::Mount { name, mount_path } => ["mount", name, mount_path, ""],
                Secret::Env {
                    name, key, env_var, ..
                } => ["env", name, key, env_var],
            })
            .collect();
        secrets.sort_unstable();
        put_count(&mut hash, secrets.len());
        for fields in secrets {
            for field in fields {
                put(&mut hash, field.as_bytes());
            }
        }
        put(&mut hash, spec.egress.uri.as_bytes());
        TransformFingerprint(hash.finalize().into())
    }
}

/// A datum's fingerprint and input key, as lowercase hex (64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatumKeys {
    pub fingerprint: String,
    pub input_key: String,
}

/// `digest` in lower-case hex, as `hex::encode` spells it, but through a
/// buffer on the stack instead of a `char` at a time (planning spells two
/// digests per datum; that was a fifth of the planner thread's samples in
/// `bench/incremental`).
fn lower_hex(digest: &[u8]) -> String {
    let mut buf = [0; 64];
    let Some(out) = buf.get_mut(..digest.len() * 2) else {
        return hex::encode(digest);
    };
    match hex::encode_to_slice(digest, out) {
        Ok(()) => String::from_utf8(out.to_vec()).unwrap_or_else(|_| hex::encode(digest)),
        Err(_) => hex::encode(digest),
    }
}

/// Hashes one datum's files as they stream by, holding nothing but the two
/// hash states.
#[derive(Debug, Clone)]
pub struct DatumHasher {
    fingerprint: Sha256,
    input_key: Sha256,
}

impl DatumHasher {
    /// A hasher for a datum of the transform `transform`.
    pub fn new(transform: &TransformFingerprint) -> DatumHasher {
        let mut fingerprint = Sha256::new();
        put(&mut fingerprint, &transform.0);
        let mut input_key = Sha256::new();
        put(&mut input_key, VERSION);
        DatumHasher {
            fingerprint,
            input_key,
        }
    }

    /// Adds the datum's next file.
    pub fn add(&mut self, file: &PlannedFile) {
        for hash in [&mut self.fingerprint, &mut self.input_key] {
            put(hash, file.uri.as_bytes());
            put(hash, file.local_path.as_bytes());
        }
        put(&mut self.fingerprint, file.identity.as_bytes());
    }

    /// The datum's keys, once its last file was added.
    pub fn finish(self) -> DatumKeys {
        DatumKeys {
            fingerprint: lower_hex(&self.fingerprint.finalize()),
            input_key: lower_hex(&self.input_key.finalize()),
        }
    }

    /// The keys of a datum whose files are all at hand.
    pub fn of(transform: &TransformFingerprint, files: &[PlannedFile]) -> DatumKeys {
        let mut hasher = DatumHasher::new(transform);
        files.iter().for_each(|file| hasher.add(file));
        hasher.finish()
    }
}

/// Writes `bytes` with its length first, so no two sequences of fields
/// encode alike (`["ab", "c"]` and `["a", "bc"]` differ).
fn put(hash: &mut Sha256, bytes: &[u8]) {
    put_count(hash, bytes.len());
    hash.update(bytes);
}

fn put_count(hash: &mut Sha256, n: usize) {
    hash.update(u64::try_from(n).unwrap_or(u64::MAX).to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        pipeline::Input,
        plan::{ObjectInfo, plan_datums},
    };

    fn spec() -> PipelineSpec {
        PipelineSpec::from_json(
            r#"{
                "pipeline": {"name": "p"},
                "transform": {
                    "cmd": ["sh", "-c", "wc -l /pfs/in/*"],
                    "image": "alpine:3",
                    "env": {"A": "1", "B": "2"},
                    "secrets": [
                        {"name": "s1", "mount_path": "/s1"},
                        {"name": "s2", "key": "k", "env_var": "TOKEN"}
                    ]
                },
                "parallelism_spec": {"constant": 1},
                "resource_requests": {"memory": "1Gi", "cpu": 1},
                "input": {"atom": {"URI": "s3://b/in/", "repo": "in", "glob": "/*"}},
                "egress": {"URI": "s3://b/out/"}
            }"#,
        )
        .unwrap()
    }

    /// Fingerprints already stored were spelled by `hex::encode`; the
    /// faster spelling must match it byte for byte, or no rerun would
    /// match anything.
    #[test]
    fn digests_are_spelled_as_hex_encode_spells_them() {
        let every_byte: Vec<u8> = (0..=255).collect();
        for digest in every_byte.chunks(32) {
            assert_eq!(lower_hex(digest), hex::encode(digest));
        }
        let keys = DatumHasher::new(&TransformFingerprint::of(&spec())).finish();
        assert_eq!(keys.fingerprint.len(), 64);
        assert_eq!(keys.fingerprint, keys.fingerprint.to_lowercase());
        // Longer than a digest: still right, through the slow path.
        assert_eq!(lower_hex(&every_byte), hex::encode(&every_byte));
    }

    fn file(name: &str, identity: &str) -> PlannedFile {
        PlannedFile {
            uri: format!("s3://b/in/{name}"),
            local_path: format!("in/{name}"),
            identity: identity.to_owned(),
        }
    }

    /// A named change to a spec.
    type Change = (&'static str, Box<dyn Fn(&mut PipelineSpec)>);

    fn keys(spec: &PipelineSpec, files: &[PlannedFile]) -> DatumKeys {
        DatumHasher::of(&TransformFingerprint::of(spec), files)
    }

    /// Every change to what a datum computes from changes the fingerprint;
    /// nothing else does.
    #[test]
    fn the_fingerprint_changes_with_what_the_result_depends_on() {
        let files = [file("a", "3 etag:1"), file("b", "4 etag:2")];
        let base = keys(&spec(), &files);
        assert_eq!(base, keys(&spec(), &files), "stable");
        assert_eq!(base.fingerprint.len(), 64);

        let changed: Vec<Change> = vec![
            ("cmd", Box::new(|s| s.transform.cmd[2].push('x'))),
            (
                "cmd split",
                Box::new(|s| s.transform.cmd = vec!["sh -c".into(), "x".into()]),
            ),
            ("image", Box::new(|s| s.transform.image = "alpine:4".into())),
            (
                "env value",
                Box::new(|s| {
                    s.transform.env.insert("A".into(), "9".into());
                }),
            ),
            (
                "env name",
                Box::new(|s| {
                    s.transform.env.insert("C".into(), "1".into());
                }),
            ),
            (
                "secret name",
                Box::new(|s| {
                    s.transform.secrets[0] = Secret::Mount {
                        name: "other".into(),
                        mount_path: "/s1".into(),
                    };
                }),
            ),
            (
                "secret variable",
                Box::new(|s| {
                    if let Secret::Env { env_var, .. } = &mut s.transform.secrets[1] {
                        *env_var = "OTHER".into();
                    }
                }),
            ),
            ("egress", Box::new(|s| s.egress.uri = "s3://b/out2/".into())),
        ];
        for (what, change) in changed {
            let mut spec = spec();
            change(&mut spec);
            assert_ne!(base.fingerprint, keys(&spec, &files).fingerprint, "{what}");
            assert_eq!(base.input_key, keys(&spec, &files).input_key, "{what}");
        }

        let unchanged: Vec<Change> = vec![
            ("parallelism", Box::new(|s| s.parallelism_spec.constant = 9)),
            ("tries", Box::new(|s| s.datum_tries = 5)),
            ("secret order", Box::new(|s| s.transform.secrets.reverse())),
            (
                "secret optional",
                Box::new(|s| {
                    if let Secret::Env { optional, .. } = &mut s.transform.secrets[1] {
                        *optional = true;
                    }
                }),
            ),
            ("name", Box::new(|s| s.pipeline.name = "q".into())),
        ];
        for (what, change) in unchanged {
            let mut spec = spec();
            change(&mut spec);
            assert_eq!(base, keys(&spec, &files), "{what}");
        }
    }

    #[test]
    fn the_fingerprint_changes_with_each_file_identity_and_name() {
        let spec = spec();
        let files = [file("a", "3 etag:1"), file("b", "4 etag:2")];
        let base = keys(&spec, &files);
        let modified = [file("a", "3 etag:1"), file("b", "4 etag:3")];
        let grown = [file("a", "3 etag:1"), file("b", "5 etag:2")];
        for other in [&modified, &grown] {
            let other = keys(&spec, other);
            assert_ne!(base.fingerprint, other.fingerprint);
            assert_eq!(base.input_key, other.input_key, "the same files");
        }
        let renamed = [file("a", "3 etag:1"), file("c", "4 etag:2")];
        let fewer = [file("a", "3 etag:1")];
        let swapped = [file("b", "4 etag:2"), file("a", "3 etag:1")];
        // Fields are length-prefixed: moving bytes between them shows.
        let shifted = [
            PlannedFile {
                uri: "s3://b/in/a3".into(),
                local_path: "in/a".into(),
                identity: " etag:1".into(),
            },
            file("b", "4 etag:2"),
        ];
        for other in [&renamed[..], &fewer, &swapped, &shifted] {
            let other = keys(&spec, other);
            assert_ne!(base.fingerprint, other.fingerprint);
            assert_ne!(base.input_key, other.input_key);
        }
    }

    /// The order a store lists in does not matter: planning puts files in
    /// byte order first, so both listings give the same datums and keys.
    #[test]
    fn listing_order_does_not_change_fingerprints() {
        let spec = spec();
        let input: Input = serde_json::from_value(serde_json::json!(
            {"atom": {"URI": "s3://b/in/", "repo": "in", "glob": "/"}}
        ))
        .unwrap();
        let object = |name: &str, identity: &str| ObjectInfo {
            uri: format!("s3://b/in/{name}"),
            relative_path: name.to_owned(),
            size: 1,
            identity: identity.to_owned(),
        };
        let listing = vec![object("a", "etag:1"), object("b/c", "etag:2")];
        let mut reversed = listing.clone();
        reversed.reverse();
        let transform = TransformFingerprint::of(&spec);
        let of = |listing: Vec<ObjectInfo>| {
            let datums = plan_datums(&input, &[listing]).unwrap();
            DatumHasher::of(&transform, &datums[0].files)
        };
        assert_eq!(of(listing.clone()), of(reversed));
        let mut touched = listing;
        touched[1].identity = "etag:9".into();
        let before = of(vec![object("a", "etag:1"), object("b/c", "etag:2")]);
        assert_ne!(before.fingerprint, of(touched).fingerprint);
    }

    /// Streaming the files one by one gives what hashing them at once does.
    #[test]
    fn streamed_and_whole_hashes_agree() {
        let transform = TransformFingerprint::of(&spec());
        let files = [file("a", "1 x"), file("b", "2 y")];
        let mut hasher = DatumHasher::new(&transform);
        for file in &files {
            hasher.add(file);
        }
        assert_eq!(hasher.finish(), DatumHasher::of(&transform, &files));
    }
}
