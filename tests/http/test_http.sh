#!/usr/bin/env bash
# lorad-http against the real daemon on the demo model, with curl:
#   usage: test_http.sh BUILD_BIN_DIR REPO_ROOT CASE
# CASE: api (completions, streams, models, metrics, health, errors),
#       grammar (response_format: json_object, json_schema, regex; refusals),
#       limits (body, connections, token, a client that leaves mid-stream,
#       the daemon going away). Exits 77 (skipped) without curl or python3.
set -u
bin=$1
root=$2
case_=$3
command -v curl >/dev/null || { echo "curl is not installed: skipped"; exit 77; }
# a python3 with Debian's prometheus_client (a pyenv one on PATH may lack it)
py=
for p in python3 /usr/bin/python3; do
	command -v "$p" >/dev/null && "$p" -c 'import prometheus_client' 2>/dev/null && { py=$p; break; }
done
[ -n "$py" ] || { echo "no python3 with prometheus_client (python3-prometheus-client): skipped"; exit 77; }
python3() { "$py" "$@"; }
here=$(cd "$(dirname "$0")" && pwd)   # before the cd: $0 may be relative
cd "$root" || exit 1   # demo/lorad.conf names its files relative to the repository root

dir=$(mktemp -d /tmp/lorad-http-test.XXXXXX)
dpid= gpid= g2pid=
. "$here/lib.sh"
cleanup() {
	for p in $g2pid $gpid $dpid; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

# start_gateway PORT ARGS...
start_gateway() {
	local port=$1
	shift
	"$bin/lorad-http" --listen "127.0.0.1:$port" --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
		"$@" >>"$dir/http.log" 2>&1 &
	gpid=$!
	for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && return 0; sleep 0.05; done
	fail "lorad-http did not start"
}

# prompt tokens of every request the daemon has ended
prompt_total() {
	"$bin/loradctl" --socket "$dir/a.sock" --json stats |
		python3 -c "import json,sys; print(sum(r[\"prompt_tokens\"] for r in json.load(sys.stdin)[\"stats\"]))"
}

inflight() {
	"$bin/loradctl" --socket "$dir/a.sock" --json status |
		python3 -c "import json,sys; print(json.load(sys.stdin)[\"inflight\"])"
}

if [ "$case_" = limits ]; then
	make_slow_model
	start_daemon "$dir/slow"
else
	start_daemon
fi
port=$(free_port)
url="http://127.0.0.1:$port"

case $case_ in
api)
	start_gateway "$port"
	[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/healthz")" = 200 ] || fail "healthz"

	# a completion equals the native client's text for the same greedy request
	prompt='Which customers ordered twice?'
	want=$("$bin/lorad-cli" --socket "$dir/l.sock" --skill sql --prompt "$prompt" --max-tokens 24 \
		--temperature 0 2>"$dir/cli.err")
	p0=$(prompt_total)
	st=$(post /v1/completions "{\"model\":\"sql\",\"prompt\":\"$prompt\",\"max_tokens\":24,\"temperature\":0}")
	[ "$st" = 200 ] || fail "completion: HTTP $st $(cat "$dir/out")"
	# usage.prompt_tokens: the daemon's own count (lorad_event.n_prompt), as its stats say
	p1=$(prompt_total)
	[ "$(json 'j["usage"]["prompt_tokens"]')" = $((p1 - p0)) ] ||
		fail "usage.prompt_tokens $(json 'j["usage"]["prompt_tokens"]'), the daemon counted $((p1 - p0))"
	[ "$(json 'j["usage"]["prompt_tokens"] > 0 and j["usage"]["total_tokens"] == j["usage"]["prompt_tokens"] + j["usage"]["completion_tokens"]')" = True ] ||
		fail "usage: $(json 'j["usage"]')"
	got=$(json 'j["choices"][0]["text"]')
	[ "$got" = "$want" ] || fail "completion text '$got' != lorad-cli '$want'"
	# cut by the length, lorad-cli says so beside the text (stderr), and only then
	if [ "$(json 'j["choices"][0]["finish_reason"]')" = length ]; then
		grep -q "cut at --max-tokens 24" "$dir/cli.err" || fail "lorad-cli hid the cut: $(cat "$dir/cli.err")"
	else
		grep -q "cut at" "$dir/cli.err" && fail "lorad-cli called a whole answer cut"
	fi
	[ "$(json 'j["object"]')" = text_completion ] || fail "object"
	[ "$(json 'j["choices"][0]["lorad_version"]')" = sql@v1 ] || fail "served version"
	[ "$(json 'j["choices"][0]["finish_reason"] in ("stop","length")')" = True ] || fail "finish_reason"
	[ "$(json 'j["usage"]["completion_tokens"] > 0')" = True ] || fail "usage"

	# the same as a stream: the pieces make the same text, then [DONE]
	curl -sN -H 'Content-Type: application/json' --data-binary \
		"{\"model\":\"sql\",\"prompt\":\"$prompt\",\"max_tokens\":24,\"temperature\":0,\"stream\":true}" \
		"$url/v1/completions" >"$dir/sse"
	python3 - "$dir/sse" "$want" <<'EOF' || fail "stream"
import json, sys
lines = [l for l in open(sys.argv[1]).read().split("\n\n") if l.strip()]
assert lines[-1] == "data: [DONE]", lines[-1]
text, finish = "", None
for l in lines[:-1]:
    assert l.startswith("data: "), l
    c = json.loads(l[6:])["choices"][0]
    text += c["text"]
    finish = c["finish_reason"] or finish
assert text == sys.argv[2], (text, sys.argv[2])
assert finish in ("stop", "length")
assert not any("usage" in json.loads(l[6:]) for l in lines[:-1]), "usage without include_usage"
EOF
	# stream_options.include_usage: one more chunk, no choices, the usage
	curl -sN -H 'Content-Type: application/json' --data-binary \
		"{\"model\":\"sql\",\"prompt\":\"$prompt\",\"max_tokens\":24,\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" \
		"$url/v1/completions" >"$dir/sse"
	python3 - "$dir/sse" "$want" <<'EOF' || fail "stream with include_usage: $(cat "$dir/sse")"
import json, sys
lines = [l for l in open(sys.argv[1]).read().split("\n\n") if l.strip()]
assert lines[-1] == "data: [DONE]", lines[-1]
last = json.loads(lines[-2][6:])
assert last["choices"] == [], last
u = last["usage"]
assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0, u
assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
text = "".join(json.loads(l[6:])["choices"][0]["text"] for l in lines[:-2])
assert text == sys.argv[2], (text, sys.argv[2])
assert not any("usage" in json.loads(l[6:]) for l in lines[:-2])
EOF
	check_so() {   # check_so BODY MESSAGE-PART: 400 naming stream_options
		[ "$(post /v1/completions "$1")" = 400 ] || fail "$1: not 400"
		[ "$(json 'j["error"]["param"]')" = stream_options ] || fail "$1: param $(cat "$dir/out")"
		grep -q "$2" "$dir/out" || fail "$1: message $(cat "$dir/out")"
	}
	check_so '{"model":"sql","prompt":"x","stream_options":{"include_usage":true}}' "only allowed when stream"
	check_so '{"model":"sql","prompt":"x","stream":true,"stream_options":{"bogus":1}}' "takes only include_usage"
	check_so '{"model":"sql","prompt":"x","stream":true,"stream_options":{"include_usage":3}}' "true or false"
	check_so '{"model":"sql","prompt":"x","stream":true,"stream_options":[]}' "must be an object"

	# a version by its id, past the route: the same answer as the skill's
	st=$(post /v1/completions "{\"model\":\"sql@v1\",\"prompt\":\"$prompt\",\"max_tokens\":24,\"temperature\":0}")
	[ "$st" = 200 ] || fail "sql@v1: HTTP $st $(cat "$dir/out")"
	[ "$(json 'j["choices"][0]["text"]')" = "$want" ] || fail "sql@v1 text"
	[ "$(json 'j["choices"][0]["lorad_version"]')" = sql@v1 ] || fail "sql@v1 version"
	check_404() { [ "$(post /v1/completions "$1")" = 404 ] || fail "$1: not 404"; }
	check_404 '{"model":"sql@v9","prompt":"x"}'

	# several prompts, several choices, in order
	st=$(post /v1/completions '{"model":"base","prompt":["a b","c d","e f"],"max_tokens":5,"temperature":0}')
	[ "$st" = 200 ] || fail "three prompts: HTTP $st"
	[ "$(json '[c["index"] for c in j["choices"]]')" = "[0, 1, 2]" ] || fail "choices"

	# "user" routes the same user the same way; seeded sampling repeats
	post /v1/completions '{"model":"json","prompt":"name=Bo","max_tokens":12,"temperature":0.8,"seed":7,"user":"ann"}' >/dev/null
	a=$(json 'j["choices"][0]["text"]')
	post /v1/completions '{"model":"json","prompt":"name=Bo","max_tokens":12,"temperature":0.8,"seed":7,"user":"ann"}' >/dev/null
	[ "$(json 'j["choices"][0]["text"]')" = "$a" ] || fail "a seeded request did not repeat"

	# models and metrics
	st=$(curl -s -o "$dir/out" -w '%{http_code}' "$url/v1/models")
	[ "$st" = 200 ] || fail "models: HTTP $st"
	[ "$(json 'sorted(m["id"] for m in j["data"] if "@" not in m["id"])')" = \
	  "['auto', 'base', 'json', 'sql', 'support']" ] || fail "models: $(cat "$dir/out")"
	curl -s "$url/metrics" >"$dir/metrics"
	python3 - "$dir/metrics" <<'EOF' || fail "metrics do not parse"
import sys
from prometheus_client.parser import text_string_to_metric_families
names = [f.name for f in text_string_to_metric_families(open(sys.argv[1]).read())]
assert any(n.startswith("lorad_") for n in names), names
EOF

	# errors: one OpenAI error object, the right status
	check_err() {   # STATUS PARAM BODY
		local st
		st=$(post /v1/completions "$3")
		[ "$st" = "$1" ] || fail "'$3': HTTP $st, want $1: $(cat "$dir/out")"
		[ "$(json 'j["error"]["param"]')" = "$2" ] || fail "'$3': param $(json 'j["error"]["param"]'), want $2"
	}
	check_err 400 None '{"model":"sql","prompt":'
	json 'j["error"]["message"]' | grep -q "ends inside a value" ||
		fail "a body cut short: $(cat "$dir/out")"
	check_err 400 None '{"model":"sql","prompt":"x"} {}'
	json 'j["error"]["message"]' | grep -q "at byte 29" ||
		fail "a body with more after it: $(cat "$dir/out")"
	check_err 400 None '[1,2]'
	# an empty body, whitespace, a bare number: said as such, not "ends inside a value"
	check_err 400 None ''
	json 'j["error"]["message"]' | grep -q "the body is empty" || fail "an empty body: $(cat "$dir/out")"
	check_err 400 None '  '
	json 'j["error"]["message"]' | grep -q "the body is empty" || fail "a body of spaces: $(cat "$dir/out")"
	check_err 400 None '123'
	json 'j["error"]["message"]' | grep -q "must be a JSON object" || fail "a number: $(cat "$dir/out")"
	check_err 400 model '{"prompt":"x"}'
	check_err 404 model '{"model":"nosuch","prompt":"x"}'
	check_err 400 prompt '{"model":"sql"}'
	check_err 400 prompt '{"model":"sql","prompt":[1,2,3]}'
	check_err 400 max_tokens '{"model":"sql","prompt":"x","max_tokens":0}'
	check_err 400 max_tokens '{"model":"sql","prompt":"x","max_tokens":99999999}'
	# past the demo model's context: the daemon's words, the limit and its value
	check_err 400 max_tokens '{"model":"sql","prompt":"x","max_tokens":300}'
	json 'j["error"]["message"]' | grep -q "exceed the model's context of 256 tokens" ||
		fail "max_tokens past the context: $(cat "$dir/out")"
	check_err 400 temperature '{"model":"sql","prompt":"x","temperature":"hot"}'
	check_err 400 n '{"model":"sql","prompt":"x","n":2}'
	check_err 400 logprobs '{"model":"sql","prompt":"x","logprobs":3}'
	check_err 400 best_of '{"model":"sql","prompt":"x","best_of":2}'
	check_err 400 logit_bias '{"model":"sql","prompt":"x","logit_bias":{"5":1}}'
	# what client libraries send for "the default" is taken, not refused
	st=$(post /v1/completions '{"model":"sql","prompt":"x","max_tokens":2,"best_of":1,"logit_bias":{},"suffix":"","echo":false,"logprobs":null}')
	[ "$st" = 200 ] || fail "the defaults of unsupported parameters refused: $st $(cat "$dir/out")"
	check_err 400 stop '{"model":"sql","prompt":"x","stop":["a","b","c","d","e"]}'
	check_err 400 None '{"model":"sql","prompt":"x","a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{}}}}}}}}}'
	st=$(curl -s -o "$dir/out" -w '%{http_code}' "$url/v1/completions")
	[ "$st" = 405 ] || fail "GET completions: $st"
	st=$(curl -s -o "$dir/out" -w '%{http_code}' "$url/v2/nothing")
	[ "$st" = 404 ] || fail "unknown path: $st"
	;;
limits)
	start_gateway "$port" --max-body 4096 --max-connections 3 --timeout 2
	# a body over the limit, announced or not
	big=$(python3 -c 'print("{\"model\":\"sql\",\"prompt\":\"" + "x"*8000 + "\"}")')
	st=$(post /v1/completions "$big")
	[ "$st" = 413 ] || fail "big body: $st"
	st=$(python3 -c 'print("{\"model\":\"sql\",\"prompt\":\"" + "x"*8000 + "\"}")' |
		curl -s -o "$dir/out" -w '%{http_code}' -H 'Transfer-Encoding: chunked' --data-binary @- \
		"$url/v1/completions")
	[ "$st" = 413 ] || fail "big chunked body: $st"

	# a client that leaves in the middle of a stream: its request (minutes
	# of work on this model) is cancelled at once
	curl -sN --max-time 2 -H 'Content-Type: application/json' --data-binary \
		'{"model":"base","prompt":"a","max_tokens":3000,"ignore_eos":true,"stream":true}' \
		"$url/v1/completions" >"$dir/sse"
	grep -q '"finish_reason":null' "$dir/sse" || fail "the long stream sent no tokens: $(head -c 300 "$dir/sse")"
	for _ in $(seq 50); do [ "$(inflight)" = 0 ] && break; sleep 0.1; done
	[ "$(inflight)" = 0 ] || fail "a request of a client that left still runs"
	curl -s "$url/metrics" | grep -q '^lorad_request_errors_total{.*kind="cancelled"} [1-9]' ||
		fail "no cancelled request in the metrics"

	# clients that open connections and send nothing hold them only until --timeout
	python3 - "$port" <<'EOF' &
import socket, sys, time
s = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(3)]
for x in s:
    x.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
time.sleep(6)
EOF
	slow=$!
	sleep 0.5
	t0=$(date +%s)
	st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$url/healthz")
	t1=$(date +%s)
	# refused at once while they hold every connection, or served after they time out
	[ "$st" = 200 ] || [ "$st" = 000 ] || fail "healthz beside slow clients: $st"
	[ $((t1 - t0)) -le 4 ] || fail "a request waited $((t1 - t0)) s behind slow clients"
	sleep 3
	st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/healthz")
	[ "$st" = 200 ] || fail "healthz after the slow clients timed out: $st"
	kill $slow 2>/dev/null

	# a bearer token: refused without it, served with it; /healthz needs none
	port2=$(free_port)
	echo "0123456789abcdef0123" >"$dir/token"
	chmod 644 "$dir/token"
	"$bin/lorad-http" --listen 127.0.0.1:$port2 --socket "$dir/l.sock" --token-file "$dir/token" \
		>/dev/null 2>&1 && fail "a token file others can read was taken"
	chmod 600 "$dir/token"
	"$bin/lorad-http" --listen 0.0.0.0:$port2 --socket "$dir/l.sock" >/dev/null 2>&1 &&
		fail "listened beyond loopback without a token"
	# a name is not looked up: refused as such, not as "not loopback"
	"$bin/lorad-http" --listen localhost:$port2 --socket "$dir/l.sock" >/dev/null 2>"$dir/err" &&
		fail "listened on a name"
	grep -q "numeric address" "$dir/err" || fail "--listen localhost: $(cat "$dir/err")"
	"$bin/lorad-http" --listen 127.0.0.1:$port2 --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
		--token-file "$dir/token" >>"$dir/http.log" 2>&1 &
	g2pid=$!
	for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port2/healthz" && break; sleep 0.05; done
	url2="http://127.0.0.1:$port2"
	st=$(curl -s -o /dev/null -w '%{http_code}' "$url2/v1/models")
	[ "$st" = 401 ] || fail "no token: $st"
	st=$(curl -s -o "$dir/out" -w '%{http_code}' -H 'Authorization: Bearer 0123456789abcdef0124' "$url2/v1/models")
	[ "$st" = 401 ] || fail "wrong token: $st"
	grep -q "not the one lorad-http was given" "$dir/out" || fail "wrong token said as missing: $(cat "$dir/out")"
	st=$(curl -s -o "$dir/out" -D "$dir/hdr" -w '%{http_code}' -H 'Authorization: Basic dXNlcjpwYXNz' "$url2/v1/models")
	[ "$st" = 401 ] || fail "another scheme: $st"
	grep -q "must be 'Bearer TOKEN'" "$dir/out" || fail "another scheme said as a wrong token: $(cat "$dir/out")"
	grep -qi "^WWW-Authenticate: Bearer" "$dir/hdr" || fail "a 401 without WWW-Authenticate: $(cat "$dir/hdr")"
	st=$(curl -s -o "$dir/out" -w '%{http_code}' -H 'Authorization: Bearer' "$url2/v1/models")
	[ "$st" = 401 ] && grep -q "a bearer token is required" "$dir/out" || fail "a bare Bearer: $st $(cat "$dir/out")"
	# the scheme is case-blind, and blanks around the token are not the token's
	for h in 'bearer 0123456789abcdef0123' 'Bearer  0123456789abcdef0123' \
		"$(printf 'BEARER\t0123456789abcdef0123 ')"; do
		st=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $h" "$url2/v1/models")
		[ "$st" = 200 ] || fail "the right token in '$h': $st"
	done
	st=$(curl -s -o "$dir/out" -w '%{http_code}' -H 'Authorization: BearerX 0123456789abcdef0123' "$url2/v1/models")
	[ "$st" = 401 ] && grep -q "no other scheme" "$dir/out" || fail "scheme BearerX: $st $(cat "$dir/out")"
	# a port out of range is said once, naming it
	"$bin/lorad-http" --listen 127.0.0.1:99999 --socket "$dir/l.sock" >/dev/null 2>"$dir/err" &&
		fail "listened on port 99999"
	[ "$(wc -l <"$dir/err")" = 1 ] && grep -q "1 to 65535" "$dir/err" || fail "--listen :99999: $(cat "$dir/err")"
	st=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer 0123456789abcdef0123' "$url2/v1/models")
	[ "$st" = 200 ] || fail "right token: $st"

	# the admin socket answers but the daemon's socket is not there (a
	# typo in --socket): not healthy, since no completion can be served
	kill "$g2pid"
	wait "$g2pid" 2>/dev/null
	"$bin/lorad-http" --listen 127.0.0.1:$port2 --socket "$dir/typo.sock" --admin-socket "$dir/a.sock" \
		>>"$dir/http.log" 2>&1 &
	g2pid=$!
	for _ in $(seq 100); do curl -s -o "$dir/out" "$url2/healthz" && break; sleep 0.05; done
	st=$(curl -s -o "$dir/out" -w '%{http_code}' --max-time 10 "$url2/healthz")
	[ "$st" = 503 ] && grep -q typo.sock "$dir/out" ||
		fail "healthz with the daemon's socket missing: $st $(cat "$dir/out")"

	# the daemon goes away: 503 at once, not a hang; health says so
	kill -9 "$dpid"
	wait "$dpid" 2>/dev/null
	dpid=
	t0=$(date +%s)
	st=$(post /v1/completions '{"model":"sql","prompt":"x","max_tokens":4}' --max-time 10)
	[ "$st" = 503 ] || fail "daemon gone: $st $(cat "$dir/out")"
	st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$url/healthz")
	[ "$st" = 503 ] || fail "healthz with the daemon gone: $st"
	[ $(($(date +%s) - t0)) -le 5 ] || fail "slow answers with the daemon gone"
	;;
grammar)
	# response_format: outputs of the base model (which writes no JSON of
	# its own) parse and follow the schema; refusals name what and where
	start_gateway "$port"
	schema='{"type":"object","properties":{"name":{"type":"string","maxLength":10},"age":{"type":"integer"},"city":{"enum":["Soarburg","Lind"]}},"required":["name","age","city"],"additionalProperties":false}'
	rf_schema="{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":$schema}}"
	for seed in 1 2 3 4; do
		st=$(post /v1/completions "{\"model\":\"base\",\"prompt\":\"Which customers live in Lind?\",\"max_tokens\":80,\"temperature\":1,\"seed\":$seed,\"response_format\":$rf_schema}")
		[ "$st" = 200 ] || fail "json_schema: HTTP $st $(cat "$dir/out")"
		PYTHONPATH="$root/tests/grammar" python3 - "$dir/out" "$schema" <<'PY' || fail "json_schema output: $(cat "$dir/out")"
import json, sys, schema_subset
c = json.load(open(sys.argv[1]))["choices"][0]
assert c["finish_reason"] == "stop", c
schema_subset.validate(json.loads(c["text"]), json.loads(sys.argv[2]))
PY
		st=$(post /v1/completions "{\"model\":\"base\",\"prompt\":\"age=3 name=Bo\",\"max_tokens\":60,\"temperature\":1,\"seed\":$seed,\"response_format\":{\"type\":\"json_object\"}}")
		[ "$st" = 200 ] || fail "json_object: HTTP $st $(cat "$dir/out")"
		[ "$(json 'j["choices"][0]["finish_reason"] != "stop" or isinstance(json.loads(j["choices"][0]["text"]), dict)')" = True ] ||
			fail "json_object output: $(cat "$dir/out")"
		st=$(post /v1/completions "{\"model\":\"base\",\"prompt\":\"x\",\"max_tokens\":40,\"temperature\":1,\"seed\":$seed,\"response_format\":{\"type\":\"regex\",\"regex\":\"(yes|no), [a-z]{1,6}[.]\"}}")
		[ "$st" = 200 ] || fail "regex: HTTP $st $(cat "$dir/out")"
		[ "$(json '__import__("re").fullmatch(r"(yes|no), [a-z]{1,6}[.]", j["choices"][0]["text"]) is not None')" = True ] ||
			fail "regex output: $(cat "$dir/out")"
	done
	# the same through a stream
	curl -sN -H 'Content-Type: application/json' --data-binary \
		"{\"model\":\"base\",\"prompt\":\"hi\",\"max_tokens\":120,\"temperature\":1,\"seed\":9,\"stream\":true,\"response_format\":$rf_schema}" \
		"$url/v1/completions" >"$dir/sse"
	PYTHONPATH="$root/tests/grammar" python3 - "$dir/sse" "$schema" <<'PY' || fail "json_schema stream: $(cat "$dir/sse")"
import json, sys, schema_subset
lines = [l for l in open(sys.argv[1]).read().split("\n\n") if l.strip()]
assert lines[-1] == "data: [DONE]", lines[-1]
text = "".join(json.loads(l[6:])["choices"][0]["text"] for l in lines[:-1])
schema_subset.validate(json.loads(text), json.loads(sys.argv[2]))
PY
	# refusals: 400, param response_format, the keyword, limit or place named
	st=$(post /v1/completions '{"model":"base","prompt":"x","response_format":{"type":"json_schema","json_schema":{"schema":{"type":"string","pattern":"a+"}}}}')
	[ "$st" = 400 ] || fail "unsupported keyword: HTTP $st"
	[ "$(json 'j["error"]["param"]')" = response_format ] || fail "param: $(cat "$dir/out")"
	json 'j["error"]["message"]' | grep -q "'pattern'" || fail "keyword not named: $(cat "$dir/out")"
	st=$(post /v1/completions '{"model":"base","prompt":"x","response_format":{"type":"regex","regex":"(a|b)*a(a|b){20}"}}')
	[ "$st" = 400 ] || fail "state blow-up: HTTP $st"
	json 'j["error"]["message"]' | grep -q "max_states" || fail "limit not named: $(cat "$dir/out")"
	st=$(post /v1/completions '{"model":"base","prompt":"x","response_format":{"type":"regex","regex":"ab(c"}}')
	[ "$st" = 400 ] || fail "bad regex: HTTP $st"
	json 'j["error"]["message"]' | grep -q "offset 2" || fail "offset not named: $(cat "$dir/out")"
	st=$(post /v1/completions '{"model":"base","prompt":"x","response_format":{"type":"xml"}}')
	[ "$st" = 400 ] || fail "unknown type: HTTP $st"
	;;
*)
	echo "unknown case $case_"
	exit 2
	;;
esac
echo "ok: $case_"
