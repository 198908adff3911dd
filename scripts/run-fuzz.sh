#!/bin/sh
# Run every libFuzzer target of a build for SECONDS each.
#
#   CC=clang cmake -S . -B build-fuzz -DLORAD_FUZZ=ON && cmake --build build-fuzz
#   scripts/run-fuzz.sh build-fuzz 60
#
# Each target starts from its committed seed corpus (tests/fuzz/corpus/NAME)
# and grows a working corpus in BUILD_DIR/fuzz/NAME, so the committed seeds
# stay hand-made. Crashes land in BUILD_DIR/fuzz/artifacts/. Exits non-zero
# when any target found a crash.
set -eu

if [ $# -ne 2 ]; then
	echo "usage: $0 BUILD_DIR SECONDS" >&2
	exit 2
fi
build=$1
secs=$2
src=$(cd "$(dirname "$0")/.." && pwd)
found=0
status=0

mkdir -p "$build/fuzz/artifacts"
for bin in "$build"/bin/fuzz_*; do
	[ -x "$bin" ] || continue
	name=$(basename "$bin")
	case $name in fuzz_replay_*) continue ;; esac
	target=${name#fuzz_}
	found=$((found + 1))
	work="$build/fuzz/$target"
	mkdir -p "$work"
	echo "== $name for ${secs}s"
	if ! "$bin" -max_total_time="$secs" -print_final_stats=1 \
		-artifact_prefix="$build/fuzz/artifacts/$target-" \
		"$work" "$src/tests/fuzz/corpus/$target"; then
		echo "== $name: FAILED (see $build/fuzz/artifacts/)" >&2
		status=1
	fi
done
if [ "$found" -eq 0 ]; then
	echo "no libFuzzer targets in $build/bin: configure with CC=clang -DLORAD_FUZZ=ON" >&2
	exit 2
fi
exit $status
