#!/usr/bin/env bash
# Installs the Debian packages lorad builds, tests and runs with, only those
# that are missing, so a second `make` costs nothing. Debian 12 is the target.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  liburing-dev libnuma-dev libcmocka-dev
  libopenblas-dev libjson-c-dev libsystemd-dev libpcre2-dev
  libutf8proc-dev libinih-dev libssl-dev librust-blake3-dev
  clang libclang-rt-14-dev
  fio systemd
  python3-prometheus-client prometheus
  libmicrohttpd-dev libcurl4-openssl-dev curl
  python3-pytest
  debhelper dh-python dpkg-dev lintian
)
if [ "${LORAD_WITH_TORCH:-0}" = 1 ]; then
  pkgs+=(python3-torch python3-numpy)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
