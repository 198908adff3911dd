#!/bin/sh
# The GPU checks of issue 20 as one prepared run on the lent machine
# (../shared/DEVICE.md): build here, carry the binaries and the libraries
# missing there, run there.
#
#   here:  cmake --build build -j2 && tests/gpu/device.sh pack
#   there: the device tool's run with carry ["build-gpu"] and the command
#          "sh tests/gpu/device.sh run" (timeout_s 560)
#
# pack copies test_backend_parity, bench_cuda and lorad-mkmodel into
# build-gpu/bin (ignored by git: /build-*/) and the shared libraries the
# machine lacks (libjson-c, libcmocka) into build-gpu/lib. run recreates
# the build path of lorad-mkmodel that the test has compiled in, then runs
# the parity test against CUDA and the benchmark, writing everything under
# $OUT (parity.txt, bench_cuda.jsonl, bench_cuda.err, machine.txt).
set -u
BUILD=${BUILD:-build}
CARRY=build-gpu

case "${1:-}" in
pack)
	set -e
	rm -rf "$CARRY"
	mkdir -p "$CARRY/bin" "$CARRY/lib"
	for b in test_backend_parity bench_cuda lorad-mkmodel; do
		cp -L "$BUILD/bin/$b" "$CARRY/bin/"
	done
	for l in libjson-c.so.5 libcmocka.so.0; do
		p=$(ldd "$BUILD/bin/test_backend_parity" | awk -v l="$l" '$1 == l { print $3 }')
		[ -n "$p" ] && cp -L "$p" "$CARRY/lib/"
	done
	readlink -f "$BUILD/bin/lorad-mkmodel" >"$CARRY/mkmodel_path"
	du -sh "$CARRY"
	;;
run)
	OUT=${OUT:-/tmp/lorad-gpu-out}
	mkdir -p "$OUT"
	export LD_LIBRARY_PATH="$PWD/$CARRY/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	export LORAD_MKMODEL="$PWD/$CARRY/bin/lorad-mkmodel"
	mk=$(cat "$CARRY/mkmodel_path")
	if [ ! -x "$mk" ]; then
		mkdir -p "$(dirname "$mk")" && ln -sf "$LORAD_MKMODEL" "$mk"
	fi
	{ nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; uname -r; nproc; } \
		>"$OUT/machine.txt" 2>&1
	LORAD_PARITY_BACKEND=cuda timeout 200 "$CARRY/bin/test_backend_parity" >"$OUT/parity.txt" 2>&1
	echo "parity rc=$?" | tee -a "$OUT/parity.txt"
	timeout 320 "$CARRY/bin/bench_cuda" ${BENCH_ARGS:-} >"$OUT/bench_cuda.jsonl" 2>"$OUT/bench_cuda.err"
	echo "bench rc=$?"
	grep -E "FAILED|ERROR|PASSED" "$OUT/parity.txt" | head -20
	cat "$OUT/bench_cuda.jsonl"
	tail -8 "$OUT/bench_cuda.err"
	;;
*)
	echo "usage: tests/gpu/device.sh pack|run" >&2
	exit 2
	;;
esac
