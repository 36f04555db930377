#!/usr/bin/env bash
# Installs the system library the native build needs (yaml-cpp), if it is missing.
# With --test, also what the tests use: a Korean font for the attention plots (fonts-nanum) and the
# browser the chat page test drives (chromium + chromium-driver), Debian/Ubuntu only.
# Debian/Ubuntu: apt-get (as root or through sudo); macOS: Homebrew.
set -euo pipefail
FOR_TESTS=0
[ "${1:-}" = "--test" ] && FOR_TESTS=1

# ---- Korean font for Hangul labels in plots (scripts/visualize_attention.py) --------------------
# Debian/Ubuntu: fonts-nanum. Elsewhere (macOS ships Apple SD Gothic Neo) nothing is installed;
# a missing font is reported by the script that needs it, so a failure here is not fatal.
if [ "$FOR_TESTS" = 1 ] && [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null && ! ls /usr/share/fonts/truetype/nanum/NanumGothic*.ttf >/dev/null 2>&1; then
  FONT_SUDO=""
  [ "$(id -u)" -ne 0 ] && FONT_SUDO="sudo"
  echo "installing fonts-nanum with apt-get (Korean font for plots)"
  { $FONT_SUDO apt-get update -qq && $FONT_SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-nanum; } \
    || echo "could not install fonts-nanum; scripts/visualize_attention.py will ask for a Korean font" >&2
fi
# ---- end Korean font -------------------------------------------------------------------------------

have_yaml_cpp() {
  for d in /usr/include /usr/local/include /opt/homebrew/include; do
    [ -f "$d/yaml-cpp/yaml.h" ] && return 0
  done
  return 1
}

# ---- chat page browser test (issue 17): Debian's chromium + chromium-driver -------------------
# tests/serve/test_chat_page.py drives the page with selenium through /usr/bin/chromedriver;
# nothing downloads a browser at run time. Elsewhere the test says it needs them and is skipped.
if [ "$FOR_TESTS" = 1 ] && [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null && \
   { [ ! -x /usr/bin/chromedriver ] || ! command -v chromium >/dev/null; }; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing chromium and chromium-driver with apt-get (browser test of the chat page)"
  { $SUDO apt-get update -qq && \
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
    echo "warning: chromium + chromium-driver could not be installed; the chat page browser test will be skipped" >&2
fi
# ---- end of the chat page block -------------------------------------------------------------

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
