#!/usr/bin/env bash
# Builds the example guests and the gateway, then serves examples/routes.toml
# on http://127.0.0.1:8080 (admin on 127.0.0.1:9090) until Ctrl-C.
#
#   bash scripts/quickstart.sh
#   curl http://hello.localhost:8080/
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash examples/build.sh --rust
cargo build --release -p gannet-gateway
target_dir="${CARGO_TARGET_DIR:-$root/target}"
exec "$target_dir/release/gannet-gateway" \
  --routes examples/routes.toml \
  --listen "${GANNET_LISTEN:-127.0.0.1:8080}" \
  --admin-listen "${GANNET_ADMIN_LISTEN:-127.0.0.1:9090}" \
  --cache-dir "${GANNET_CACHE_DIR:-$root/cache}"
