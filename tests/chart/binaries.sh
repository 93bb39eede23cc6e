#!/usr/bin/env bash
# The binaries the image tests put into the images: those of the workspace's test build
# (line tables, our crates at opt-level 1, dependencies at 3), which tests/run.sh's
# `cargo nextest run --workspace` has just built: `cargo test --workspace --no-run` below
# is then a no-op that puts them back in target/debug/ (and builds them otherwise). A
# release build would cost ~8 more minutes on 2 cores, and the Dockerfiles'
# BINARIES=local variant takes any binary; users build release images with
# scripts/build-images.sh. Built with the workspace's features, these binaries also carry
# the test crate's fault-injection hook, which no flag or config file reaches.
# Source it, then call test_binaries; it sets BINDIR (relative to the repository root
# unless CARGO_TARGET_DIR is absolute).
test_binaries() {
    cargo test --workspace --no-run >&2 || return 1
    BINDIR="${CARGO_TARGET_DIR:-target}/debug"
}
