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
# The store tests run on SQLite always, and on Postgres when one is reachable.
if [[ -z "${GANNET_TEST_POSTGRES_URL:-}" ]] && command -v pg_isready >/dev/null \
   && pg_isready -q -h 127.0.0.1 -p 5432; then
  export GANNET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
fi
if [[ -z "${GANNET_TEST_POSTGRES_URL:-}" ]]; then
  echo "note: no Postgres at 127.0.0.1:5432 and GANNET_TEST_POSTGRES_URL unset: store tests run on SQLite only" >&2
fi
cargo test --release --workspace "$@"
