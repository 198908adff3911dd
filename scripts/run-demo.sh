#!/usr/bin/env bash
# `make run`: start lorad as the current user with its socket in a private
# runtime folder, send requests from lorad-cli, print a latency summary and
# stop the daemon again.
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

"$bin/lorad" --socket "$sock" --null-engine 2>"$dir/lorad.log" &
pid=$!
for _ in $(seq 100); do
	[ -S "$sock" ] && break
	sleep 0.05
done

echo "== lorad is serving on $sock (null engine: the transport alone)"
echo "== one request, its generated ids as JSON:"
"$bin/lorad-cli" --socket "$sock" --prompt-tokens 1,17,250 --max-tokens 8 --json
echo "== 100000 requests one after another from lorad-cli:"
"$bin/lorad-cli" --socket "$sock" --prompt-tokens 1,17,250,3,4,5,6,7 --max-tokens 1 --count 100000
echo "== 4 client processes at once, 20000 requests each:"
for i in 1 2 3 4; do
	"$bin/lorad-cli" --socket "$sock" --prompt-tokens "$i,2,3" --max-tokens 4 --count 20000 &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
kill -TERM "$pid"; wait "$pid"; pid=""
echo "== daemon log:"
cat "$dir/lorad.log"
