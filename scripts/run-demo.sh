#!/usr/bin/env bash
# `make run`: make a small Llama-style model with lorad-mkmodel, start lorad
# on it as the current user (socket in a private runtime folder), send
# requests from lorad-cli (one, then several clients at once), compare with
# the offline engine, print tokens/s and the transport's round-trip time,
# and stop the daemon again.
set -euo pipefail
build=${1:-build}
bin="$build/bin"
dir=$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/lorad-run.XXXXXX")
sock="$dir/lorad.sock"
pid=""
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"; wait "$pid" || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT

start() {
	"$bin/lorad" --socket "$sock" "$@" 2>>"$dir/lorad.log" &
	pid=$!
	for _ in $(seq 200); do
		[ -S "$sock" ] && return 0
		kill -0 "$pid" 2>/dev/null || { cat "$dir/lorad.log"; return 1; }
		sleep 0.05
	done
	return 1
}
stop() {
	kill -TERM "$pid"; wait "$pid"; pid=""
}

model="$dir/model"
echo "== making a random Llama-style model (4 layers, hidden 256, vocabulary 4096) with lorad-mkmodel"
"$bin/lorad-mkmodel" "$model" --layers 4 --hidden 256 --heads 8 --kv-heads 2 --ffn 768 \
	--vocab 4096 --seed 7 >/dev/null
start --model "$model"
prompt=1,17,250,3,99,1024,7
echo "== lorad is serving it on $sock"
echo "== one request through the daemon (greedy):"
"$bin/lorad-cli" --socket "$sock" --prompt-tokens $prompt --max-tokens 16 --json
echo "== the same prompt through the offline engine (lorad-run): the same tokens"
"$bin/lorad-run" --model "$model" --prompt-tokens $prompt --max-tokens 16 --json
echo "== 4 client processes at once, 8 requests of 64 tokens each (continuous batching):"
for i in 1 2 3 4; do
	"$bin/lorad-cli" --socket "$sock" --prompt-tokens "$i,2,3,4,5" --max-tokens 64 \
		--temperature 0.8 --seed "$i" --count 8 &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
stop

echo "== the transport alone (null engine): 100000 requests one after another"
start --null-engine
"$bin/lorad-cli" --socket "$sock" --prompt-tokens 1,17,250,3,4,5,6,7 --max-tokens 1 --count 100000
stop
echo "== daemon log:"
cat "$dir/lorad.log"
