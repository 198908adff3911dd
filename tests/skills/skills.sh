#!/usr/bin/env bash
# The demo's skills through the daemon, on the committed files.
#
#   skills.sh BIN_DIR ROOT files                 every demo file is there (and tracked by git)
#   skills.sh BIN_DIR ROOT eval SKILL_EVAL_ARGS  lorad --config demo/lorad.conf, then skill_eval
#   skills.sh BIN_DIR ROOT example SRC BUILD     the C example built through pkg-config, run
#
# ROOT holds demo/ (the source directory); lorad runs there, since
# demo/lorad.conf names its files relative to it. Exit 77 (skipped) only when
# ROOT has no demo/model at all.
set -euo pipefail
bin=$(cd "$1" && pwd) root=$2 what=$3
shift 3
demo="$root/demo"
if [ ! -d "$demo/model" ]; then
	echo "no $demo/model: the demo model is not in this tree"
	exit 77
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/lorad-skills.XXXXXX")
pid=""
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid" || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT

# lorad in ROOT with ARGS, sockets in $dir; waits until it serves
start() {
	(cd "$root" && exec "$bin/lorad" --socket "$dir/lorad.sock" --admin-socket "$dir/admin.sock" \
		"$@" 2>"$dir/lorad.log") &
	pid=$!
	for _ in $(seq 400); do
		grep -q "serving on" "$dir/lorad.log" 2>/dev/null && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "lorad $* did not start:"
			cat "$dir/lorad.log"
			exit 1
		fi
		sleep 0.05
	done
	echo "lorad $* did not start in 20 s:"
	cat "$dir/lorad.log"
	exit 1
}

case $what in
files)
	for f in lorad.conf heldout.jsonl model/config.json model/tokenizer.json model/model.safetensors \
		 adapters/{sql,json,support}/adapter_config.json \
		 adapters/{sql,json,support}/adapter_model.safetensors; do
		if [ ! -s "$demo/$f" ]; then
			echo "demo/$f is missing or empty"
			exit 1
		fi
		if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1 &&
		   ! git -C "$root" ls-files --error-unmatch "demo/$f" >/dev/null 2>&1; then
			echo "demo/$f is not committed: a fresh clone would not have it"
			exit 1
		fi
	done
	# they load: the daemon starts on them, registers the three adapters and
	# serves one request of each skill to its end
	start --config demo/lorad.conf --threads 1
	"$bin/loradctl" --socket "$dir/admin.sock" adapters list
	for s in sql json support; do
		prompt=$("$bin/skill_eval" --heldout "$demo/heldout.jsonl" --skills "$s" --get 0 prompt)
		printf '%s: ' "$s"
		"$bin/lorad-cli" --socket "$dir/lorad.sock" --skill "$s" --max-tokens 128 --prompt "$prompt"
	done
	if grep -E '^<[0-3]>' "$dir/lorad.log"; then
		echo "the daemon logged errors"
		exit 1
	fi
	;;
eval)
	start --config demo/lorad.conf --threads 1
	"$bin/skill_eval" --socket "$dir/lorad.sock" --heldout "$demo/heldout.jsonl" "$@"
	;;
*)
	echo "skills.sh: unknown test '$what'"
	exit 2
	;;
esac
