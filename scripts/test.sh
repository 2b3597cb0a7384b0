#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, integration and doc tests,
# and a compile check of the benchmarks and examples. Needs only a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
cargo test --locked --doc
