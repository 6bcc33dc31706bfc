//! The specs users already have (copied unchanged from the reference set)
//! and our own fixtures must parse, validate and round-trip.

// Unwrapping is how a test says "this must succeed".
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use falconeri_common::{
    pipeline::{Glob, HumanDuration, ImagePullPolicy, Input, PipelineSpec, Secret},
    plan::{ObjectInfo, plan_datums},
};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/specs")
}

fn load(name: &str) -> PipelineSpec {
    let path = fixtures_dir().join(name);
    let json = std::fs::read_to_string(&path).unwrap();
    match PipelineSpec::from_json(&json) {
        Ok(spec) => spec,
        Err(err) => panic!("{} is invalid:\n{err}", path.display()),
    }
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_fixture_parses_and_validates() {
    let names = fixture_names();
    for required in [
        "book-words.json",
        "nested-inputs.json",
        "word-frequencies.local.json",
    ] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
    for name in &names {
        let spec = load(name);
        spec.validate().unwrap();
        assert!(!spec.input.atoms().is_empty(), "{name}");
    }
}

#[test]
fn every_fixture_round_trips() {
    for name in fixture_names() {
        let spec = load(&name);
        let text = serde_json::to_string_pretty(&spec).unwrap();
        let again = PipelineSpec::from_json(&text)
            .unwrap_or_else(|err| panic!("{name} did not round-trip:\n{err}\n{text}"));
        assert_eq!(again, spec, "{name}");
    }
}

#[test]
fn book_words() {
    let spec = load("book-words.json");
    assert_eq!(spec.pipeline.name, "book_words");
    assert_eq!(spec.kubernetes_name(), "book-words");
    assert_eq!(
        spec.transform.cmd,
        ["python3", "/extract_words.py", "--lowercase"]
    );
    assert_eq!(
        spec.transform.image_pull_policy,
        Some(ImagePullPolicy::IfNotPresent)
    );
    assert_eq!(spec.transform.env["MIN_WORD_LENGTH"], "3");
    assert_eq!(
        spec.transform.secrets[0],
        Secret::Mount {
            name: "tls-bundle".into(),
            mount_path: "/etc/tls".into(),
        }
    );
    assert_eq!(
        spec.transform.secrets[2],
        Secret::Env {
            name: "s3".into(),
            key: "AWS_SECRET_ACCESS_KEY".into(),
            env_var: "AWS_SECRET_ACCESS_KEY".into(),
            optional: false,
        }
    );
    assert_eq!(
        spec.transform.service_account.as_deref(),
        Some("book-words-runner")
    );
    assert_eq!(spec.parallelism_spec.constant, 12);
    assert_eq!(spec.resource_requests.memory_bytes(), Ok(750 * 1024 * 1024));
    assert_eq!(spec.resource_requests.cpu_millis(), Ok(500));
    assert_eq!(spec.resource_requests.gpu, None);
    assert_eq!(spec.datum_tries, 3);
    assert_eq!(
        spec.job_timeout,
        Some(HumanDuration(Duration::from_secs(2 * 3600 + 30 * 60)))
    );
    assert_eq!(spec.datum_timeout, None);
    assert_eq!(spec.node_selector["pool"], "batch-workers");
    let Input::Atom(atom) = &spec.input else {
        panic!("expected an atom, got {:?}", spec.input);
    };
    assert_eq!(atom.uri, "gs://library-scans/books/");
    assert_eq!(atom.repo, "books");
    assert_eq!(atom.glob, Glob::TopLevelEntries);
    assert_eq!(spec.egress.uri, "gs://library-scans/words/");
}

#[test]
fn nested_inputs() {
    let spec = load("nested-inputs.json");
    assert_eq!(spec.kubernetes_name(), "catalog-books");
    assert_eq!(spec.datum_tries, 1);
    assert_eq!(spec.resource_requests.cpu_millis(), Ok(1000));
    assert_eq!(spec.resource_requests.memory_bytes(), Ok(1 << 30));
    let atoms = spec.input.atoms();
    let repos: Vec<&str> = atoms.iter().map(|a| a.repo.as_str()).collect();
    assert_eq!(repos, ["categories", "books", "more-books"]);
    assert_eq!(atoms[0].glob, Glob::WholeRepo);
    let Input::Cross(children) = &spec.input else {
        panic!("expected a cross, got {:?}", spec.input);
    };
    assert!(matches!(children[1], Input::Union(ref u) if u.len() == 2));
}

#[test]
fn nested_inputs_plan() {
    let spec = load("nested-inputs.json");
    let listing = |base: &str, paths: &[&str]| -> Vec<ObjectInfo> {
        paths
            .iter()
            .map(|p| ObjectInfo {
                uri: format!("{base}{p}"),
                relative_path: (*p).to_owned(),
                size: 10,
                identity: String::new(),
            })
            .collect()
    };
    let listings: Vec<Vec<ObjectInfo>> = spec
        .input
        .atoms()
        .iter()
        .map(|atom| match atom.repo.as_str() {
            "categories" => listing(&atom.uri, &["fiction", "science"]),
            "books" => listing(&atom.uri, &["b1", "b2", "b3"]),
            _ => listing(&atom.uri, &["m1/part1", "m1/part2"]),
        })
        .collect();
    let datums = plan_datums(&spec.input, &listings).unwrap();
    // One datum per book or more-books entry, each with every category.
    assert_eq!(datums.len(), 4);
    for datum in &datums {
        assert_eq!(datum.files[0].local_path, "categories/fiction");
        assert_eq!(datum.files[1].local_path, "categories/science");
    }
    assert_eq!(datums[0].files[2].uri, "s3://catalog-data/books/b1");
    assert_eq!(datums[3].files.len(), 4);
    assert_eq!(datums[3].files[3].local_path, "more-books/m1/part2");
}

#[test]
fn local_fixture_resolves_beside_itself() {
    let mut spec = load("word-frequencies.local.json");
    let dir = fixtures_dir();
    spec.resolve_relative_file_uris(&dir);
    let expected_input = format!("file://{}/texts/", dir.display());
    let expected_egress = format!("file://{}/output/", dir.display());
    assert_eq!(spec.input.atoms()[0].uri, expected_input);
    assert_eq!(spec.egress.uri, expected_egress);
    spec.validate().unwrap();
}

#[test]
fn json_schema_is_an_object_schema() {
    let schema = falconeri_common::pipeline::json_schema();
    assert_eq!(schema["type"], "object");
    let required = schema["required"].as_array().unwrap();
    assert!(required.iter().any(|r| r == "input"));
    assert!(!required.iter().any(|r| r == "datum_tries"));
}

/// A spec written for falconeri v2, with its optional secret key and a
/// `null` retry count, parses; the secret stays optional.
#[test]
fn falconeri_v2_specs_parse() {
    let spec = load("v2-optional-secret.json");
    assert_eq!(spec.datum_tries, 1);
    assert!(matches!(
        &spec.transform.secrets[2],
        Secret::Env { env_var, optional: true, .. } if env_var == "AWS_ENDPOINT_URL"
    ));
    assert!(matches!(
        &spec.transform.secrets[0],
        Secret::Env {
            optional: false,
            ..
        }
    ));
}
