#!/bin/sh
# The GPU checks of issue 20 as one prepared run on the lent machine
# (../shared/DEVICE.md): build here, carry the binaries and the libraries
# missing there, run there.
#
#   here:  cmake --build build -j2 && tests/gpu/device.sh pack
#   there: the device tool's run with carry ["build-gpu"] and the command
#          "sh tests/gpu/device.sh run" (timeout_s 560)
#
# "sh tests/gpu/device.sh cpu" (timeout_s 580) runs only issue 21's CPU
# benchmarks on the machine's 16 cores, most wanted first: bench_engine
# --threads 16 (its threads_wait_* fields say where the threads wait),
# bench_ipc, bench_serve --threads 16, bench_lora, then bench_engine at 8
# and 2 threads; machine.txt has lscpu and numactl -H.
#
# pack copies test_backend_parity, test_results_cuda, bench_cuda,
# bench_results, the daemon and its tools into
# build-gpu/bin (ignored by git: /build-*/) and the shared libraries the
# machine lacks (libjson-c, libcmocka) into build-gpu/lib. run recreates
# the build path of lorad-mkmodel that the test has compiled in, then runs
# the parity test against CUDA and the benchmark, writing everything under
# $OUT (parity.txt, bench_cuda.jsonl, bench_cuda.err, machine.txt).
set -u
BUILD=${BUILD:-build}
CARRY=build-gpu

# the CUDA IPC results test and its benchmark, into $OUT
results() {
	LORAD_BIN=$B/lorad LORAD_MKMODEL_BIN=$B/lorad-mkmodel timeout 120 "$B/test_results_cuda" \
		>"$OUT/results.txt" 2>&1
	echo "results_cuda rc=$?" | tee -a "$OUT/results.txt"
	LORAD_BIN=$B/lorad LORAD_MKMODEL=$B/lorad-mkmodel timeout 120 "$B/bench_results" \
		${RESULTS_ARGS:-} >"$OUT/bench_results.jsonl" 2>"$OUT/bench_results.err"
	echo "bench_results rc=$?" | tee -a "$OUT/results.txt"
}

case "${1:-}" in
pack)
	set -e
	rm -rf "$CARRY"
	mkdir -p "$CARRY/bin" "$CARRY/lib"
	for b in test_backend_parity bench_cuda lorad-mkmodel test_engine_forward lorad lorad-cli \
		loradctl lorad-run bench_stream test_backend_fault test_results_cuda bench_results \
		bench_engine bench_lora bench_serve bench_ipc; do
		# without debug sections (the symbols stay, for perf): what
		# travels is capped at 64 MiB with the working tree
		strip --strip-debug -o "$CARRY/bin/$b" "$BUILD/bin/$b"
	done
	for l in libjson-c.so.5 libcmocka.so.0 liburing.so.2 libutf8proc.so.2 libinih.so.1 \
		liblorad.so.2; do
		for b in test_backend_parity lorad lorad-cli; do
			p=$(ldd "$BUILD/bin/$b" | awk -v l="$l" '$1 == l { print $3 }')
			[ -n "$p" ] && cp -L "$p" "$CARRY/lib/" && break
		done
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
	B=$CARRY/bin
	LORAD_PARITY_BACKEND=cuda timeout 150 "$B/test_backend_parity" >"$OUT/parity.txt" 2>&1
	echo "parity rc=$?" | tee -a "$OUT/parity.txt"
	# the engine's own tests on CUDA: decode = recompute, batches, device sampling
	LORAD_TEST_BACKEND=cuda timeout 90 "$B/test_engine_forward" >"$OUT/smoke.txt" 2>&1
	echo "engine_forward_cuda rc=$?" | tee -a "$OUT/smoke.txt"
	# a device error while serving (injected): requests fail, the daemon stays
	LORAD_TEST_BACKEND=cuda LORAD_BIN=$B/lorad LORADCTL_BIN=$B/loradctl LORAD_CLI_BIN=$B/lorad-cli \
		LORAD_MKMODEL_BIN=$B/lorad-mkmodel LORAD_DEMO_DIR=$PWD/demo \
		timeout 100 "$B/test_backend_fault" >>"$OUT/smoke.txt" 2>&1
	echo "backend_fault_cuda rc=$?" | tee -a "$OUT/smoke.txt"
	# lorad-run and the daemon on CUDA, tokens against the CPU's
	M=/tmp/lorad-gpu-model
	rm -rf $M && "$B/lorad-mkmodel" $M --layers 4 --hidden 256 --heads 8 --kv-heads 2 --ffn 512 \
		--vocab 1000 --dtype bf16 --adapter sk --rank 8 --alpha 16 --targets q,v >/dev/null
	{
		for be in cpu cuda; do
			"$B/lorad-run" --model $M --adapter $M/sk --prompt-tokens 1,2,3,4 --max-tokens 12 --backend $be
		done
		rm -f /tmp/lg.sock /tmp/lg.admin
		"$B/lorad" --model $M --backend auto --socket /tmp/lg.sock --admin-socket /tmp/lg.admin \
			--adapter sk=$M/sk >/tmp/lg.log 2>&1 &
		dpid=$!
		for i in 1 2 3 4 5 6 7 8 9 10; do [ -S /tmp/lg.admin ] && break; sleep 1; done
		"$B/lorad-cli" --socket /tmp/lg.sock --prompt-tokens 1,2,3,4 --max-tokens 12 --skill sk
		"$B/lorad-cli" --socket /tmp/lg.sock --prompt-tokens 1,2,3,4 --max-tokens 2000 --skill sk --ignore-eos \
			>/dev/null 2>&1 &
		cpid=$!
		sleep 0.3
		kill -9 $cpid
		wait $cpid 2>/dev/null
		pids=
		for i in 1 2 3 4 5 6 7 8; do
			"$B/lorad-cli" --socket /tmp/lg.sock --prompt-tokens 1,2,3,$i --max-tokens 12 --skill sk >/dev/null &
			pids="$pids $!"
		done
		wait $pids
		echo "8 concurrent clients rc=$?"
		"$B/lorad-cli" --socket /tmp/lg.sock --prompt-tokens 1,2,3,4 --max-tokens 12 --skill sk
		"$B/loradctl" --socket /tmp/lg.admin status
		kill $dpid
		wait $dpid
		echo "daemon rc=$?"
		cat /tmp/lg.log
	} >>"$OUT/smoke.txt" 2>&1
	# result rows through CUDA IPC between real processes, and their benchmark
	results
	timeout 300 "$CARRY/bin/bench_cuda" ${BENCH_ARGS:-} >"$OUT/bench_cuda.jsonl" 2>"$OUT/bench_cuda.err"
	echo "bench rc=$?"
	# the CPU backend on the machine's 16 cores (issue 21: scaling with the
	# cores); ENGINE_THREADS="" skips it
	for t in ${ENGINE_THREADS-16 8}; do
		timeout 150 "$B/bench_engine" --quick --threads "$t" >"$OUT/engine_t$t.jsonl" \
			2>"$OUT/engine_t$t.err"
		echo "bench_engine --threads $t rc=$?"
		cat "$OUT/engine_t$t.err"
	done
	# a cold adapter from disk to resident on the GPU: read + verify, then
	# parse + convert + upload (bench_stream's e2e rows; no fio there)
	timeout 150 "$CARRY/bin/bench_stream" --quick 2>"$OUT/stream.err" | grep e2e_cold_load \
		>"$OUT/stream_e2e.jsonl"
	echo "stream rc=$?"
	grep -E "FAILED|ERROR|PASSED" "$OUT/parity.txt" | head -20
	cat "$OUT/results.txt" "$OUT/bench_results.jsonl"
	tail -5 "$OUT/bench_results.err"
	grep -E "FAILED|PASSED|tokens|backend|rc=" "$OUT/smoke.txt" | head -30
	cat "$OUT/bench_cuda.jsonl"
	tail -8 "$OUT/bench_cuda.err"
	;;
cpu)
	OUT=${OUT:-/tmp/lorad-gpu-out}
	mkdir -p "$OUT"
	export LD_LIBRARY_PATH="$PWD/$CARRY/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	B=$CARRY/bin
	T=${CPU_THREADS:-16}
	{ lscpu; nproc; free -g; numactl -H; uname -r; } >"$OUT/machine.txt" 2>&1
	# name, command, timeout: each writes NAME.jsonl and NAME.err under $OUT
	bench() {
		name=$1 limit=$2
		shift 2
		timeout "$limit" "$@" >"$OUT/$name.jsonl" 2>"$OUT/$name.err"
		echo "$name rc=$? ($(date +%T))"
		tail -n 30 "$OUT/$name.err"
	}
	bench engine_t$T 120 "$B/bench_engine" --quick --threads "$T"
	bench ipc 60 "$B/bench_ipc" --quick
	bench serve_t$T 150 "$B/bench_serve" --quick --threads "$T"
	bench lora 90 "$B/bench_lora" --quick
	for t in ${CPU_MORE_THREADS-8 2}; do
		bench engine_t$t 90 "$B/bench_engine" --quick --threads "$t"
	done
	;;
results)
	# only the CUDA IPC results test and its benchmark (a short run)
	OUT=${OUT:-/tmp/lorad-gpu-out}
	mkdir -p "$OUT"
	export LD_LIBRARY_PATH="$PWD/$CARRY/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	B=$CARRY/bin
	results
	cat "$OUT/results.txt" "$OUT/bench_results.jsonl"
	tail -5 "$OUT/bench_results.err"
	;;
*)
	echo "usage: tests/gpu/device.sh pack|run|cpu|results" >&2
	exit 2
	;;
esac
