#!/usr/bin/env bash
# Builds a backend-API-v3 ggml host with the test-backend-ops of the pinned v2 tree: by default
# ggml 0.26.0 as vendored by the crate llama-cpp-sys-2 =0.1.161; with arguments CRATE VERSION
# GGML_MINOR another one (scripts/test.sh also builds ggml 0.28 from llama-cpp-sys-4 =0.11.0).
# Sources are taken with `cargo fetch`, not built by cargo; the build goes to
# target/ggml/0.<minor>.x/. The same libggml-ane must load into it. Prints the build folder on
# the last line. Needs scripts/build-ggml.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."

# shared-library suffix and core count, on Linux and macOS
case "$(uname -s)" in
  # Metal on a Mac (ggml's default there, said explicitly), so coexistence can be tried
  Darwin) so=dylib; cores=$(sysctl -n hw.ncpu); metal=ON ;;
  *) so=so; cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2); metal=OFF ;;
esac

crate=${1:-llama-cpp-sys-2}
crate_version=${2:-0.1.161}
minor=${3:-26}
root=$PWD/target/ggml/0.$minor.x
[ "$minor" = 26 ] && root=$PWD/target/ggml/0.26.0
build=$root/build
tbo=$PWD/target/ggml/0.25.3/src/tests/test-backend-ops.cpp
if [ -x "$build/bin/test-backend-ops" ] && [ -e "$build/bin/libggml-cpu.$so" ]; then
  echo "$build"
  exit 0
fi
[ -f "$tbo" ] || { echo "run scripts/build-ggml.sh first (it brings test-backend-ops.cpp)" >&2; exit 1; }

mkdir -p "$root/fetch/src"
cat > "$root/fetch/Cargo.toml" <<TOML
[package]
name = "ggml-v3-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$crate = { version = "=$crate_version", default-features = false }

[workspace]
TOML
touch "$root/fetch/src/lib.rs"
cargo fetch --quiet --manifest-path "$root/fetch/Cargo.toml" >&2
manifest=$(cargo metadata --format-version 1 --manifest-path "$root/fetch/Cargo.toml" |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]==sys.argv[1]))' "$crate")
src=$(dirname "$manifest")/llama.cpp/ggml
grep -q "GGML_VERSION_MINOR $minor)" "$src/CMakeLists.txt" || { echo "unexpected ggml version in $src" >&2; exit 1; }

cmake -S scripts/ggml-host -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_METAL=$metal \
  -DGGML_SRC="$src" -DTBO_SRC="$tbo" >&2
ninja -C "$build" -j"$cores" >&2
echo "$build"
