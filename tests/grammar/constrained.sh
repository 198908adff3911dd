#!/usr/bin/env bash
# Constrained decoding through the daemon on the demo model: grammar_check
# (bit-identical unconstrained rows, the json skill unchanged, many outputs
# written), then every output read back with Python's json and re:
#   constrained.sh BIN_DIR ROOT
set -euo pipefail
bin=$(cd "$1" && pwd) root=$2
py=/usr/bin/python3
[ -x "$py" ] || py=python3
dir=$(mktemp -d "${TMPDIR:-/tmp}/lorad-grammar.XXXXXX")
pid=""
cleanup() {
	[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" || true
	rm -rf "$dir"
}
trap cleanup EXIT
(cd "$root" && exec "$bin/lorad" --config demo/lorad.conf --threads 1 --socket "$dir/l.sock" \
	--admin-socket "$dir/a.sock" --state-dir "$dir/state" 2>"$dir/lorad.log") &
pid=$!
for _ in $(seq 400); do
	grep -q "serving on" "$dir/lorad.log" 2>/dev/null && break
	kill -0 "$pid" 2>/dev/null || { cat "$dir/lorad.log"; exit 1; }
	sleep 0.05
done
"$bin/grammar_check" "$dir/l.sock" "$root/demo/heldout.jsonl" "$dir/out.jsonl"
PYTHONPATH="$root/tests/grammar" "$py" - "$dir/out.jsonl" <<'PY'
import json, re, sys, schema_subset
rows = [json.loads(l) for l in open(sys.argv[1])]
stops = 0
for r in rows:
    assert r["res"] == 0, r
    if r["finish"] != "stop":
        assert r["finish"] == "length", r
        continue
    stops += 1
    if r["kind"] == "regex":
        assert re.fullmatch(r["grammar"], r["text"]), r
    else:
        v = json.loads(r["text"])          # a real parser: raises on invalid JSON
        if r["kind"] == "schema":
            schema_subset.validate(v, json.loads(r["grammar"]))
print(f"{stops} of {len(rows)} outputs complete, each parses and matches; the rest hit max_tokens")
assert stops >= 0.8 * len(rows), "too many outputs ran out of tokens"
PY
if grep -E '^<[0-3]>' "$dir/lorad.log"; then
	echo "the daemon logged errors"
	exit 1
fi
