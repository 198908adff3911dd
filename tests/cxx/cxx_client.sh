#!/usr/bin/env bash
# The C++ client against a real daemon, and the public headers through every
# C++ compiler of the machine in several standards.
#   cxx_client.sh BIN_DIR SRC_DIR
set -euo pipefail
bin=$1 src=$2
dir=$(mktemp -d "${TMPDIR:-/tmp}/lorad-cxx.XXXXXX")
pid=""
cleanup() {
	[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" || true
	rm -rf "$dir"
}
trap cleanup EXIT

for cxx in g++ clang++; do
	command -v "$cxx" >/dev/null || { echo "$cxx: not installed, not checked"; continue; }
	for std in c++11 c++17 c++20; do
		"$cxx" -std=$std -Wall -Wextra -pedantic -Werror -fsyntax-only -I"$src/include" \
			"$src/tests/cxx/cxx_client.cpp"
		echo "$cxx -std=$std: the public headers compile"
	done
done

"$bin/lorad" --null-engine --socket "$dir/lorad.sock" 2>"$dir/lorad.log" &
pid=$!
for _ in $(seq 200); do
	[ -S "$dir/lorad.sock" ] && break
	sleep 0.02
done
"$bin/cxx_client" "$dir/lorad.sock"
