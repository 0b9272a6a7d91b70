#!/usr/bin/env bash
# Runs every test: builds the example guests (Rust, JavaScript, Python) once,
# then the workspace's unit and end-to-end tests against them. Tests use the
# optimized build, so the guests compile (Cranelift) in seconds, not minutes.
#
#   bash scripts/test.sh [extra cargo test args]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash examples/build.sh
cargo test --release --workspace "$@"
