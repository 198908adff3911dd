#!/bin/sh
# Run every libFuzzer target of a build, sharing TOTAL_SECONDS evenly among
# them (at least MIN_SECONDS, default 5, each).
#
#   CC=clang cmake -S . -B build-fuzz -DLORAD_FUZZ=ON && cmake --build build-fuzz
#   scripts/run-fuzz.sh build-fuzz 120        # 9 targets: 13 s each
#
# Each target starts from its committed seed corpus (tests/fuzz/corpus/NAME)
# and grows a working corpus in BUILD_DIR/fuzz/NAME, so the committed seeds
# stay hand-made. Crashes land in BUILD_DIR/fuzz/artifacts/. Exits non-zero
# when any target found a crash.
set -eu

if [ $# -ne 2 ]; then
	echo "usage: $0 BUILD_DIR TOTAL_SECONDS" >&2
	exit 2
fi
build=$1
total=$2
min=${MIN_SECONDS:-5}
src=$(cd "$(dirname "$0")/.." && pwd)
status=0

case $total in
'' | *[!0-9]*)
	echo "$0: TOTAL_SECONDS must be a whole number" >&2
	exit 2
	;;
esac
targets=
for bin in "$build"/bin/fuzz_*; do
	[ -x "$bin" ] || continue
	case $(basename "$bin") in fuzz_replay_*) continue ;; esac
	targets="$targets $bin"
done
set -- $targets
if [ $# -eq 0 ]; then
	echo "no libFuzzer targets in $build/bin: configure with CC=clang -DLORAD_FUZZ=ON" >&2
	exit 2
fi
secs=$((total / $#))
[ "$secs" -ge "$min" ] || secs=$min
echo "== $# targets, ${secs}s each"

mkdir -p "$build/fuzz/artifacts"
for bin in "$@"; do
	name=$(basename "$bin")
	target=${name#fuzz_}
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
exit $status
