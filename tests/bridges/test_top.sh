#!/usr/bin/env bash
# loradctl top against the real daemon on the demo model, the daemon dying
# mid-view, and hostile admin sockets (fake_admin.py):
#   test_top.sh BUILD_BIN_DIR REPO_ROOT
set -u
bin=$1
root=$2
here=$(cd "$(dirname "$0")" && pwd)
command -v python3 >/dev/null || { echo "python3 is not installed: skipped"; exit 77; }
cd "$root" || exit 1   # demo/lorad.conf names its files relative to the repository root
dir=$(mktemp -d /tmp/lorad-top-test.XXXXXX)
dpid= fpid= tpid=
fail() {
	echo "FAIL: $*"
	for f in out err; do [ -f "$dir/$f" ] && { echo "--- $f"; head -c 3000 "$dir/$f"; echo; }; done
	echo "--- lorad log"; tail -20 "$dir/lorad.log" 2>/dev/null
	exit 1
}
cleanup() {
	for p in $tpid $fpid $dpid; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

# a device budget of one demo adapter at a time (json ~0.54 MB, sql ~0.43 MB
# on the CPU backend): loading json evicts sql to the host tier
"$bin/lorad" --config demo/lorad.conf --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
	--state-dir "$dir/state" --threads 1 --device-budget 700000 >"$dir/lorad.log" 2>&1 &
dpid=$!
for _ in $(seq 100); do "$bin/loradctl" --socket "$dir/a.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
for i in 1 2 3; do
	"$bin/lorad-cli" --socket "$dir/l.sock" --skill sql --prompt "Which customers ordered twice?" \
		--max-tokens 12 >/dev/null 2>&1 || fail "lorad-cli"
done

# --- plain frames when stdout is not a terminal: two of them, then exit 0
"$bin/loradctl" --socket "$dir/a.sock" top -n 2 -d 0.2 >"$dir/out" 2>"$dir/err" || fail "top -n 2: exit $?"
[ "$(grep -c '^--- frame ' "$dir/out")" = 2 ] || fail "two frames"
[ -s "$dir/err" ] && fail "top complains about a real daemon's metrics"
grep -q $'\033' "$dir/out" && fail "escape sequences in a non-terminal frame"
grep -q 'SKILL  *VERSION  *REQ/S  *TOK/S  *ERR/S  *TTFT_P50  *TTFT_P99  *ITL_P50  *ITL_P99  *WHERE' \
	"$dir/out" || fail "header"
# the first frame: since the start, the sql version served 3 requests and is on the device
python3 - "$dir/out" <<'PY' || fail "frame content"
import sys
frames = open(sys.argv[1]).read().split("--- frame ")[1:]
rows = [l.split() for l in frames[0].splitlines() if l.startswith("sql ")]
assert rows and rows[0][1] == "sql@v1", rows
req_s, tok_s, ttft50 = float(rows[0][2]), float(rows[0][3]), rows[0][5]
assert req_s > 0 and tok_s > 0 and ttft50 != "-", rows[0]
assert rows[0][-1] == "device", rows[0]
# registered versions with no traffic still show where they are
assert any(l.split()[:1] == ["json@v1"] and l.split()[-1] == "disk" for l in frames[0].splitlines()), frames[0]
assert "healthy" in frames[0] and "kv blocks" in frames[0]
# the second frame covers 0.2 s with no traffic: zero rates, no latencies
rows = [l.split() for l in frames[1].splitlines() if l.startswith("sql ")]
assert float(rows[0][2]) == 0 and rows[0][5] == "-", rows[0]
PY
"$bin/loradctl" --socket "$dir/a.sock" top --once >"$dir/out" 2>"$dir/err" || fail "--once"
[ "$(grep -c '^--- frame ' "$dir/out")" = 1 ] || fail "--once: one frame"

# --- adapters prefetch --wait: returns once resident (top then says device);
# an unknown version is a refusal (1); --wait belongs to prefetch only (2)
"$bin/loradctl" --socket "$dir/a.sock" adapters prefetch json@v1 --wait >"$dir/out" 2>"$dir/err" ||
	fail "prefetch --wait: exit $?"
grep -Eqx 'json@v1: resident after [0-9]+\.[0-9] s' "$dir/out" || fail "prefetch --wait: no final line"
"$bin/loradctl" --socket "$dir/a.sock" top --once >"$dir/out" 2>"$dir/err" || fail "top after prefetch"
grep -Eq '^ +json@v1 .* device$' "$dir/out" || fail "json@v1 not on the device after prefetch --wait"
# sql made room for it: off the device, its files still in the pinned host tier
grep -Eq '^sql +sql@v1 .* host$' "$dir/out" || fail "sql@v1 not in the host tier after json@v1 evicted it"
grep -Eq '^ +support@v1 .* disk$' "$dir/out" || fail "support@v1 (never loaded) not on disk"
"$bin/loradctl" --socket "$dir/a.sock" --json adapters list >"$dir/out" 2>"$dir/err" || fail "adapters list"
python3 - "$dir/out" <<'PY' || fail "adapters_list residency"
import json, sys
a = {v["id"]: v for v in json.load(open(sys.argv[1]))["adapters"]}
assert a["sql@v1"]["residency"] == "host" and not a["sql@v1"]["resident"], a["sql@v1"]
assert a["json@v1"]["residency"] == "device", a["json@v1"]
assert a["support@v1"]["residency"] == "disk", a["support@v1"]
PY
# the same in the table an operator reads
"$bin/loradctl" --socket "$dir/a.sock" adapters list >"$dir/out" 2>"$dir/err" || fail "adapters list (table)"
grep -Eq '^VERSION +RESIDENT +WHERE ' "$dir/out" || fail "adapters list: no WHERE column"
grep -Eq '^sql@v1 +no +host ' "$dir/out" || fail "adapters list: sql@v1 not shown in the host tier"
grep -Eq '^json@v1 +yes +device ' "$dir/out" || fail "adapters list: json@v1 not shown on the device"
grep -Eq '^support@v1 +no +disk ' "$dir/out" || fail "adapters list: support@v1 not shown on disk"
# a request for sql loads it from the host tier (no disk read) and evicts json
"$bin/lorad-cli" --socket "$dir/l.sock" --skill sql --prompt "Which customers ordered twice?" \
	--max-tokens 4 >/dev/null 2>&1 || fail "lorad-cli after the eviction"
"$bin/loradctl" --socket "$dir/a.sock" top --once >"$dir/out" 2>"$dir/err" || fail "top after sql again"
grep -Eq '^sql +sql@v1 .* device$' "$dir/out" || fail "sql@v1 not back on the device"
grep -Eq '^ +json@v1 .* host$' "$dir/out" || fail "json@v1 not in the host tier after sql evicted it"
"$bin/loradctl" --socket "$dir/a.sock" adapters prefetch nope@v9 --wait >/dev/null 2>"$dir/err"
[ $? = 1 ] || fail "prefetch --wait of an unknown version: not 1"
"$bin/loradctl" --socket "$dir/a.sock" adapters list --wait >/dev/null 2>"$dir/err"
[ $? = 2 ] || fail "--wait on adapters list: not a usage error"

# --- usage errors: exit 2
for a in "-d 0" "-d x" "-n 0" "-n" "--bogus"; do
	"$bin/loradctl" --socket "$dir/a.sock" top $a >/dev/null 2>"$dir/err"
	[ $? = 2 ] || fail "top $a: not a usage error"
done

# --- the daemon dies mid-view: a clear message, exit 3, within a frame or two
"$bin/loradctl" --socket "$dir/a.sock" top -d 0.2 >"$dir/out" 2>"$dir/err" &
tpid=$!
sleep 1
kill -9 "$dpid"
wait "$dpid" 2>/dev/null
dpid=
for _ in $(seq 50); do kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$tpid" 2>/dev/null && fail "top still runs 5 s after the daemon died"
wait "$tpid"
rc=$?
tpid=
[ "$rc" = 3 ] || fail "top after the daemon died: exit $rc, want 3"
grep -Eq "a.sock: (No such file|Connection refused|closed the connection)" "$dir/err" || fail "no clear message"

# --- hostile admin sockets
fake() {
	kill -9 $fpid 2>/dev/null
	wait $fpid 2>/dev/null
	rm -f "$dir/f.sock"
	python3 "$here/fake_admin.py" "$dir/f.sock" "$1" &
	fpid=$!
	for _ in $(seq 50); do [ -S "$dir/f.sock" ] && return; sleep 0.1; done
	fail "fake_admin $1 did not start"
}
# each: mode, expected exit, a piece of the message; bounded in time
check_hostile() {
	local t0=$(date +%s%N) rc el
	fake "$1"
	timeout 20 "$bin/loradctl" --socket "$dir/f.sock" --timeout 2 top -n 2 -d 0.2 >"$dir/out" 2>"$dir/err"
	rc=$?
	el=$(( ($(date +%s%N) - t0) / 1000000 ))
	[ "$rc" = "$2" ] || fail "$1: exit $rc, want $2"
	grep -q "$3" "$dir/err" || fail "$1: no '$3' on stderr"
	[ "$el" -lt 8000 ] || fail "$1: took $el ms"
}
check_hostile silent 3 "no answer within 2000 ms"
check_hostile dribble 3 "no answer within 2000 ms"
check_hostile flood 3 "reply too long"
check_hostile garbage 3 "not a JSON object"
check_hostile refuse 1 "go away"
# well-formed but evil: two frames, no escape sequence reaches the terminal,
# the bounded row table says what it left out
fake evil
timeout 20 "$bin/loradctl" --socket "$dir/f.sock" --timeout 5 top -n 2 -d 0.2 >"$dir/out" 2>"$dir/err" ||
	fail "evil: exit $?"
[ "$(grep -c '^--- frame ' "$dir/out")" = 2 ] || fail "evil: two frames"
grep -q $'\033' "$dir/out" && fail "evil: an escape sequence reached the output"
grep -q $'\007' "$dir/out" && fail "evil: a BEL reached the output"
grep -q "more series not shown" "$dir/out" || fail "evil: rows not bounded"
grep -q "malformed metrics lines skipped" "$dir/err" || fail "evil: malformed lines not reported"

# the daemon's reply threads all busy for a while: the view skips those
# frames (saying why) and goes on; refused for good, it ends after ten
fake busy
"$bin/loradctl" --socket "$dir/f.sock" --timeout 5 top -d 0.1 >"$dir/out" 2>"$dir/err" &
tpid=$!
for _ in $(seq 100); do
	[ "$(grep -c '^--- frame ' "$dir/out")" -ge 2 ] && break
	sleep 0.1
done
kill -TERM $tpid 2>/dev/null
wait $tpid
[ "$(grep -c '^--- frame ' "$dir/out")" -ge 2 ] || fail "busy: no frames after the refusals"
[ "$(grep -c 'being written already (the limit)' "$dir/err")" = 3 ] || fail "busy: the refusals not said"
# one-shot commands: a list refused as busy is asked again (0.8 s in all)
fake busy
"$bin/loradctl" --socket "$dir/f.sock" --timeout 5 metrics >"$dir/out" 2>"$dir/err" ||
	fail "metrics refused as busy three times: exit $?"
grep -q '^lorad_engine_waiting' "$dir/out" || fail "metrics after the busy refusals: not the text"
# a daemon older than ABI 1.5 said busy with EBUSY: asked again too
fake oldbusy
"$bin/loradctl" --socket "$dir/f.sock" --timeout 5 metrics >"$dir/out" 2>"$dir/err" ||
	fail "metrics an older daemon refused as busy three times: exit $?"
grep -q '^lorad_engine_waiting' "$dir/out" || fail "metrics after an older daemon's busy refusals: not the text"
fake allbusy
t0=$(date +%s%N)
"$bin/loradctl" --socket "$dir/f.sock" --timeout 5 route show >"$dir/out" 2>"$dir/err"
rc=$? ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$rc" = 1 ] || fail "route show, always busy: exit $rc, want 1"
grep -q 'being written already (the limit)' "$dir/err" || fail "route show, always busy: not said"
[ "$ms" -ge 700 ] && [ "$ms" -lt 5000 ] || fail "route show, always busy: answered in $ms ms, not after the retries"
fake refuse
t0=$(date +%s%N)
timeout 20 "$bin/loradctl" --socket "$dir/f.sock" --timeout 2 top -d 0.1 >"$dir/out" 2>"$dir/err"
rc=$?
[ "$rc" = 1 ] || fail "refused for good: exit $rc, want 1"
[ "$(grep -c 'go away' "$dir/err")" = 10 ] || fail "refused for good: not ten tries"

# --- adapters prefetch --wait on a terminal (a pty): one line redrawn with \r,
# percentages that rise, only loradctl's own words, then one plain line; off
# a terminal only that line. A failed load: its error without control
# characters, exit 1. (Against fake_admin.py "load": a real load of the demo
# adapters is over before a second frame.)
ontty() {   # ontty OUT CMD...: CMD on a pseudo-terminal, what it writes into OUT
	python3 "$here/ontty.py" "$@"
}
fake load
ontty "$dir/out" "$bin/loradctl" --socket "$dir/f.sock" --timeout 5 adapters prefetch big@v1 --wait ||
	fail "prefetch --wait on a terminal: exit $?"
python3 - "$dir/out" <<'PY' || fail "progress on a terminal"
import re, sys
raw = open(sys.argv[1], "rb").read().decode()
assert "\x1b[2J" not in raw and "\x1b]" not in raw, repr(raw)
frames = [f for f in raw.split("\r") if f.strip()]
shown = [f.replace("\x1b[K", "") for f in frames]
pcts = [int(m.group(1)) for f in shown for m in [re.search(r"(\d+)% of 4\.0 MiB", f)] if m]
assert pcts == sorted(pcts) and pcts[0] == 0 and 75 in pcts and len(pcts) >= 3, (pcts, shown)
words = {f.split()[1] for f in shown[:-1]}
assert words <= {"reading", "verified", "building", "loading"}, shown
# the terminal writes the final newline as \r\n
assert re.fullmatch(r"big@v1: resident after \d+\.\d s\n?", shown[-1]) and raw.endswith("\n"), shown
PY
fake load
"$bin/loradctl" --socket "$dir/f.sock" --timeout 5 adapters prefetch big@v1 --wait >"$dir/out" 2>"$dir/err" ||
	fail "prefetch --wait off a terminal: exit $?"
grep -q $'\r' "$dir/out" && fail "a redraw off a terminal"
grep -Eqx 'big@v1: resident after [0-9]+\.[0-9] s' "$dir/out" || fail "no plain final line"
[ "$(wc -l <"$dir/out")" = 1 ] || fail "more than the final line off a terminal"
ontty "$dir/out" "$bin/loradctl" --socket "$dir/f.sock" --timeout 5 adapters prefetch bad@v1 --wait
[ $? = 1 ] || fail "a failed load on a terminal: not 1"
grep -q $'\033\]' "$dir/out" && fail "an escape sequence of the error reached the terminal"
grep -q $'\302\233' "$dir/out" && fail "a C1 control of the error reached the terminal"
grep -q "bad@v1: ?\]0;pwned?disk on fire?2J" "$dir/out" || fail "the error, cleaned, not shown"
echo "ok"
