#!/usr/bin/env bash
# The Grafana dashboard (systemd/grafana/lorad-dashboard.json) against a real
# scrape of the daemon on the demo model (loradctl metrics: the text
# lorad-http serves at /metrics), after traffic on a skill:
#   test_dashboard.sh BUILD_BIN_DIR REPO_ROOT
set -u
bin=$1
root=$2
here=$(cd "$(dirname "$0")" && pwd)
command -v python3 >/dev/null || { echo "python3 is not installed: skipped"; exit 77; }
cd "$root" || exit 1
dir=$(mktemp -d /tmp/lorad-dash-test.XXXXXX)
dpid=
fail() { echo "FAIL: $*"; tail -20 "$dir/lorad.log" 2>/dev/null; exit 1; }
cleanup() { [ -n "$dpid" ] && kill "$dpid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

"$bin/lorad" --config demo/lorad.conf --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
	--state-dir "$dir/state" --threads 1 >"$dir/lorad.log" 2>&1 &
dpid=$!
for _ in $(seq 100); do "$bin/loradctl" --socket "$dir/a.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/lorad-cli" --socket "$dir/l.sock" --skill sql --prompt "Which customers ordered twice?" \
	--max-tokens 8 >/dev/null 2>&1 || fail "lorad-cli"
"$bin/loradctl" --socket "$dir/a.sock" metrics >"$dir/metrics.txt" || fail "loradctl metrics"
python3 "$here/check_dashboard.py" systemd/grafana/lorad-dashboard.json "$dir/metrics.txt" || fail "the dashboard"

# and the checker itself refuses a dashboard that names what the daemon does not export
python3 - systemd/grafana/lorad-dashboard.json "$dir/rotten.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["panels"][1]["targets"][0]["expr"] = 'sum by (versoin) (rate(lorad_request_total[5m]))'
json.dump(d, open(sys.argv[2], "w"))
PY
out=$(python3 "$here/check_dashboard.py" "$dir/rotten.json" "$dir/metrics.txt" 2>/dev/null) && fail "a rotten dashboard passed"
echo "$out" | grep -q "lorad_request_total is not in the scrape" || fail "rotten metric not named: $out"
echo "$out" | grep -q "label 'versoin'" || fail "rotten label not named: $out"
echo ok
