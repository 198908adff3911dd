#!/usr/bin/env bash
# loradctl adapters add of a large adapter (about 80 MB) against the real
# daemon, on a terminal and off one:
#   test_add_progress.sh BUILD_BIN_DIR
# - on a pseudo-terminal: at least one progress line, redrawn in place with
#   \r, in loradctl's own words with a percentage of the adapter's size that
#   only grows; the line wiped; then the answer as loradctl always printed it
# - off a terminal, and on one with --quiet or --json: the answer only
# - the daemon killed while an add waits: exit 3 within 3 s, a clear message
# - --timeout 1 while the state write takes 2 s: exit 3 after about 1 s
# The daemon's state writes sleep 2 s (--debug-slow-fsync-ms), so every add
# lasts long enough for loradctl's polls (every 250 ms) to see it.
set -u
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
command -v python3 >/dev/null || { echo "python3 is not installed: skipped"; exit 77; }
dir=$(mktemp -d /tmp/lorad-addprog-test.XXXXXX)
dpid= tpid=
fail() {
	echo "FAIL: $*"
	for f in out err; do [ -f "$dir/$f" ] && { echo "--- $f"; head -c 3000 "$dir/$f" | cat -v; echo; }; done
	echo "--- lorad log"; tail -20 "$dir/lorad.log" 2>/dev/null
	exit 1
}
cleanup() {
	for p in $tpid $dpid; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
ctl() { "$bin/loradctl" --socket "$dir/a.sock" "$@"; }
ontty() { python3 "$here/ontty.py" "$@"; }
start() {
	rm -f "$dir/l.sock" "$dir/a.sock"
	"$bin/lorad" --model "$dir/m" --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
		--state-dir "$dir/state" --threads 1 --debug-slow-fsync-ms 2000 >>"$dir/lorad.log" 2>&1 &
	dpid=$!
	for _ in $(seq 300); do ctl status >/dev/null 2>&1 && return; sleep 0.1; done
	fail "lorad did not start"
}
mk() {
	"$bin/lorad-mkmodel" "$dir/m" --layers 8 --hidden 512 --heads 8 --kv-heads 8 --ffn 1408 \
		--vocab 256 --dtype bf16 --seed 3 "$@" >/dev/null || fail "lorad-mkmodel $*"
}
mk
mk --adapter big --rank 256 --alpha 16 --targets q,k,v,o,gate,up,down --no-model   # f32: 77 MiB
mib=$(python3 -c "import os,sys; d=sys.argv[1]; print('%.1f' % (sum(os.path.getsize(os.path.join(d, f)) for f in ('adapter_config.json', 'adapter_model.safetensors')) / 1048576))" "$dir/m/big")
start

# --- nothing in flight: the table's header only
ctl adapters jobs >"$dir/out" 2>"$dir/err" || fail "adapters jobs: exit $?"
[ "$(wc -l <"$dir/out")" = 1 ] && grep -Eq '^VERSION +STATE +PROGRESS +ELAPSED +PATH$' "$dir/out" ||
	fail "adapters jobs of an idle daemon"

# --- on a terminal: progress lines, then the answer
ontty "$dir/out" "$bin/loradctl" --socket "$dir/a.sock" adapters add big@v1 "$dir/m/big" ||
	fail "adapters add on a terminal: exit $?"
python3 - "$dir/out" "$mib" <<'PY' || fail "progress on a terminal"
import re, sys
raw = open(sys.argv[1], "rb").read().decode()
mib = re.escape(sys.argv[2])
assert "\x1b[2J" not in raw and "\x1b]" not in raw, repr(raw)
frames = [f.replace("\x1b[K", "") for f in raw.split("\r") if f.strip()]
line = re.compile(r"big@v1: (reading|checking|registering) +(\d+)% of " + mib +
                  r" MiB(, \d+\.\d MiB/s)?")
shown = [f for f in frames if line.fullmatch(f)]
assert shown, frames
# the rate only while bytes still come
assert all(", " not in f for f in shown if not f.startswith("big@v1: reading")), shown
pcts = [int(line.fullmatch(f).group(2)) for f in shown]
assert pcts == sorted(pcts) and pcts[-1] == 100, pcts
# nothing but progress lines before the answer; the line wiped first
assert all(line.fullmatch(f) for f in frames[:-1]), frames
assert "\r\x1b[Kregistered " in raw, repr(raw[-400:])
assert re.match(r'registered big@v1 \(identity [0-9a-f]{12}\) from /', frames[-1]), frames[-1]
assert raw.endswith("\n")
print("%d progress lines on the terminal: %s ... %s" % (len(shown), shown[0], shown[-1]))
PY

# --- off a terminal: the answer as before, one line, nothing drawn
ctl adapters add big@v2 "$dir/m/big" >"$dir/out" 2>"$dir/err" || fail "adapters add off a terminal: exit $?"
[ "$(wc -l <"$dir/out")" = 1 ] || fail "more than the answer off a terminal"
grep -Eq '^registered big@v2 \(identity [0-9a-f]{12}\) from /' "$dir/out" || fail "the answer off a terminal: $(cat "$dir/out")"
grep -q $'[\r\033]' "$dir/out" && fail "a redraw off a terminal"
[ -s "$dir/err" ] && fail "stderr off a terminal"

# --- on a terminal with --quiet, or --json: the answer only
ontty "$dir/out" "$bin/loradctl" --socket "$dir/a.sock" --quiet adapters add big@v3 "$dir/m/big" ||
	fail "--quiet: exit $?"
grep -q $'\033' "$dir/out" && fail "--quiet: a progress line drawn"
grep -Eq '^registered big@v3 \(identity [0-9a-f]{12}\) from /' "$dir/out" || fail "--quiet: the answer"
ontty "$dir/out" "$bin/loradctl" --socket "$dir/a.sock" adapters add big@v4 "$dir/m/big" --json ||
	fail "--json: exit $?"
grep -q $'\033' "$dir/out" && fail "--json: a progress line drawn"
tr -d '\r' <"$dir/out" | python3 -c "import json, sys; assert json.load(sys.stdin)['adapter']['id'] == 'big@v4'" ||
	fail "--json: not the daemon's JSON"

# --- the daemon dies while an add waits for its state write: exit 3, soon
ontty "$dir/out" "$bin/loradctl" --socket "$dir/a.sock" adapters add big@v5 "$dir/m/big" &
tpid=$!
for _ in $(seq 200); do ctl adapters jobs 2>/dev/null | grep -q '^big@v5 .*registering' && break; sleep 0.05; done
ctl adapters jobs 2>/dev/null | grep -q '^big@v5 .*registering' || fail "big@v5 never listed registering"
# and loradctl has drawn it (its polls come every 250 ms; a fast disk reads
# the adapter before the first)
for _ in $(seq 60); do grep -Eq 'big@v5: (reading|checking|registering) ' "$dir/out" && break; sleep 0.05; done
t0=$(date +%s%N)
kill -9 "$dpid"
wait "$dpid" 2>/dev/null
dpid=
for _ in $(seq 50); do kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$tpid" 2>/dev/null && fail "loradctl still waits 5 s after the daemon died"
wait "$tpid"
rc=$?
tpid=
el=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$rc" = 3 ] || fail "add after the daemon died: exit $rc, want 3"
[ "$el" -lt 3000 ] || fail "add after the daemon died: $el ms"
grep -q "a.sock: closed the connection without a reply" "$dir/out" || fail "no clear message"
grep -Eq 'big@v5: (reading|checking|registering) ' "$dir/out" || fail "no progress line before the daemon died"

# --- --timeout: the answer does not come within 1 s (the write takes 2)
start
t0=$(date +%s%N)
ontty "$dir/out" "$bin/loradctl" --socket "$dir/a.sock" --timeout 1 adapters add big@v6 "$dir/m/big"
rc=$?
el=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$rc" = 3 ] || fail "--timeout 1: exit $rc, want 3"
[ "$el" -lt 2500 ] || fail "--timeout 1: $el ms"
grep -q "no answer within 1000 ms" "$dir/out" || fail "--timeout 1: no clear message"
echo "ok"
