#!/usr/bin/env bash
# Builds the JavaScript and Python example guests (wasi:http proxy components):
#   examples/hello-js.wasm  examples/echo-js.wasm   (componentize-js, WIT examples/wit/js-0.2.10)
#   examples/hello-py.wasm  examples/echo-py.wasm   (componentize-py, WIT examples/wit/wasi-0.2.12)
#
# Idempotent: installs npm deps (npm ci from package-lock.json) and a Python venv
# (examples/python/.venv) only when missing or stale, and rebuilds an output only
# when one of its inputs is newer than it. Needs node + npm, python3 (with venv),
# and network access to the npm registry and PyPI on a first run only.
# Prints one line per .wasm file to stderr.
#
# Usage: examples/build-guests-js-py.sh [--force]
set -euo pipefail

EX="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JS="$EX/js"
PY="$EX/python"
PYTHON="${PYTHON:-python3}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { printf '%s\n' "$*" >&2; }

size_of() { stat -c %s "$1"; }

# needs_build OUT INPUT... : true if OUT is missing, --force was given, or any
# input file (directories are searched recursively) is newer than OUT.
needs_build() {
  local out="$1"; shift
  [[ $FORCE == 1 || ! -f "$out" ]] && return 0
  [[ -n "$(find "$@" -type f -newer "$out" -print -quit)" ]]
}

# ---------------------------------------------------------------- JavaScript
if [[ ! -f "$JS/node_modules/.package-lock.json" \
   || "$JS/package-lock.json" -nt "$JS/node_modules/.package-lock.json" \
   || "$JS/package.json" -nt "$JS/node_modules/.package-lock.json" ]]; then
  log "npm ci in examples/js"
  (cd "$JS" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

js_todo=()
for name in hello echo; do
  out="$EX/$name-js.wasm"
  if needs_build "$out" "$JS/$name.js" "$JS/build.mjs" "$JS/package-lock.json" "$EX/wit/js-0.2.10"; then
    js_todo+=("$name")
  else
    log "up to date: examples/$name-js.wasm $(size_of "$out") bytes"
  fi
done
if (( ${#js_todo[@]} )); then
  # build.mjs prints "built: examples/<name>-js.wasm <n> bytes" per file.
  (cd "$JS" && node build.mjs "${js_todo[@]}")
fi

# -------------------------------------------------------------------- Python
VENV="$PY/.venv"
STAMP="$VENV/.requirements-installed"
if [[ ! -x "$VENV/bin/componentize-py" || ! -f "$STAMP" || "$PY/requirements.txt" -nt "$STAMP" ]]; then
  log "creating venv and installing examples/python/requirements.txt"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY/requirements.txt" >&2
  touch "$STAMP"
fi
CPY="$VENV/bin/componentize-py"
PY_WIT="$EX/wit/wasi-0.2.12"
PY_WORLD="wasi:http/proxy@0.2.12"

# Generated bindings (wit_world package etc.): regenerate when WIT or tool changed.
if [[ ! -f "$PY/bindings/.stamp" ]] || needs_build "$PY/bindings/.stamp" "$PY_WIT" "$STAMP"; then
  rm -rf "$PY/bindings"
  "$CPY" -d "$PY_WIT" -w "$PY_WORLD" bindings "$PY/bindings" >/dev/null
  touch "$PY/bindings/.stamp"
fi

for name in hello echo; do
  out="$EX/$name-py.wasm"
  if needs_build "$out" "$PY/$name.py" "$PY/requirements.txt" "$PY_WIT"; then
    (cd "$PY" && "$CPY" -d "$PY_WIT" -w "$PY_WORLD" componentize -p . -p bindings "$name" -o "$out.tmp" >/dev/null)
    mv -f "$out.tmp" "$out"
    log "built: examples/$name-py.wasm $(size_of "$out") bytes"
  else
    log "up to date: examples/$name-py.wasm $(size_of "$out") bytes"
  fi
done
