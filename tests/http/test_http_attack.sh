#!/usr/bin/env bash
# lorad-http attacked with raw sockets and curl, against the real daemon:
#   usage: test_http_attack.sh BUILD_BIN_DIR REPO_ROOT CASE
# CASE: restart  (the daemon SIGKILLed and started again: served at once,
#                 not failed on the gateway's stale connections)
# LORAD_HTTP_BIN overrides the gateway (to run these against another build).
# Exits 77 (skipped) without curl or python3, as test_http.sh.
set -u
bin=$1
root=$2
case_=$3
gw=${LORAD_HTTP_BIN:-$bin/lorad-http}
command -v curl >/dev/null || { echo "curl is not installed: skipped"; exit 77; }
command -v python3 >/dev/null || { echo "python3 is not installed: skipped"; exit 77; }
cd "$root" || exit 1   # demo/lorad.conf names its files relative to the repository root

dir=$(mktemp -d /tmp/lorad-http-attack.XXXXXX)
dpid= gpid=
fail() {
	echo "FAIL: $*"
	echo "--- lorad log"; tail -20 "$dir/lorad.log" 2>/dev/null
	echo "--- lorad-http log"; tail -20 "$dir/http.log" 2>/dev/null
	exit 1
}
cleanup() {
	for p in $gpid $dpid; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_daemon [MODEL]: the demo (its three skills) or MODEL alone
start_daemon() {
	local args=(--config demo/lorad.conf)
	[ -n "${1:-}" ] && args=(--model "$1")
	"$bin/lorad" "${args[@]}" --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
		--state-dir "$dir/state" --threads 1 >>"$dir/lorad.log" 2>&1 &
	dpid=$!
	for _ in $(seq 100); do [ -S "$dir/a.sock" ] && "$bin/loradctl" --socket "$dir/a.sock" status \
		>/dev/null 2>&1 && return 0; sleep 0.1; done
	fail "the daemon did not start"
}

# start_gateway ARGS...
start_gateway() {
	"$gw" --listen "127.0.0.1:$port" --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
		"$@" >>"$dir/http.log" 2>&1 &
	gpid=$!
	for _ in $(seq 100); do curl -s -o /dev/null "$url/healthz" && return 0; sleep 0.05; done
	fail "lorad-http did not start"
}

# post BODY [CURL ARGS...]: a completion; prints the HTTP status, the body into $dir/out
post() {
	local body=$1
	shift
	curl -s -o "$dir/out" -w '%{http_code}' -H 'Content-Type: application/json' \
		--data-binary "$body" "$@" "$url/v1/completions"
}

inflight() {
	"$bin/loradctl" --socket "$dir/a.sock" --json status |
		python3 -c "import json,sys; print(json.load(sys.stdin)[\"inflight\"])"
}

# raw PY-BYTES [SECONDS]: sends the bytes on a new connection, prints
# "SECONDS-TAKEN STATUS-LINE" of what came back by then (or TIMEOUT, CLOSED)
raw() {
	python3 - "$port" "$1" "${2:-5}" <<'EOF'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(float(sys.argv[3]))
t0 = time.time()
out = b""
try:
    s.sendall(eval(sys.argv[2]))
    while b"\r\n\r\n" not in out:
        b = s.recv(65536)
        if not b:
            break
        out += b
except socket.timeout:
    out += b"TIMEOUT"
except (ConnectionResetError, BrokenPipeError):
    pass
print("%.1f" % (time.time() - t0), out.split(b"\r\n")[0].decode(errors="replace") or "CLOSED")
EOF
}

# fds and resident memory of the gateway
fds() { ls "/proc/$gpid/fd" | wc -l; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$gpid/status"; }

make_slow_model() {   # as test_http.sh: about 50 ms a token here
	"$bin/lorad-mkmodel" "$dir/slow" --vocab 640 --hidden 1024 --layers 8 --heads 16 --kv-heads 4 \
		--ffn 2816 --max-pos 4096 --dtype f32 --seed 5 >/dev/null || fail "lorad-mkmodel"
	cp demo/model/tokenizer.json "$dir/slow/"
	[ -f demo/model/tokenizer_config.json ] && cp demo/model/tokenizer_config.json "$dir/slow/"
}

port=$(free_port)
url="http://127.0.0.1:$port"

case $case_ in
restart)
	# the daemon killed and started again: the gateway's pooled connections
	# to the old one must not fail requests the new one can serve
	start_daemon
	start_gateway
	ps=
	for _ in 1 2 3 4 5 6; do
		post '{"model":"base","prompt":"a","max_tokens":24,"ignore_eos":true}' >/dev/null &
		ps="$ps $!"
	done
	wait $ps
	kill -9 "$dpid"
	wait "$dpid" 2>/dev/null
	start_daemon
	for i in 1 2 3 4 5 6 7 8; do
		st=$(post '{"model":"sql","prompt":"x","max_tokens":2}' --max-time 10)
		[ "$st" = 200 ] || fail "request $i after the daemon's restart: $st $(cat "$dir/out")"
	done
	# and a second time, the pool now holding the new daemon's connections
	ps=
	for _ in 1 2 3 4; do post '{"model":"base","prompt":"a","max_tokens":8}' >/dev/null & ps="$ps $!"; done
	wait $ps
	kill -9 "$dpid"
	wait "$dpid" 2>/dev/null
	st=$(post '{"model":"sql","prompt":"x","max_tokens":2}' --max-time 10)
	[ "$st" = 503 ] || fail "no daemon: $st, want 503"
	start_daemon
	st=$(post '{"model":"sql","prompt":"x","max_tokens":2}' --max-time 10)
	[ "$st" = 200 ] || fail "the first request after the second restart: $st $(cat "$dir/out")"
	;;
*)
	echo "unknown case $case_"
	exit 2
	;;
esac
echo "ok: $case_"
