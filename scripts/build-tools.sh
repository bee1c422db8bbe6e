#!/usr/bin/env bash
# Sourced by the host build scripts: installs cmake, ninja and g++ where they are missing
# (apt as root or with sudo; Homebrew on a Mac, g++ there coming with the Xcode tools).
ensure_build_tools() {
  local need=()
  command -v cmake >/dev/null 2>&1 || need+=(cmake)
  command -v ninja >/dev/null 2>&1 || need+=(ninja-build)
  command -v g++ >/dev/null 2>&1 || need+=(g++)
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing ${need[*]}" >&2
  if [ "$(uname -s)" = Darwin ]; then
    command -v brew >/dev/null 2>&1 || { echo "install Homebrew, or cmake and ninja, first" >&2; exit 1; }
    brew install cmake ninja >&2
  elif [ "$(id -u)" = 0 ]; then apt-get update -qq >&2 && apt-get install -y -qq "${need[@]}" >&2
  else sudo apt-get update -qq >&2 && sudo apt-get install -y -qq "${need[@]}" >&2; fi
}
