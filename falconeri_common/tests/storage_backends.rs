//! The S3 and GCS backends against real protocol servers: s3s-fs and
//! fake-gcs-server, started by `./scripts/test`. Every case runs on both;
//! glob semantics are also compared with `file://`.
//!
//! One test binary and one Tokio runtime for all cases: the backends keep
//! one client per process, whose connections belong to the runtime that
//! made them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    io::{Read, Write},
    path::Path,
    sync::LazyLock,
};

use futures::{StreamExt, TryStreamExt};

use falconeri_common::{
    api::{InputFileResponse, NewOutputFile},
    pipeline::{AtomInput, Glob, Input},
    plan::{AtomPlanner, ObjectInfo, PlanError, plan_datums},
    storage::{
        FileStorage, S3Storage, Storage, attempt_staging_uri, download_inputs, publish_outputs,
        storage_for, upload_outputs,
    },
};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
});

fn run<F: Future>(future: F) -> F::Output {
    RUNTIME.block_on(future)
}

/// Reads a variable `./scripts/test` sets; a storage test that silently
/// skipped would hide a broken backend.
fn required_env(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the storage tests through ./scripts/test, which starts {what}"
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    S3,
    Gcs,
}

/// A fresh bucket on one emulator, and raw access to it for seeding objects
/// the backend itself would never write.
struct Bucket {
    kind: Kind,
    name: String,
}

impl Bucket {
    async fn new(kind: Kind) -> Bucket {
        let name = format!("falconeri-test-{}", hex_suffix());
        match kind {
            Kind::S3 => {
                s3_client()
                    .await
                    .create_bucket()
                    .bucket(&name)
                    .send()
                    .await
                    .unwrap();
            }
            Kind::Gcs => {
                let response = http()
                    .post(format!("{}/storage/v1/b?project=test", gcs_endpoint()))
                    .json(&serde_json::json!({ "name": name }))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{response:?}");
            }
        }
        Bucket { kind, name }
    }

    fn uri(&self, key: &str) -> String {
        let scheme = match self.kind {
            Kind::S3 => "s3",
            Kind::Gcs => "gs",
        };
        format!("{scheme}://{}/{key}", self.name)
    }

    /// Stores `body` at `key` directly through the emulator's API.
    async fn put(&self, key: &str, body: &'static [u8]) {
        match self.kind {
            Kind::S3 => {
                s3_client()
                    .await
                    .put_object()
                    .bucket(&self.name)
                    .key(key)
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(body))
                    .send()
                    .await
                    .unwrap();
            }
            Kind::Gcs => {
                let response = http()
                    .post(format!(
                        "{}/upload/storage/v1/b/{}/o",
                        gcs_endpoint(),
                        self.name
                    ))
                    .query(&[("uploadType", "media"), ("name", key)])
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{response:?}");
            }
        }
    }

    fn storage(&self) -> std::sync::Arc<dyn Storage> {
        storage_for(&self.uri("")).unwrap()
    }
}

fn hex_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn gcs_endpoint() -> String {
    let endpoint = required_env("FALCONERI_TEST_GCS_ENDPOINT", "fake-gcs-server");
    let host = required_env("STORAGE_EMULATOR_HOST", "fake-gcs-server");
    assert!(
        endpoint.ends_with(&host),
        "STORAGE_EMULATOR_HOST ({host}) must point at FALCONERI_TEST_GCS_ENDPOINT ({endpoint})"
    );
    endpoint
}

/// One raw client for seeding, made once (like the backend's own).
async fn s3_client() -> aws_sdk_s3::Client {
    static CLIENT: tokio::sync::OnceCell<aws_sdk_s3::Client> = tokio::sync::OnceCell::const_new();
    CLIENT.get_or_init(new_s3_client).await.clone()
}

fn http() -> &'static reqwest::Client {
    static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(reqwest::Client::new);
    &CLIENT
}

async fn new_s3_client() -> aws_sdk_s3::Client {
    let endpoint = required_env("FALCONERI_TEST_S3_ENDPOINT", "s3s-fs");
    // The backend reads the standard variable; make sure it cannot reach
    // real AWS from a test.
    assert_eq!(
        std::env::var("AWS_ENDPOINT_URL_S3").ok().as_deref(),
        Some(endpoint.as_str()),
        "AWS_ENDPOINT_URL_S3 must equal FALCONERI_TEST_S3_ENDPOINT"
    );
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

fn both(test: impl AsyncFn(Kind)) {
    run(async {
        test(Kind::S3).await;
        test(Kind::Gcs).await;
    });
}

fn atom(uri: &str, glob: Glob) -> Input {
    Input::Atom(AtomInput::new(uri, "in", glob))
}

/// `tree` written under a temporary directory's `tree/`, and its URI.
fn local_tree(tree: &[(&str, &[u8])]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for (path, body) in tree {
        let path = dir.path().join("tree").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    let uri = format!("file://{}/tree/", dir.path().display());
    (dir, uri)
}

/// What start-up does with one atom: list only the glob's literal prefix,
/// then plan; the datums as local paths.
async fn plan_from_prefix(storage: &dyn Storage, uri: &str, glob: &str) -> Vec<Vec<String>> {
    let input = atom(uri, Glob::from(glob));
    let Input::Atom(atom_input) = &input else {
        unreachable!()
    };
    let planner = AtomPlanner::new(atom_input).unwrap();
    let listing: Vec<ObjectInfo> = storage
        .list_pages_from(uri, planner.list_prefix())
        .try_concat()
        .await
        .unwrap();
    plan_datums(&input, &[listing])
        .unwrap()
        .into_iter()
        .map(|datum| datum.files.into_iter().map(|f| f.local_path).collect())
        .collect()
}

/// Every glob plans the same datums on S3 and GCS as on `file://`, and a
/// glob with a literal start lists only that prefix (checked by keys
/// outside it that would break planning if they were listed).
#[test]
fn pattern_globs_list_their_prefix_on_every_backend() {
    let tree: [(&str, &'static [u8]); 8] = [
        ("2023-12-31.log", b"a"),
        ("2024-01-02.log", b"b"),
        ("2024-01-x/part-1", b"c"),
        ("a.csv", b"d"),
        ("bee/hive/honey.csv", b"e"),
        ("bee/wax.txt", b"f"),
        ("logs/2024/a.csv", b"g"),
        ("logs/2025/b.csv", b"h"),
    ];
    let globs = [
        ("/**", 8),
        ("/*/*", 5),
        ("/*.csv", 1),
        ("/**/*.csv", 4),
        ("/2024-??-*", 2),
        ("/{a,b}*", 2),
        ("/[0-9]*", 3),
        ("/logs/2024/*.csv", 1),
        ("/logs/*/*.csv", 2),
        ("/bee/*", 2),
        ("/zzz*", 0),
    ];
    let (_dir, file_uri) = local_tree(&tree);
    let expected = run(async {
        let mut expected = Vec::new();
        for (glob, count) in globs {
            let datums = plan_from_prefix(&FileStorage, &file_uri, glob).await;
            assert_eq!(datums.len(), count, "file:// {glob}: {datums:?}");
            expected.push(datums);
        }
        expected
    });
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        for (path, body) in tree {
            bucket.put(&format!("tree/{path}"), body).await;
        }
        for ((glob, _), expected) in globs.iter().zip(&expected) {
            for uri in [bucket.uri("tree/"), bucket.uri("tree")] {
                let got = plan_from_prefix(&*bucket.storage(), &uri, glob).await;
                assert_eq!(&got, expected, "{kind:?} {uri} {glob}");
            }
        }
        // Only the prefix is listed: a key beside it is never seen.
        let storage = bucket.storage();
        let listed: Vec<ObjectInfo> = storage
            .list_pages_from(&bucket.uri("tree/"), "logs/2024/")
            .try_concat()
            .await
            .unwrap();
        let paths: Vec<&str> = listed.iter().map(|o| o.relative_path.as_str()).collect();
        assert_eq!(paths, ["logs/2024/a.csv"], "{kind:?}");
        assert_eq!(listed[0].uri, bucket.uri("tree/logs/2024/a.csv"));
        let none: Vec<ObjectInfo> = storage
            .list_pages_from(&bucket.uri("tree/a.csv"), "x")
            .try_concat()
            .await
            .unwrap();
        assert!(none.is_empty(), "{kind:?}: {none:?}");
    });
}

#[test]
fn listing_pages_past_1000_keys() {
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        let count = 1_234;
        futures::future::join_all((0..count).map(|i| {
            let bucket = &bucket;
            async move { bucket.put(&format!("many/{i:05}.txt"), b"x").await }
        }))
        .await;
        bucket.put("other/not-me.txt", b"no").await;
        let listing = bucket.storage().list(&bucket.uri("many/")).await.unwrap();
        assert_eq!(listing.len(), count, "{kind:?}");
        assert_eq!(listing[0].relative_path, "00000.txt");
        assert_eq!(listing[count - 1].relative_path, "01233.txt");
        assert!(listing.iter().all(|o| o.size == 1));
        // Without the trailing slash: the same prefix.
        let again = bucket.storage().list(&bucket.uri("many")).await.unwrap();
        assert_eq!(again, listing);
        // Deleting more than a page of keys deletes them all, and nothing
        // beside the prefix.
        bucket
            .storage()
            .delete_prefix(&bucket.uri("many/"))
            .await
            .unwrap();
        let left = bucket.storage().list(&bucket.uri("many/")).await.unwrap();
        assert!(left.is_empty(), "{kind:?}: {} left", left.len());
        let other = bucket.storage().list(&bucket.uri("other/")).await.unwrap();
        assert_eq!(other.len(), 1, "{kind:?}");
    });
}

/// Keys whose byte order differs from a walk by directory (`a-b` and
/// `a.b/c` sort before everything under `a/`), and filler after them so the
/// first page ends inside `a/`, then more, 1,234 in all. `a` beside `a/x`
/// is only possible on GCS: s3s-fs and a file system keep keys as files.
fn awkward_keys(kind: Option<Kind>) -> Vec<String> {
    let mut keys: Vec<String> = ["a-b", "a.b/c", "a/x", "a/x-y", "a0", "ab", "b c/d"]
        .map(str::to_owned)
        .to_vec();
    if kind == Some(Kind::Gcs) {
        keys.push("a".to_owned());
    }
    keys.extend((0..998).map(|i| format!("a/{i:05}")));
    let more = 1_234 - keys.len();
    keys.extend((0..more).map(|i| format!("z/{i:05}")));
    keys
}

/// Checks the pages of a listing against its contract: at least two pages,
/// none empty, together the same as `list`, strictly increasing in byte
/// order across pages.
fn check_pages(what: &str, pages: &[Vec<ObjectInfo>], listing: &[ObjectInfo], keys: &[String]) {
    assert!(pages.len() >= 2, "{what}: {} page(s)", pages.len());
    assert!(
        pages.iter().all(|page| !page.is_empty()),
        "{what}: an empty page"
    );
    assert_eq!(pages.concat(), listing, "{what}: pages differ from list()");
    let paths: Vec<&str> = listing.iter().map(|o| o.relative_path.as_str()).collect();
    for pair in paths.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{what}: {:?} listed before {:?}",
            pair[0],
            pair[1]
        );
    }
    let mut expected: Vec<&str> = keys.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(paths, expected, "{what}");
}

#[test]
fn listings_arrive_in_pages_in_byte_order() {
    let dir = tempfile::tempdir().unwrap();
    let keys = awkward_keys(None);
    for key in &keys {
        let path = dir.path().join("pages").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "x").unwrap();
    }
    run(async {
        let uri = format!("file://{}/pages/", dir.path().display());
        let pages: Vec<_> = FileStorage.list_pages(&uri).try_collect().await.unwrap();
        let listing = FileStorage.list(&uri).await.unwrap();
        check_pages("file://", &pages, &listing, &keys);
    });
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        let keys = awkward_keys(Some(kind));
        futures::stream::iter(&keys)
            .for_each_concurrent(64, |key| {
                let bucket = &bucket;
                async move { bucket.put(&format!("pages/{key}"), b"x").await }
            })
            .await;
        let storage = bucket.storage();
        for uri in [bucket.uri("pages/"), bucket.uri("pages")] {
            let pages: Vec<_> = storage.list_pages(&uri).try_collect().await.unwrap();
            let listing = storage.list(&uri).await.unwrap();
            check_pages(&format!("{kind:?} {uri}"), &pages, &listing, &keys);
        }
        // A URI naming one object, with nothing under it as a prefix, is a
        // listing of one page of that object.
        let one = bucket.uri("pages/ab");
        let pages: Vec<_> = storage.list_pages(&one).try_collect().await.unwrap();
        assert_eq!(pages.len(), 1, "{kind:?}: {pages:?}");
        assert_eq!(pages[0].len(), 1, "{kind:?}: {pages:?}");
        assert_eq!(pages[0][0].relative_path, "ab");
        assert_eq!(pages[0][0].uri, one);
        // Nothing there at all: no page, not an empty one.
        let none = bucket.uri("pages/nothing-here");
        let pages: Vec<_> = storage.list_pages(&none).try_collect().await.unwrap();
        assert!(pages.is_empty(), "{kind:?}: {pages:?}");
    });
}

#[test]
fn globs_mean_the_same_on_every_backend() {
    let tree: [(&str, &'static [u8]); 5] = [
        ("a.txt", b"a"),
        ("b/c.txt", b"cc"),
        ("b/d/e.txt", b"eee"),
        ("f/g.txt", b""),
        ("h.txt", b"h"),
    ];
    let (_dir, file_uri) = local_tree(&tree);
    let local_paths = |input: &Input, listing| {
        plan_datums(input, &[listing])
            .unwrap()
            .into_iter()
            .map(|datum| {
                datum
                    .files
                    .into_iter()
                    .map(|f| f.local_path)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let expected = run(async {
        let mut expected = Vec::new();
        for glob in [Glob::WholeRepo, Glob::TopLevelEntries] {
            let listing = FileStorage.list(&file_uri).await.unwrap();
            expected.push(local_paths(&atom(&file_uri, glob), listing));
        }
        expected
    });
    assert_eq!(expected[1].len(), 4, "a.txt, b/, f/, h.txt");
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        for (path, body) in tree {
            bucket.put(&format!("tree/{path}"), body).await;
        }
        // A "directory" marker object, as consoles create, is not a file.
        bucket.put("tree/b/", b"").await;
        for (glob, expected) in [Glob::WholeRepo, Glob::TopLevelEntries]
            .into_iter()
            .zip(&expected)
        {
            for uri in [bucket.uri("tree/"), bucket.uri("tree")] {
                let listing = bucket.storage().list(&uri).await.unwrap();
                assert_eq!(
                    &local_paths(&atom(&uri, glob.clone()), listing),
                    expected,
                    "{kind:?} {uri} {glob:?}"
                );
            }
        }
        // A URI naming one object lists just it.
        let one = bucket
            .storage()
            .list(&bucket.uri("tree/b/c.txt"))
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].relative_path, "c.txt");
        assert_eq!(one[0].size, 2);
    });
}

#[test]
fn zero_byte_files_round_trip() {
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let out = work.join("pfs/out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("empty.txt"), "").unwrap();
        std::fs::write(out.join("sub/full.txt"), "full").unwrap();
        let egress = bucket.uri("egress/");
        let staging = attempt_staging_uri(&egress, 7, 8, 1);
        let uploaded = upload_outputs(&out, &work, &staging).await.unwrap();
        assert_eq!(
            uploaded,
            [
                NewOutputFile {
                    path: "empty.txt".into(),
                    size: 0
                },
                NewOutputFile {
                    path: "sub/full.txt".into(),
                    size: 4
                }
            ]
        );
        // Staged outputs are not inputs, and nothing is published yet.
        assert!(bucket.storage().list(&egress).await.unwrap().is_empty());
        let published = publish_outputs(&staging, &egress, &uploaded).await.unwrap();
        assert_eq!(published[0], format!("{egress}empty.txt"));
        // Publishing again (a retried report) is harmless.
        publish_outputs(&staging, &egress, &uploaded).await.unwrap();
        let listing = bucket.storage().list(&egress).await.unwrap();
        assert_eq!(listing.len(), 2, "{kind:?}: {listing:?}");
        assert_eq!(listing[0].size, 0);

        let pfs = dir.path().join("pfs-in");
        std::fs::create_dir(&pfs).unwrap();
        let files: Vec<_> = listing
            .iter()
            .map(|o| InputFileResponse {
                uri: o.uri.clone(),
                local_path: format!("in/{}", o.relative_path),
            })
            .collect();
        assert_eq!(download_inputs(&files, &pfs).await.unwrap(), 4);
        assert_eq!(std::fs::read(pfs.join("in/empty.txt")).unwrap(), b"");
        assert_eq!(std::fs::read(pfs.join("in/sub/full.txt")).unwrap(), b"full");

        bucket
            .storage()
            .delete_prefix(&bucket.uri("egress/"))
            .await
            .unwrap();
        assert!(!bucket.storage().exists(&published[0]).await.unwrap());
    });
}

/// Issue 9, defect 3, through the helpers falconerid and the worker use:
/// a worker's outputs are staged and published into a `file://` egress in
/// which someone planted `sub -> elsewhere`, and a staged symbolic link to a
/// secret is reported as an output. Neither is published, nothing lands
/// elsewhere, and each error names the path it refused.
#[test]
fn publishing_follows_no_symlink_in_a_file_egress() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let out = work.join("pfs/out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("sub/planted.txt"), "planted").unwrap();
        std::fs::write(out.join("fine.txt"), "fine").unwrap();
        let egress = dir.path().join("egress");
        std::fs::create_dir(&egress).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, egress.join("sub")).unwrap();
        let egress_uri = format!("file://{}/", egress.display());

        let staging = attempt_staging_uri(&egress_uri, 1, 1, 1);
        let uploaded = upload_outputs(&out, &work, &staging).await.unwrap();
        let err = publish_outputs(&staging, &egress_uri, &uploaded)
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("symbolic link")
                && message.contains(&egress.join("sub").display().to_string()),
            "{message}"
        );
        assert!(!elsewhere.join("planted.txt").exists());

        // A staged link to a secret, reported as an output.
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "secret").unwrap();
        let staging = attempt_staging_uri(&egress_uri, 1, 2, 1);
        let staged = egress.join(".falconeri-staging/job-1/datum-2-attempt-1");
        std::fs::create_dir_all(&staged).unwrap();
        std::os::unix::fs::symlink(&secret, staged.join("shadow.txt")).unwrap();
        let reported = [NewOutputFile {
            path: "shadow.txt".into(),
            size: 6,
        }];
        let err = publish_outputs(&staging, &egress_uri, &reported)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert!(std::fs::symlink_metadata(egress.join("shadow.txt")).is_err());
    });
}

/// The same nested output publishes normally to S3 and GCS: object stores
/// have no links, so the default `Storage::publish` (a rename) is safe and
/// unchanged there.
#[test]
fn object_stores_publish_nested_outputs() {
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let out = work.join("pfs/out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("sub/planted.txt"), "planted").unwrap();
        let egress = bucket.uri("egress/");
        let staging = attempt_staging_uri(&egress, 1, 1, 1);
        let uploaded = upload_outputs(&out, &work, &staging).await.unwrap();
        let published = publish_outputs(&staging, &egress, &uploaded).await.unwrap();
        assert_eq!(published, [format!("{egress}sub/planted.txt")], "{kind:?}");
        assert!(bucket.storage().exists(&published[0]).await.unwrap());
    });
}

/// Writes `size` bytes of a fixed pseudo-random sequence to `path`.
fn write_pattern(path: &Path, size: usize) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len());
        file.write_all(&block[..n]).unwrap();
        left -= n;
    }
    file.flush().unwrap();
}

fn assert_same_file(a: &Path, b: &Path) {
    let (mut a, mut b) = (
        std::io::BufReader::new(std::fs::File::open(a).unwrap()),
        std::io::BufReader::new(std::fs::File::open(b).unwrap()),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            assert_eq!(b.read(&mut y).unwrap(), 0, "second file is longer");
            return;
        }
        b.read_exact(&mut y[..n]).unwrap();
        assert!(x[..n] == y[..n], "files differ in the MiB at {offset}");
        offset += n as u64;
    }
}

#[test]
fn a_200_mib_file_round_trips_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let size = 200 * 1024 * 1024 + 12_345;
    write_pattern(&src, size);
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        let uri = bucket.uri("big/big.bin");
        let storage = bucket.storage();
        assert_eq!(storage.upload(&src, &uri).await.unwrap(), size as u64);
        let listing = storage.list(&bucket.uri("big/")).await.unwrap();
        assert_eq!(listing[0].size, size as u64);
        let dest = dir.path().join(format!("back-{kind:?}.bin"));
        assert_eq!(storage.download(&uri, &dest).await.unwrap(), size as u64);
        assert_same_file(&src, &dest);
        // A retried datum overwrites the same key.
        std::fs::write(dir.path().join("small.bin"), "small").unwrap();
        storage
            .upload(&dir.path().join("small.bin"), &uri)
            .await
            .unwrap();
        assert_eq!(storage.download(&uri, &dest).await.unwrap(), 5);
        assert_eq!(std::fs::read(&dest).unwrap(), b"small");
    });
}

#[test]
fn small_s3_uploads_carry_a_crc32c_the_server_checked() {
    run(async {
        let bucket = Bucket::new(Kind::S3).await;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("small.txt");
        std::fs::write(&src, "123456789").unwrap();
        let uri = bucket.uri("crc/small.txt");
        S3Storage::default().upload(&src, &uri).await.unwrap();
        let head = s3_client()
            .await
            .head_object()
            .bucket(&bucket.name)
            .key("crc/small.txt")
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        // CRC32C("123456789") = 0xe3069283, the standard check value.
        assert_eq!(head.checksum_crc32_c(), Some("4waSgw=="), "{head:?}");
        // The SDK's default trailer left s3s-fs storing the transfer
        // encoding as the object's Content-Encoding.
        assert_eq!(head.content_encoding(), None, "{head:?}");
    });
}

#[test]
fn large_objects_are_renamed_with_a_multipart_copy() {
    run(async {
        let bucket = Bucket::new(Kind::S3).await;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("mid.bin");
        write_pattern(&src, 12 * 1024 * 1024 + 7);
        let (from, to) = (bucket.uri("a/mid.bin"), bucket.uri("b/mid.bin"));
        let storage = S3Storage::default();
        storage.upload(&src, &from).await.unwrap();
        storage
            .rename_with_copy_limit(&from, &to, 5 * 1024 * 1024)
            .await
            .unwrap();
        assert!(!storage.exists(&from).await.unwrap());
        let back = dir.path().join("back.bin");
        storage.download(&to, &back).await.unwrap();
        assert_same_file(&src, &back);
    });
}

#[test]
fn failing_transfers_are_errors() {
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let out = work.join("pfs/out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("a.txt"), "a").unwrap();
        // s3s-fs creates a missing bucket on the first PUT, so the S3 case
        // uses a bucket name no S3 server accepts.
        let missing = match kind {
            Kind::S3 => format!("s3://Not_A_Bucket-{}/x/", hex_suffix()),
            Kind::Gcs => format!("gs://no-such-bucket-{}/x/", hex_suffix()),
        };
        let err = upload_outputs(&out, &work, &missing).await.unwrap_err();
        assert!(format!("{err:#}").contains("cannot upload"), "{err:#}");
        let pfs = dir.path().join("pfs");
        std::fs::create_dir(&pfs).unwrap();
        let files = [InputFileResponse {
            uri: bucket.uri("never/there.txt"),
            local_path: "in/there.txt".into(),
        }];
        let err = download_inputs(&files, &pfs).await.unwrap_err();
        assert!(format!("{err:#}").contains("cannot download"), "{err:#}");
    });
}

#[test]
fn keys_that_would_escape_the_datum_directory_are_refused() {
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        bucket.put("trav/ok.txt", b"ok").await;
        // An empty path segment makes the relative path absolute; `..`
        // climbs out.
        bucket.put("trav//etc/x", b"evil").await;
        bucket.put("trav/a/../../x", b"evil").await;
        let uri = bucket.uri("trav/");
        let listing = bucket.storage().list(&uri).await.unwrap();
        let unsafe_keys = listing
            .iter()
            .filter(|o| o.relative_path.starts_with('/') || o.relative_path.contains(".."))
            .count();
        match kind {
            // fake-gcs-server stores names as given.
            Kind::Gcs => assert_eq!(unsafe_keys, 2, "{listing:?}"),
            // s3s-fs maps keys to files, so it cannot hold these keys at all:
            // it normalises them, and what comes back is safe.
            Kind::S3 => assert_eq!(unsafe_keys, 0, "{listing:?}"),
        }
        if unsafe_keys > 0 {
            let err = plan_datums(&atom(&uri, Glob::WholeRepo), &[listing]).unwrap_err();
            assert!(
                matches!(err, PlanError::UnsafePath { .. }),
                "{kind:?}: {err}"
            );
        }

        // A download never writes outside the datum directory, whatever
        // local path it is handed.
        let dir = tempfile::tempdir().unwrap();
        let pfs = dir.path().join("pfs");
        std::fs::create_dir(&pfs).unwrap();
        for local_path in ["../x", "/etc/x", "in/../../x"] {
            let files = [InputFileResponse {
                uri: bucket.uri("trav/ok.txt"),
                local_path: local_path.into(),
            }];
            let err = download_inputs(&files, &pfs).await.unwrap_err();
            assert!(format!("{err:#}").contains("unsafe path"), "{err:#}");
        }
        assert!(!dir.path().join("x").exists());
    });
}

#[test]
fn credentials_never_appear_in_errors_or_debug_output() {
    let secret = required_env("AWS_SECRET_ACCESS_KEY", "s3s-fs");
    let access = required_env("AWS_ACCESS_KEY_ID", "s3s-fs");
    run(async {
        let mut seen = Vec::new();
        let storage = storage_for("s3://whatever/").unwrap();
        seen.push(format!("{storage:?}"));
        let missing = format!("s3://Not_A_Bucket-{}/", hex_suffix());
        seen.push(format!("{:?}", storage.list(&missing).await.unwrap_err()));
        seen.push(format!("{:#}", storage.list(&missing).await.unwrap_err()));
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a");
        std::fs::write(&src, "a").unwrap();
        let err = storage
            .upload(&src, &format!("{missing}a"))
            .await
            .unwrap_err();
        seen.push(format!("{err:?} {err:#}"));
        let err = storage
            .download(&format!("{missing}a"), &dir.path().join("b"))
            .await
            .unwrap_err();
        seen.push(format!("{err:?} {err:#}"));
        for text in seen {
            assert!(!text.contains(&secret), "the secret leaked: {text}");
            // The access key id is not secret, but errors have no need of it.
            assert!(!text.contains(&access), "the access key leaked: {text}");
        }
    });
}

/// The identity that fingerprints use comes from the store's own listing
/// (S3's ETag, GCS's MD5 and CRC32C): the same bytes listed twice or
/// uploaded again give the same identity, other bytes another one, and a
/// URI naming one object gets it from the object's metadata.
#[test]
fn listings_carry_the_stores_identity_of_each_object() {
    both(async |kind| {
        let bucket = Bucket::new(kind).await;
        bucket.put("in/a", b"alpha").await;
        bucket.put("in/b", b"bravo").await;
        let storage = bucket.storage();
        let identities = async || -> Vec<String> {
            let listing = storage.list(&bucket.uri("in/")).await.unwrap();
            listing.into_iter().map(|object| object.identity).collect()
        };
        let first = identities().await;
        assert_eq!(first, identities().await, "{kind:?}: stable");
        match kind {
            // s3s-fs lists no ETag: the last-modified second stands in.
            Kind::S3 => {
                for identity in &first {
                    assert!(
                        identity.starts_with("etag:") || identity.starts_with("modified:"),
                        "{identity}"
                    );
                }
                // A new second, so the fallback sees the overwrite too.
                tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
            }
            Kind::Gcs => {
                for identity in &first {
                    assert!(identity.starts_with("md5:"), "{identity}");
                    assert!(identity.contains(" crc32c:"), "{identity}");
                }
                assert_ne!(first[0], first[1], "different bytes");
                // The same bytes again: a content identity does not change.
                bucket.put("in/a", b"alpha").await;
                assert_eq!(first, identities().await, "same bytes");
            }
        }
        bucket.put("in/a", b"alpha, changed").await;
        let changed = identities().await;
        assert_ne!(first[0], changed[0], "{kind:?}: changed bytes");
        assert_eq!(first[1], changed[1]);
        // One object named by its URI: its identity from its metadata (on
        // GCS the same as listed; s3s-fs's HEAD has the ETag its listing
        // lacks, and a URI is always read the same way, so runs agree).
        let one = storage.list(&bucket.uri("in/b")).await.unwrap();
        match kind {
            Kind::S3 => assert!(one[0].identity.starts_with("etag:"), "{}", one[0].identity),
            Kind::Gcs => assert_eq!(one[0].identity, first[1]),
        }
    });
}
