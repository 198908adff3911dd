#!/usr/bin/env bash
# `make run`: lorad on the demo model of demo/ (a small trained Llama model and
# three LoRA adapters, one skill each), as the current user with its sockets
# in a private runtime folder. It sends held-out prompts of every skill from
# several client processes at once to the skill "auto" and to the base
# model, then measures what one daemon with three adapters costs against
# three daemons each serving one merged model, the adapters' cold load from
# disk, the transport's round trip and tokens/s, and stops every daemon.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
case $build in /*) ;; *) build="$PWD/$build" ;; esac
bin="$build/bin"
cd "$root"   # demo/lorad.conf names its files relative to the repository root
for f in demo/lorad.conf demo/heldout.jsonl demo/unseen.jsonl demo/model/model.safetensors demo/model/tokenizer.json; do
	[ -s "$f" ] || { echo "run-demo: $f is missing: the demo model is not in this tree" >&2; exit 1; }
done
for b in lorad lorad-cli loradctl lorad-run skill_eval; do
	[ -x "$bin/$b" ] || { echo "run-demo: $bin/$b is missing: build first (make build)" >&2; exit 1; }
done
t_start=$(date +%s.%N)
dir=$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/lorad-run.XXXXXX")
chmod 700 "$dir"
pids=()
cleanup() {
	for p in "${pids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The same limits for every daemon started here, so their memory compares.
common=(--kv-tokens 4096 --threads 2)

# start NAME ARGS...: lorad with sockets $dir/NAME.sock and $dir/NAME-admin.sock;
# sets $pid once it serves
start() {
	local name=$1
	shift
	"$bin/lorad" --socket "$dir/$name.sock" --admin-socket "$dir/$name-admin.sock" "${common[@]}" \
		"$@" 2>"$dir/$name.log" &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 400); do
		grep -q "serving on" "$dir/$name.log" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	echo "run-demo: lorad $* did not start:" >&2
	cat "$dir/$name.log" >&2
	exit 1
}
stop() {
	kill -TERM "$1"
	wait "$1" || true
}
# mem PID: "PSS RSS" in KiB, from /proc/PID/smaps_rollup
mem() {
	awk '/^Rss:/ { r = $2 } /^Pss:/ { p = $2 } END { print p, r }' "/proc/$1/smaps_rollup"
}
mib() {
	awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'
}
metric() {   # metric ADMIN NAME VERSION
	"$bin/loradctl" --socket "$1" metrics | awk -v m="$2{version=\"$3\"}" '$1 == m { print $2 }'
}

params=$(awk '/"(hidden_size|num_hidden_layers|vocab_size)"/' demo/model/config.json | tr -d ' \n,')
echo "== lorad on the demo model (demo/model: $params, $(du -h demo/model/model.safetensors | cut -f1)),"
echo "   three skills in three LoRA adapters, the skill \"auto\" picked by the rules of demo/lorad.conf"
start one --config demo/lorad.conf
one=$pid
"$bin/loradctl" --socket "$dir/one-admin.sock" adapters list

echo
echo "== cold load: each adapter read from disk (io_uring, O_DIRECT) into the daemon, as the daemon timed it"
cold=""
for s in sql json support; do
	"$bin/loradctl" --socket "$dir/one-admin.sock" adapters prefetch "$s@v1" >/dev/null
	for _ in $(seq 200); do
		[ "$(metric "$dir/one-admin.sock" lorad_adapter_loads_total "$s@v1")" = 1 ] && break
		sleep 0.01
	done
	secs=$(metric "$dir/one-admin.sock" lorad_adapter_load_seconds_total "$s@v1")
	bytes=$(du -b "demo/adapters/$s/adapter_model.safetensors" | cut -f1)
	ms=$(awk -v s="$secs" 'BEGIN { printf "%.2f", s * 1000 }')
	printf '   %-8s %7.1f KiB in %s ms\n' "$s" "$(awk -v b="$bytes" 'BEGIN { print b / 1024 }')" "$ms"
	cold="$cold $s $ms ms,"
done

echo
echo "== held-out prompts, 3 of each skill, from 4 client processes at once: the skill \"auto\" chose,"
echo "   its output (ok: exactly the expected text), and the base model alone on the same prompt"
"$bin/skill_eval" --socket "$dir/one.sock" --heldout demo/heldout.jsonl --per-skill 3 --procs 4 \
	--modes auto,base --show | sed -n '/^skill /q;p'

echo
echo "== every held-out prompt to its skill's adapter, to the base model and to \"auto\", 4 client processes:"
"$bin/skill_eval" --socket "$dir/one.sock" --heldout demo/heldout.jsonl --procs 4 | tee "$dir/eval.txt"
tps=$(awk '/^throughput:/ { print $(NF-1) }' "$dir/eval.txt")

echo
echo "== prompts with values never seen in training (demo/unseen.jsonl, made by demo/unseen.py): real names,"
echo "   cities and products, ages 13-19 and 90-99, numbers with runs of one digit, json of 2 to 6 pairs:"
"$bin/skill_eval" --socket "$dir/one.sock" --heldout demo/unseen.jsonl --procs 4

echo
p=$("$bin/skill_eval" --heldout demo/heldout.jsonl --skills sql --get 0 prompt)
echo "== the daemon and the offline engine (lorad-run) give the same text: \"$p\""
printf '   lorad     '
"$bin/lorad-cli" --socket "$dir/one.sock" --skill sql --max-tokens 128 --prompt "$p"
printf '   lorad-run '
"$bin/lorad-run" --model demo/model --adapter demo/adapters/sql --max-tokens 128 --threads 1 --prompt "$p"

read -r pss_one rss_one < <(mem "$one")
stop "$one"

echo
echo "== three daemons, each serving the model with one adapter merged into its weights (lorad --merge-adapter),"
echo "   each sent its skill's held-out prompts from 4 client processes, as the one daemon was:"
pss_three=0 rss_three=0 merged=()
for s in sql json support; do
	start "merged-$s" --model demo/model --merge-adapter "demo/adapters/$s"
	merged+=("$pid")
	"$bin/skill_eval" --socket "$dir/merged-$s.sock" --heldout demo/heldout.jsonl --skills "$s" \
		--modes base --procs 4 >"$dir/merged-$s.txt"
	awk -v s="$s" '$1 == s { printf "   %-8s merged model exact on %s %% of %s prompts\n", s, $4, $2 }' \
		"$dir/merged-$s.txt"
done
for p in "${merged[@]}"; do
	read -r pss rss < <(mem "$p")
	pss_three=$((pss_three + pss))
	rss_three=$((rss_three + rss))
done
for p in "${merged[@]}"; do
	stop "$p"
done

echo
echo "== the transport alone (null engine): 100000 requests one after another"
start null --null-engine
"$bin/lorad-cli" --socket "$dir/null.sock" --prompt-tokens 1,17,250,3,4,5,6,7 --max-tokens 1 --count 100000 |
	tee "$dir/rtt.txt"
rtt=$(sed -n 's/.*round trip p50 \([0-9.]*\) us, p99 \([0-9.]*\) us.*/p50 \1 us, p99 \2 us/p' "$dir/rtt.txt")
stop "$pid"

wall=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
saved=$(awk -v a="$pss_one" -v b="$pss_three" 'BEGIN { printf "%.0f", 100 * (1 - a / b) }')
echo
echo "== summary (measured on this machine)"
echo "   memory, one daemon, base + 3 adapters:     PSS $(mib "$pss_one"), RSS $(mib "$rss_one")"
echo "   memory, 3 daemons, one merged model each:  PSS $(mib "$pss_three"), RSS $(mib "$rss_three")"
echo "                                              one daemon saves $saved % of the PSS"
echo "   adapter cold load from disk:              ${cold%,}"
echo "   IPC round trip, null request:             $rtt"
echo "   generation, held-out mix, 4 clients:      $tps tokens/s"
echo "   make run took                             $wall s"
