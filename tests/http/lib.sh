# Helpers of the gateway's test scripts (test_http.sh, test_http_attack.sh),
# sourced after each has set $bin (the build's bin folder) and $dir (its
# scratch folder) and moved to the repository's root.

fail() {
	echo "FAIL: $*"
	echo "--- lorad log"; tail -20 "$dir/lorad.log" 2>/dev/null
	echo "--- lorad-http log"; tail -20 "$dir/http.log" 2>/dev/null
	exit 1
}

# post PATH BODY [CURL ARGS...]: to $url; prints the HTTP status, the body
# into $dir/out
post() {
	local path=$1 body=$2
	shift 2
	curl -s -o "$dir/out" -w '%{http_code}' -H 'Content-Type: application/json' \
		--data-binary "$body" "$@" "$url$path"
}

# json EXPR: evaluates a Python expression over j = the last body
json() {
	python3 -c "import json,sys; j=json.load(open('$dir/out')); print(($1))"
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A model slow enough that a long request is still running when its client
# leaves (about 50 ms a token here), with the demo's tokenizer: base only.
make_slow_model() {
	"$bin/lorad-mkmodel" "$dir/slow" --vocab 640 --hidden 1024 --layers 8 --heads 16 --kv-heads 4 \
		--ffn 2816 --max-pos 4096 --dtype f32 --seed 5 >/dev/null || fail "lorad-mkmodel"
	cp demo/model/tokenizer.json "$dir/slow/"
	[ -f demo/model/tokenizer_config.json ] && cp demo/model/tokenizer_config.json "$dir/slow/"
}

# start_daemon [MODEL]: the demo (its three skills) or MODEL alone; its pid in $dpid
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
