#!/usr/bin/env bash
# Builds whisper.cpp with its vendored ggml, as real users get it, into target/whisper/<version>/:
#   1.8.3 (default): the crate whisper-rs-sys =0.15.0 (ggml 0.9.5), taken with `cargo fetch`;
#   1.8.5: the PyPI sdist pywhispercpp==1.5.1 (ggml 0.13.1).
# Shared libraries, the CPU backend as a loadable module (libggml-cpu.so, found next to the
# executable by ggml_backend_load_all), and tests/c/whisper_run.c as bin/whisper-run.
# Prints the build folder (holding bin/) on the last line. Re-running reuses what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# shared-library suffix and core count, on Linux and macOS
case "$(uname -s)" in
  # Metal on a Mac (ggml's default there, said explicitly), so coexistence can be tried
  Darwin) so=dylib; cores=$(sysctl -n hw.ncpu); metal=ON ;;
  *) so=so; cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2); metal=OFF ;;
esac

version=${1:-1.8.3}
case "$version" in
  1.8.3) ggml_minor=9 ;;
  1.8.5) ggml_minor=13 ;;
  *) echo "usage: $0 [1.8.3|1.8.5]" >&2; exit 1 ;;
esac
root=$PWD/target/whisper/$version
build=$root/build
harness=$PWD/crates/ggml-ane/tests/c/whisper_run.c
PYTHON=${PYTHON:-python3}

# a harness older than its source is rebuilt (incrementally) below
if [ -e "$build/bin/libwhisper.$so" ] && [ -e "$build/bin/libggml-cpu.$so" ] \
  && [ -x "$build/bin/whisper-run" ] && [ "$build/bin/whisper-run" -nt "$harness" ]; then
  echo "$build"
  exit 0
fi

# shellcheck source=scripts/build-tools.sh
source scripts/build-tools.sh
ensure_build_tools

if [ "$version" = 1.8.3 ]; then
  # the sources stay in cargo's registry cache; the build only reads them
  mkdir -p "$root/fetch/src"
  cat > "$root/fetch/Cargo.toml" <<TOML
[package]
name = "whisper-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
whisper-rs-sys = { version = "=0.15.0", default-features = false }

[workspace]
TOML
  touch "$root/fetch/src/lib.rs"
  cargo fetch --quiet --manifest-path "$root/fetch/Cargo.toml" >&2
  manifest=$(cargo metadata --format-version 1 --manifest-path "$root/fetch/Cargo.toml" |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="whisper-rs-sys"))')
  src=$(dirname "$manifest")/whisper.cpp
else
  src=$root/src
  if [ ! -f "$src/ggml/CMakeLists.txt" ]; then
    echo "downloading pywhispercpp==1.5.1 (sdist)" >&2
    mkdir -p "$root/dl" "$src"
    # --no-binary for this package only: with :all: pip would also compile the sdist's build
    # requirements (cmake, ninja) from source just to read its metadata, for many minutes
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary pywhispercpp \
      -d "$root/dl" pywhispercpp==1.5.1 >&2
    w=pywhispercpp-1.5.1/whisper.cpp
    tar xzf "$root/dl/pywhispercpp-1.5.1.tar.gz" -C "$src" --strip-components=2 \
      "$w/CMakeLists.txt" "$w/LICENSE" "$w/cmake" "$w/include" "$w/src" "$w/ggml"
  fi
fi
if ! grep -q "project(\"whisper.cpp\" VERSION $version)" "$src/CMakeLists.txt" \
  || ! grep -q "GGML_VERSION_MINOR $ggml_minor)" "$src/ggml/CMakeLists.txt"; then
  echo "unexpected whisper.cpp or ggml version in $src" >&2
  exit 1
fi

# Release, as both packages build it: the CPU reference then matches users' builds (a -O0 build's
# logits differ by ~3e-3) and runs in 0.2 s instead of 1.2 s; -O0 would save ~15 s of a ~35 s build
cmake -S scripts/whisper-host -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_METAL=$metal \
  -DWHISPER_SRC="$src" -DHARNESS_SRC="$harness" >&2
ninja -C "$build" -j"$cores" >&2
echo "$build"
