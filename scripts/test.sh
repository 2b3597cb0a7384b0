#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, integration and doc tests,
# the benchmarks and examples built and run once, then the end-to-end tests with real
# third-party clients (scripts/clients.sh installs them: a Python venv with the pinned
# MCP SDK, the pinned MCP Inspector from npm). Needs Rust, Python 3.11 and Node 20.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
cargo test --locked --doc
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps

# Real clients against the binary the tests above just built.
scripts/clients.sh
