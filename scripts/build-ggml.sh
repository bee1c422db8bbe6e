#!/usr/bin/env bash
# Fetches and builds the pinned ggml (0.25.3, backend API v2, from the PyPI sdist
# llama-cpp-python==0.3.36) with test-backend-ops, ggml-rpc-server, libllama and llama-server,
# into target/ggml/0.25.3/.
# Prints the build folder on the last line. Re-running reuses what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# shared-library suffix and core count, on Linux and macOS
case "$(uname -s)" in
  # Metal on a Mac (ggml's default there, said explicitly), so coexistence can be tried
  Darwin) so=dylib; cores=$(sysctl -n hw.ncpu); metal=ON ;;
  *) so=so; cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2); metal=OFF ;;
esac

PIN_PKG=llama-cpp-python==0.3.36
PIN_VER=0.25.3
root=$PWD/target/ggml/$PIN_VER
src=$root/src
build=$root/build
PYTHON=${PYTHON:-python3}

if [ -x "$build/bin/test-backend-ops" ] && [ -e "$build/bin/libggml-cpu.$so" ] && [ -e "$build/bin/libllama.$so" ] \
  && [ -x "$build/bin/ggml-rpc-server" ] && [ -x "$build/bin/llama-server" ]; then
  echo "$build"
  exit 0
fi

# shellcheck source=scripts/build-tools.sh
source scripts/build-tools.sh
ensure_build_tools

mkdir -p "$root/dl" "$src"
if [ ! -f "$src/ggml/CMakeLists.txt" ]; then
  echo "downloading $PIN_PKG (sdist)" >&2
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$root/dl" "$PIN_PKG" >&2
  tar xzf "$root"/dl/llama_cpp_python-*.tar.gz -C "$src" --strip-components=3 \
    llama_cpp_python-0.3.36/vendor/llama.cpp/ggml \
    llama_cpp_python-0.3.36/vendor/llama.cpp/tests/test-backend-ops.cpp
fi
if [ ! -f "$src/tools/rpc/rpc-server.cpp" ]; then
  tar xzf "$root"/dl/llama_cpp_python-*.tar.gz -C "$src" --strip-components=3 \
    llama_cpp_python-0.3.36/vendor/llama.cpp/tools/rpc/rpc-server.cpp
fi
if [ ! -f "$src/src/llama.cpp" ]; then
  tar xzf "$root"/dl/llama_cpp_python-*.tar.gz -C "$src" --strip-components=3 \
    llama_cpp_python-0.3.36/vendor/llama.cpp/src \
    llama_cpp_python-0.3.36/vendor/llama.cpp/include
fi
# llama-server: its libraries (common, mtmd), vendored headers and cpp-httplib, the UI's
# templates (no assets: it is not built) and the cmake helpers they use
if [ ! -f "$src/tools/server/server.cpp" ]; then
  v=llama_cpp_python-0.3.36/vendor/llama.cpp
  tar xzf "$root"/dl/llama_cpp_python-*.tar.gz -C "$src" --strip-components=3 \
    "$v/common" "$v/vendor" "$v/tools/server" "$v/tools/mtmd" "$v/cmake" "$v/LICENSE" \
    "$v/scripts/ui-assets.cmake" "$v/tools/ui/CMakeLists.txt" "$v/tools/ui/ui.cpp.in" "$v/tools/ui/ui.h.in"
fi
grep -q "GGML_VERSION_MINOR 25" "$src/ggml/CMakeLists.txt" || { echo "unexpected ggml version in $src" >&2; exit 1; }

cmake -S scripts/ggml-host -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_METAL=$metal \
  -DGGML_SRC="$src/ggml" -DTBO_SRC="$src/tests/test-backend-ops.cpp" -DLLAMA_SRC="$src" \
  -DRPC_SERVER_SRC="$src/tools/rpc/rpc-server.cpp" -DLLAMA_SERVER=ON >&2
ninja -C "$build" -j"$cores" >&2
echo "$build"
