#!/usr/bin/env bash
# Installs the system libraries the native build needs (yaml-cpp), if they are missing.
# Debian/Ubuntu: apt-get (as root or through sudo); macOS: Homebrew.
set -euo pipefail

have_yaml_cpp() {
  for d in /usr/include /usr/local/include /opt/homebrew/include; do
    [ -f "$d/yaml-cpp/yaml.h" ] && return 0
  done
  return 1
}

if have_yaml_cpp; then
  exit 0
fi

case "$(uname -s)" in
  Linux)
    if command -v apt-get >/dev/null; then
      SUDO=""
      [ "$(id -u)" -ne 0 ] && SUDO="sudo"
      echo "installing libyaml-cpp-dev with apt-get"
      $SUDO apt-get update -qq
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libyaml-cpp-dev
    else
      echo "yaml-cpp (headers and library) is missing: install it with your package manager" \
           "(e.g. 'dnf install yaml-cpp-devel' or 'pacman -S yaml-cpp'), then rerun." >&2
      exit 1
    fi ;;
  Darwin)
    if command -v brew >/dev/null; then
      brew install yaml-cpp
    else
      echo "yaml-cpp is missing: install Homebrew (https://brew.sh), then 'brew install yaml-cpp'." >&2
      exit 1
    fi ;;
  *)
    echo "yaml-cpp is missing: install it (headers and library) and rerun." >&2
    exit 1 ;;
esac
