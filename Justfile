# Development commands for falconeri. Run `just` to list them.

# Pass recipe arguments to the shell as "$@", so they keep their quoting.
set positional-arguments

# List the recipes.
default:
    @just --list

# Build every crate in the workspace.
build:
    cargo build --workspace --all-targets

# Run every test, starting a throwaway PostgreSQL (see scripts/test).
test *ARGS:
    ./scripts/test "$@"

# Format all the code.
fmt:
    cargo fmt --all

# Check formatting without changing anything.
fmt-check:
    cargo fmt --all -- --check

# Lint with clippy; warnings are errors.
clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# Check licenses, advisories, duplicate crates and sources (deny.toml).
deny:
    cargo deny check

# Build the mdBook guide into guide/book and check its internal links
# (scripts/test does the same with the mdBook version it pins).
guide:
    mdbook build guide
    python3 scripts/check-guide-links guide/book

# Rewrite guide/src/openapi.json from the code after a deliberate API change
# (the test `openapi_document_matches_the_committed_copy` compares them).
openapi:
    FALCONERI_UPDATE_OPENAPI=1 cargo test -p falconerid --test openapi

# Everything to run before asking for a review.
check: fmt-check clippy deny test

# Run the word-frequencies example locally (results in examples/word-frequencies/output/).
run-example:
    rm -rf examples/word-frequencies/output
    cargo run --release -p falconeri -- job run --local --wait examples/word-frequencies/word-frequencies.local.json

# The workspace version, the default tag of the images.
version := `sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1`
# docker, or podman (anything that takes `build -t TAG DIR`).
container_engine := env_var_or_default("CONTAINER_ENGINE", "docker")

# Build the images: falconeri/falconerid:TAG (falconerid and the static falconeri-worker the Kubernetes executor copies into worker pods) and falconeri/word-frequencies:latest (the example).
image tag=version:
    {{container_engine}} build -t falconeri/falconerid:{{tag}} .
    {{container_engine}} build -t falconeri/word-frequencies:latest examples/word-frequencies
