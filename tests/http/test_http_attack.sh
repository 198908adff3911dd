#!/usr/bin/env bash
# lorad-http attacked with raw sockets and curl, against the real daemon:
#   usage: test_http_attack.sh BUILD_BIN_DIR REPO_ROOT CASE
# CASE: head     (a body over --max-body refused before it is read, one
#                 without end cut, methods and paths answered from the head;
#                 no fd or memory kept)
#       utf8     (bodies that are not UTF-8: one 400 that says so)
#       stream   (a stream the daemon refuses at once: its HTTP status and
#                 one error, not 200 and an event)
#       slow     (clients that trickle a request's head or body, a byte at a
#                 time, in every connection: cut at --timeout, others served)
#       restart  (the daemon SIGKILLed and started again: served at once,
#                 not failed on the gateway's stale connections)
#       leave    (a client that leaves a whole completion: cancelled)
#       stop     (SIGTERM of the gateway with a completion and a stream open:
#                 both answered and cancelled, the gateway gone in seconds)
#       nulkey   (object keys with \u0000, which json-c would cut at the NUL,
#                 and what json-c takes that JSON is not: single quotes,
#                 comments: one 400, not a request read as another)
#       timeout  (a stream cut by --request-timeout: its text, one error event
#                 of type timeout and [DONE], not a finish_reason "length")
#       busy     (an admin socket that says busy, as the daemon does while
#                 eight replies of metrics and lists are being written: a
#                 scrape asked again and answered, not a 503 gap; always
#                 busy: 503 with Retry-After and the daemon's words, after
#                 the retries; another refusal: 503 at once)
# LORAD_HTTP_BIN overrides the gateway (to run these against another build).
# Exits 77 (skipped) without curl or python3, as test_http.sh.
set -u
bin=$1
root=$2
case_=$3
gw=${LORAD_HTTP_BIN:-$bin/lorad-http}
command -v curl >/dev/null || { echo "curl is not installed: skipped"; exit 77; }
command -v python3 >/dev/null || { echo "python3 is not installed: skipped"; exit 77; }
here=$(cd "$(dirname "$0")" && pwd)   # before the cd: $0 may be relative
cd "$root" || exit 1   # demo/lorad.conf names its files relative to the repository root

dir=$(mktemp -d /tmp/lorad-http-attack.XXXXXX)
dpid= gpid= fpid=
. "$here/lib.sh"
cleanup() {
	for p in $gpid $dpid $fpid; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

# start_gateway ARGS...
start_gateway() {
	"$gw" --listen "127.0.0.1:$port" --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
		"$@" >>"$dir/http.log" 2>&1 &
	gpid=$!
	for _ in $(seq 100); do curl -s -o /dev/null "$url/healthz" && return 0; sleep 0.05; done
	fail "lorad-http did not start"
}

# post BODY [CURL ARGS...]: a completion (in place of lib.sh's post, which
# takes a path first); prints the HTTP status, the body into $dir/out
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

port=$(free_port)
url="http://127.0.0.1:$port"

case $case_ in
head)
	start_daemon
	start_gateway --max-body 4096 --timeout 5
	hdr='b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
	# announced over the limit: 413 at once, with nothing of the body sent
	r=$(raw "$hdr"'Content-Length: 100000000000\r\n\r\n"' 3)
	[ "${r#* }" = "HTTP/1.1 413 Content Too Large" ] || [ "${r#* }" = "HTTP/1.1 413 Payload Too Large" ] ||
		fail "an announced 100 GB body: '$r', want 413 before the body"
	[ "${r%% *}" = 0.0 ] || fail "413 after ${r%% *} s"
	# a chunked body without end: cut, not read for as long as it comes
	python3 - "$port" <<'EOF' || fail "a chunked body without end was read on"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
t0 = time.time()
try:
    while time.time() - t0 < 4:
        s.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        time.sleep(0.001)
    sys.exit("still reading after 4 s")
except (ConnectionResetError, BrokenPipeError):
    pass
EOF
	# one that stops a little past the limit still gets its 413
	st=$(python3 -c 'print("{\"model\":\"sql\",\"prompt\":\"" + "x"*6000 + "\"}")' |
		curl -s -o "$dir/out" -w '%{http_code}' -H 'Transfer-Encoding: chunked' --data-binary @- \
		"$url/v1/completions")
	[ "$st" = 413 ] || fail "a chunked body a little over: $st"
	grep -q 'max-body (4096 bytes)' "$dir/out" || fail "413 does not name the limit: $(cat "$dir/out")"

	# paths and methods, answered from the head: an existing path is not "no such path"
	check() {   # METHOD PATH STATUS [ALLOW]
		if [ "$1" = HEAD ]; then
			curl -s -o "$dir/out" -D "$dir/hdr" -I "$url$2"
		else
			curl -s -o "$dir/out" -D "$dir/hdr" -X "$1" "$url$2"
		fi
		st=$(awk 'NR==1 {print $2}' "$dir/hdr")
		[ "$st" = "$3" ] || fail "$1 $2: $st, want $3: $(cat "$dir/out")"
		if [ -n "${4:-}" ]; then
			grep -qi "^Allow: $4" "$dir/hdr" || fail "$1 $2: no Allow: $4"
			python3 -c "import json; e=json.load(open('$dir/out'))['error']; assert '$2' in e['message'] and e['code'] == 'method_not_allowed', e" ||
				fail "$1 $2: $(cat "$dir/out")"
		fi
	}
	check HEAD /healthz 200
	check HEAD /v1/models 200
	check GET /v1/models 200
	check OPTIONS /v1/models 405 'GET, HEAD'
	check DELETE /metrics 405 'GET, HEAD'
	check PUT /v1/completions 405 POST
	check GET /v1/completions 405 POST
	check GET /v1/nothing 404
	check POST '/v1/completions/..' 404
	# a method of bytes 0x80 and up, cut at 20 bytes in the middle of a
	# character: the 405's body stays valid UTF-8 JSON (it echoed the cut)
	python3 - "$port" <<'EOF' || fail "a 405 for a method that is not ASCII"
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(5)
s.sendall(b"G" + "\u00e9".encode() * 10 + b"T /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
head, _, body = out.partition(b"\r\n\r\n")
assert head.startswith(b"HTTP/1.1 405"), head[:60]
e = json.loads(body.decode("utf-8"))["error"]
assert e["code"] == "method_not_allowed", e
EOF
	# a refused PUT with a body: the body is not waited for
	r=$(raw 'b"PUT /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"' 3)
	[ "${r#* }" = "HTTP/1.1 405 Method Not Allowed" ] && [ "${r%% *}" = 0.0 ] || fail "PUT with a body: $r"

	# none of it keeps an fd or memory: 200 rounds of the refusals
	f0=$(fds) m0=$(rss_kb)
	python3 - "$port" <<'EOF'
import socket, sys
port = int(sys.argv[1])
head = b"HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
reqs = [b"POST /v1/completions " + head + b"Content-Length: 99999999\r\n\r\n",
        b"OPTIONS /v1/models " + head + b"\r\n",
        b"POST /v1/completions " + head + b"Content-Length: 11\r\n\r\n{\"model\":\"\xff",
        b"POST /v1/completions " + head + b"Transfer-Encoding: chunked\r\n\r\n" +
        b"2000\r\n" + b"y" * 8192 + b"\r\n0\r\n\r\n"]
for i in range(200):
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(reqs[i % len(reqs)])
        s.settimeout(5)
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
EOF
	sleep 0.5
	f1=$(fds) m1=$(rss_kb)
	[ "$f1" -le $((f0 + 2)) ] || fail "fds $f0 -> $f1 after 200 refused requests"
	[ "$m1" -le $((m0 + 8192)) ] || fail "VmRSS $m0 -> $m1 kB after 200 refused requests"
	st=$(post '{"model":"sql","prompt":"x","max_tokens":2}')
	[ "$st" = 200 ] || fail "a completion after the attacks: $st"
	;;
utf8)
	start_daemon
	start_gateway
	# not UTF-8: refused at the boundary, saying so (not a grammar's message)
	for b in '{"model":"base","prompt":"\xff\xfe x","max_tokens":2}' '{"model":"base","prompt":"x\xed\xa0\x80"}' '{"model":"\xc3","prompt":"x"}' \
		 '{"model":"base","prompt":"x","stop":["\xed\xa0\x80"]}'; do
		printf "$b" >"$dir/body"
		st=$(curl -s -o "$dir/out" -w '%{http_code}' --data-binary @"$dir/body" "$url/v1/completions")
		[ "$st" = 400 ] || fail "not UTF-8 ($b): $st $(cat "$dir/out")"
		python3 -c "import json; e=json.loads(open('$dir/out','rb').read().decode())['error']; assert 'UTF-8' in e['message'], e" ||
			fail "not UTF-8 ($b): $(cat "$dir/out")"
	done
	st=$(post '{"model":"base","prompt":"caf\u00e9 \u20ac","max_tokens":2}')
	[ "$st" = 200 ] || fail "UTF-8 by escapes: $st $(cat "$dir/out")"
	;;
stream)
	start_daemon
	start_gateway
	check_refused() {   # STATUS PARAM BODY: a stream refused with one OpenAI error
		local st
		st=$(curl -s -o "$dir/out" -D "$dir/hdr" -w '%{http_code}' -N --max-time 10 \
			-H 'Content-Type: application/json' --data-binary "$3" "$url/v1/completions")
		[ "$st" = "$1" ] || fail "stream '$3': HTTP $st, want $1: $(cat "$dir/out")"
		grep -qi '^Content-Type: application/json' "$dir/hdr" || fail "stream '$3': not JSON: $(cat "$dir/hdr")"
		python3 -c "import json; e=json.load(open('$dir/out'))['error']; assert e['param'] == '$2', e" ||
			fail "stream '$3': $(cat "$dir/out")"
	}
	check_refused 404 model '{"model":"nosuch","prompt":"x","stream":true}'
	# two refusals may come in separate reaps: the head waits for both
	# (it went out 200 after the first, 1 run in 6 to 10 before)
	for _ in $(seq 12); do
		check_refused 404 model '{"model":"sql@v9","prompt":["x","y","z"],"stream":true}'
	done
	printf '{"model":"base","prompt":"x\xed\xa0\x80","stream":true}' >"$dir/body"
	check_refused 400 prompt "$(cat "$dir/body")"
	# a stream the daemon takes is one still, even when it ends at once
	curl -sN --max-time 10 -H 'Content-Type: application/json' --data-binary \
		'{"model":"sql","prompt":"x","max_tokens":1,"stream":true,"stream_options":{"include_usage":true}}' \
		"$url/v1/completions" >"$dir/sse"
	python3 - "$dir/sse" <<'EOF' || fail "a short stream: $(cat "$dir/sse")"
import json, sys
ev = [l for l in open(sys.argv[1]).read().split("\n\n") if l.strip()]
assert ev[-1] == "data: [DONE]", ev
assert json.loads(ev[-2][6:])["usage"]["completion_tokens"] == 1, ev
assert json.loads(ev[0][6:])["choices"][0]["finish_reason"] == "length", ev
EOF
	;;
slow)
	start_daemon
	start_gateway --max-connections 3 --timeout 2
	# slowloris: a byte every 0.5 s, never idle for MHD, never done; in
	# every connection the gateway takes, for 6 s. A client beside them
	# is served once --timeout has cut them, not when they give up.
	for part in head body keepalive; do
		python3 - "$port" "$part" <<'EOF' &
import socket, sys, time
port, part = int(sys.argv[1]), sys.argv[2]
body = b'{"model":"base","prompt":"a","max_tokens":2}'
head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
ss = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
for s in ss:
    if part == "body":
        s.sendall(head)
    elif part == "keepalive":   # one request in full, the next trickled
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(4096)
data = body if part == "body" else head
t0 = time.time()
for i in range(len(data) - 1):
    if time.time() - t0 > 6:
        break
    for s in ss:
        try:
            s.send(data[i:i + 1])
        except OSError:
            pass
    time.sleep(0.5)
EOF
		sl=$!
		sleep 0.5
		t0=$(date +%s.%N)
		st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 7 "$url/healthz")
		t=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
		[ "$st" = 200 ] || fail "$part trickled in every connection: healthz $st after $t s"
		python3 -c "import sys; sys.exit(not $t <= 4)" || fail "$part trickled: healthz waited $t s"
		wait "$sl"
	done
	# and completions are served as before
	st=$(post '{"model":"base","prompt":"a","max_tokens":10}' --max-time 10)
	[ "$st" = 200 ] || fail "a completion after the slow clients: $st"
	# a kept-alive connection idle for most of --timeout, then a request
	# whose body takes 1 s: timed from its request line, not from the end
	# of the answer before (it was cut)
	python3 - "$port" <<'EOF' || fail "a request after an idle keep-alive: cut"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(8)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
assert s.recv(4096).startswith(b"HTTP/1.1 200"), "healthz"
time.sleep(1.5)
body = b'{"model":"base","prompt":"a","max_tokens":2}'
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(body))
for i in range(0, len(body), 12):
    time.sleep(0.25)
    s.sendall(body[i:i + 12])
out = s.recv(4096)
assert out.startswith(b"HTTP/1.1 200"), out[:80]
EOF
	;;
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
leave)
	make_slow_model
	start_daemon "$dir/slow"
	start_gateway
	# a whole (not streamed) completion of minutes whose client leaves: cancelled
	curl -s -o /dev/null --max-time 1.5 -H 'Content-Type: application/json' --data-binary \
		'{"model":"base","prompt":"a","max_tokens":3000,"ignore_eos":true}' "$url/v1/completions"
	for _ in $(seq 30); do [ "$(inflight)" = 0 ] && break; sleep 0.1; done
	[ "$(inflight)" = 0 ] || fail "a whole completion whose client left still runs"
	st=$(post '{"model":"base","prompt":"a","max_tokens":4}' --max-time 10)
	[ "$st" = 200 ] || fail "served after a client left: $st"
	;;
stop)
	make_slow_model
	start_daemon "$dir/slow"
	start_gateway
	# SIGTERM with a whole completion and a stream open: both are answered
	# (503, an error event and [DONE]), cancelled, and the gateway is gone
	post '{"model":"base","prompt":"a","max_tokens":3000,"ignore_eos":true}' --max-time 30 >"$dir/st_whole" &
	w=$!
	curl -sN --max-time 30 -H 'Content-Type: application/json' --data-binary \
		'{"model":"base","prompt":"a","max_tokens":3000,"ignore_eos":true,"stream":true}' \
		"$url/v1/completions" >"$dir/sse" &
	s=$!
	for _ in $(seq 50); do [ "$(inflight)" = 2 ] && break; sleep 0.1; done
	[ "$(inflight)" = 2 ] || fail "the two long completions are not running"
	t0=$(date +%s)
	kill -TERM "$gpid"
	for _ in $(seq 100); do kill -0 "$gpid" 2>/dev/null || break; sleep 0.1; done
	kill -0 "$gpid" 2>/dev/null && fail "lorad-http still runs 10 s after SIGTERM"
	wait "$gpid"
	rc=$?
	gpid=
	[ "$rc" = 0 ] || fail "lorad-http exit status $rc after SIGTERM"
	wait "$w" "$s"
	[ $(($(date +%s) - t0)) -le 6 ] || fail "SIGTERM took $(($(date +%s) - t0)) s"
	[ "$(cat "$dir/st_whole")" = 503 ] || fail "the whole completion: $(cat "$dir/st_whole") $(cat "$dir/out")"
	grep -q stopping "$dir/out" || fail "the 503 does not say why: $(cat "$dir/out")"
	python3 - "$dir/sse" <<'EOF' || fail "the stream at SIGTERM: $(tail -c 400 "$dir/sse")"
import json, sys
ev = [l for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
assert ev[-1] == "data: [DONE]", ev[-1:]
assert "stopping" in json.loads(ev[-2][6:])["error"]["message"], ev[-2]
EOF
	for _ in $(seq 30); do [ "$(inflight)" = 0 ] && break; sleep 0.1; done
	[ "$(inflight)" = 0 ] || fail "completions still run in the daemon after the gateway stopped"
	;;
nulkey)
	start_daemon
	start_gateway
	# "model\u0000x" would be read as "model" (200 before): refused, naming it
	st=$(post '{"model\u0000x":"sql","prompt":"x","max_tokens":2}' --max-time 10)
	[ "$st" = 400 ] || fail "a top-level key with \\u0000: $st $(cat "$dir/out")"
	grep -q 'NUL' "$dir/out" || fail "the 400 does not say why: $(cat "$dir/out")"
	# json-c also takes strings in single quotes and (but in strict mode)
	# comments, where a scan for such keys would not see them: refused
	for body in "{'model\\u0000x':\"sql\",\"prompt\":\"x\",\"max_tokens\":2}" \
		'{"model\u0000x" /**/ :"sql","prompt":"x","max_tokens":2}' \
		'{"model":"sql" /* " */,"prompt":"x","max_tokens":2 /* \u0000" : */}' \
		'{"model":"sql","prompt":'"'x'"',"max_tokens":2}'; do
		st=$(post "$body" --max-time 10)
		[ "$st" = 400 ] || fail "$body: $st $(cat "$dir/out")"
	done
	# a schema's property "a\u0000b" would be compiled as "a"
	st=$(post '{"model":"sql","prompt":"x","max_tokens":2,"response_format":{"type":"json_schema",
		"json_schema":{"name":"n","schema":{"type":"object","properties":{"a\u0000b":{"type":"string"}}}}}}' \
		--max-time 10)
	[ "$st" = 400 ] || fail "a schema key with \\u0000: $st $(cat "$dir/out")"
	python3 - "$dir/out" <<'EOF' || fail "the schema key's 400: $(cat "$dir/out")"
import json, sys
e = json.load(open(sys.argv[1]))["error"]
assert e["param"] == "response_format" and "NUL" in e["message"], e
EOF
	# the same six characters after an escaped backslash are no NUL: served
	st=$(post '{"model":"sql","prompt":"x","max_tokens":2,"response_format":{"type":"json_schema",
		"json_schema":{"name":"n","schema":{"type":"object","properties":{"a\\u0000b":{"type":"string"}}}}}}' \
		--max-time 30)
	[ "$st" = 200 ] || fail "a key with an escaped backslash before u0000: $st $(cat "$dir/out")"
	# and in a value, where json-c keeps the length, it is not this refusal
	st=$(post '{"model":"sql","prompt":"x","max_tokens":2,"user":"a\u0000b"}' --max-time 30)
	grep -q 'object key' "$dir/out" && fail "a value with \\u0000 refused as a key: $(cat "$dir/out")"
	;;
timeout)
	make_slow_model
	start_daemon "$dir/slow"
	start_gateway --request-timeout 1
	curl -sN --max-time 30 -H 'Content-Type: application/json' --data-binary \
		'{"model":"base","prompt":"a","max_tokens":3000,"ignore_eos":true,"stream":true,
		  "stream_options":{"include_usage":true}}' "$url/v1/completions" >"$dir/sse"
	python3 - "$dir/sse" <<'EOF' || fail "the stream cut by --request-timeout: $(tail -c 600 "$dir/sse")"
import json, sys
ev = [l[6:] for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
assert ev[-1] == "[DONE]", ev[-1:]
js = [json.loads(e) for e in ev[:-1]]
errs = [j["error"] for j in js if "error" in j]
assert len(errs) == 1 and errs[0]["type"] == "timeout" and "--request-timeout" in errs[0]["message"], errs
fins = [c["finish_reason"] for j in js for c in j.get("choices", []) if c.get("finish_reason")]
assert fins == [], fins
assert any(c.get("text") for j in js for c in j.get("choices", [])), "no text before the cut"
assert "usage" in js[-1] and js[-1]["usage"]["completion_tokens"] > 0, js[-1]
EOF
	for _ in $(seq 30); do [ "$(inflight)" = 0 ] && break; sleep 0.1; done
	[ "$(inflight)" = 0 ] || fail "the cut stream still runs in the daemon"
	# a whole completion: 504, as before
	st=$(post '{"model":"base","prompt":"a","max_tokens":3000,"ignore_eos":true}' --max-time 30)
	[ "$st" = 504 ] || fail "a whole completion past --request-timeout: $st $(cat "$dir/out")"
	;;
busy)
	fake() {   # MODE: fake_admin.py on the gateway's admin socket
		[ -n "$fpid" ] && { kill "$fpid" 2>/dev/null; wait "$fpid" 2>/dev/null; }
		rm -f "$dir/a.sock"
		python3 "$here/../bridges/fake_admin.py" "$dir/a.sock" "$1" &
		fpid=$!
		for _ in $(seq 100); do [ -S "$dir/a.sock" ] && return 0; sleep 0.05; done
		fail "fake admin ($1) did not start"
	}
	# get PATH: "STATUS SECONDS", the body in $dir/out, the head in $dir/head
	get() {
		curl -s -o "$dir/out" -D "$dir/head" -w '%{http_code} %{time_total}' "$url$1"
	}
	fake busy
	# a daemon for the completions' socket (/healthz takes a client from
	# it); its own admin socket is elsewhere: the gateway's is the fake
	"$bin/lorad" --config demo/lorad.conf --socket "$dir/l.sock" --admin-socket "$dir/real-a.sock" \
		--state-dir "$dir/state" --threads 1 >>"$dir/lorad.log" 2>&1 &
	dpid=$!
	for _ in $(seq 100); do [ -S "$dir/l.sock" ] && break; sleep 0.1; done
	start_gateway
	r=$(get /metrics)
	[ "${r% *}" = 200 ] || fail "a scrape the daemon refused three times as busy: $r $(cat "$dir/out")"
	grep -q '^lorad_engine_waiting' "$dir/out" || fail "the scrape's text is not the daemon's"
	# a daemon older than ABI 1.5 said busy with EBUSY: asked again too
	fake oldbusy
	r=$(get /metrics)
	[ "${r% *}" = 200 ] || fail "a scrape an older daemon refused three times as busy: $r $(cat "$dir/out")"
	fake allbusy
	r=$(get /metrics)
	[ "${r% *}" = 503 ] || fail "always busy: $r"
	grep -qi '^Retry-After: 1' "$dir/head" || fail "503 without Retry-After: $(cat "$dir/head")"
	grep -q 'being written already (the limit); try again' "$dir/out" ||
		fail "503 without the daemon's words: $(cat "$dir/out")"
	awk -v t="${r#* }" 'BEGIN { exit !(t >= 0.7 && t < 3) }' ||
		fail "always busy answered in ${r#* } s: not after the retries (0.8 s)"
	r=$(get /v1/models)
	[ "${r% *}" = 503 ] && grep -qi '^Retry-After: 1' "$dir/head" || fail "models, always busy: $r"
	r=$(get /healthz)
	[ "${r% *}" = 200 ] || fail "health while the lists are busy: $r"
	# a refusal that is not "busy" is not asked again
	fake refuse
	r=$(get /metrics)
	[ "${r% *}" = 503 ] && grep -q 'go away' "$dir/out" || fail "refused: $r $(cat "$dir/out")"
	awk -v t="${r#* }" 'BEGIN { exit !(t < 0.5) }' || fail "a plain refusal took ${r#* } s: asked again"
	kill "$fpid" 2>/dev/null
	;;
*)
	echo "unknown case $case_"
	exit 2
	;;
esac
echo "ok: $case_"
