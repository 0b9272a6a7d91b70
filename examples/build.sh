#!/usr/bin/env bash
# Builds every example guest component into examples/*.wasm.
#
#   bash examples/build.sh            # Rust, JavaScript and Python guests
#   bash examples/build.sh --rust     # only the Rust guests (no npm/PyPI needed)
#
# Tests, benchmarks and the README's quickstart all use this one script. It is
# idempotent: cargo and the JS/Python step skip what is already up to date.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

guests=(hello echo env spin hog panic sleep print outbound probe page)
target_dir="${CARGO_TARGET_DIR:-$here/rust/target}"
cargo build --quiet --release --target wasm32-wasip2 \
  --manifest-path "$here/rust/Cargo.toml" --target-dir "$target_dir"
for g in "${guests[@]}"; do
  src="$target_dir/wasm32-wasip2/release/$g.wasm"
  if ! cmp -s "$src" "$here/$g.wasm"; then
    cp "$src" "$here/$g.wasm.tmp" && mv "$here/$g.wasm.tmp" "$here/$g.wasm"
  fi
  echo "examples/$g.wasm $(stat -c %s "$here/$g.wasm") bytes" >&2
done

if [[ "${1:-}" != "--rust" ]]; then
  bash "$here/build-guests-js-py.sh"
fi
