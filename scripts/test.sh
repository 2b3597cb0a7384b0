#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, integration and doc tests,
# the benchmarks and examples built and run once, then the end-to-end tests with real
# third-party clients (scripts/clients.sh installs them: a Python venv with the pinned
# MCP SDK, the pinned MCP Inspector from npm), and the official conformance suite
# (scripts/conformance.sh installs it with a Node 24 of its own from npm). Needs Rust,
# Python 3.11 and Node 20.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
# `failpoints` compiles in the store's fault injection, for tests/store_faults.rs.
cargo clippy --locked --all-targets --features failpoints -- -D warnings
cargo test --locked --all-targets --features failpoints
cargo test --locked --doc --features failpoints
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps

# Real clients against the binary the tests above just built.
scripts/clients.sh
# The official MCP conformance suite against serve, and the proxy beside its upstream.
scripts/conformance.sh
