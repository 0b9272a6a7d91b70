#!/usr/bin/env bash
# The whole platform in one process, from a fresh clone: builds the Rust
# example guests and the `gannet` CLI, then runs
#
#     gannet dev examples/hello.wasm
#
# which starts the control API (SQLite under ./.gannet), one gateway on
# 127.0.0.1:8080 following it, and a `dev` tenant; deploys hello.wasm as the
# app `hello`, and redeploys it whenever the file changes. Then:
#
#     curl http://hello-dev.localhost:8080/
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash examples/build.sh --rust
cargo build --release -p gannet
target_dir="${CARGO_TARGET_DIR:-$root/target}"
exec "$target_dir/release/gannet" dev examples/hello.wasm "$@"
