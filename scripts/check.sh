#!/usr/bin/env bash
# The fast tier, for every change: formatting, clippy, and every test that needs no ggml host
# (the walker, patterns, settings, version table, the engines, the CLI). A few minutes on two
# cores once the dependencies are built. scripts/test.sh is the full tier CI runs: it adds the
# ggml hosts (test-backend-ops, libllama end to end), the macOS type check, MSRV, docs,
# cargo-deny and fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
# the tests that load the backend into ggml compile only with a host (cfg ggml_linked): lint
# them too where scripts/test.sh has built one, or a lint CI finds is missed here
pinned=target/ggml/0.25.3/build/bin
if [ -z "${GGML_LIB_DIR:-}" ] && { [ -e "$pinned/libggml-base.so" ] || [ -e "$pinned/libggml-base.dylib" ]; }; then
  GGML_LIB_DIR=$PWD/$pinned cargo clippy --workspace --all-targets -- -D warnings
else
  cargo clippy --workspace --all-targets -- -D warnings
fi

step "cargo test (no ggml host: the tests that load the backend into ggml say SKIP)"
# GGML_LIB_DIR left out on purpose: this tier never waits for a C++ build
env -u GGML_LIB_DIR -u GGML_ANE_REQUIRE_HOSTS cargo test --workspace

step "checks passed"
