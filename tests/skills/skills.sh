#!/usr/bin/env bash
# The demo's skills through the daemon, on the committed files.
#
#   skills.sh BIN_DIR ROOT files                 every demo file is there (and tracked by git)
#   skills.sh BIN_DIR ROOT eval SKILL_EVAL_ARGS  lorad --config demo/lorad.conf, then skill_eval
#                                                on demo/heldout.jsonl
#   skills.sh BIN_DIR ROOT unseen SKILL_EVAL_ARGS  the same on demo/unseen.jsonl
#   skills.sh BIN_DIR ROOT eval-dot|unseen-dot ...  the same with bf16_compute = dot
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
	for f in lorad.conf heldout.jsonl unseen.jsonl model/config.json model/tokenizer.json model/model.safetensors \
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
eval | unseen | eval-dot | unseen-dot)
	# eval: demo/heldout.jsonl; unseen: demo/unseen.jsonl (values never seen
	# in training, made by demo/unseen.py); -dot: bf16_compute = dot
	set=heldout
	case $what in unseen*) set=unseen ;; esac
	dot=()
	case $what in *-dot) dot=(--bf16-compute dot) ;; esac
	start --config demo/lorad.conf --threads 1 "${dot[@]}"
	"$bin/skill_eval" --socket "$dir/lorad.sock" --heldout "$demo/$set.jsonl" "$@"
	;;
example)
	# as a user would: install liblorad, build examples/skill_chat.c through
	# pkg-config, run it against the demo model in the daemon
	src=$1 build=$2
	inst="$dir/inst"
	DESTDIR="$inst" cmake --install "$build" >"$dir/install.log"
	pc=$(find "$inst" -name lorad.pc | head -n 1)
	if [ -z "$pc" ]; then
		echo "cmake --install put no lorad.pc under $inst"
		exit 1
	fi
	export PKG_CONFIG_PATH="${pc%/*}" PKG_CONFIG_SYSROOT_DIR="$inst"
	flags=$(pkg-config --cflags --libs lorad)
	echo "cc skill_chat.c $flags"
	# shellcheck disable=SC2086
	cc -std=c11 -Wall -Wextra -Werror "$src/examples/skill_chat.c" $flags -o "$dir/skill_chat"
	libdir="$inst$(pkg-config --variable=libdir lorad | sed "s|^$inst||")"
	export LD_LIBRARY_PATH="$libdir"
	# (not `ldd | grep -q`: grep stops at the match, ldd may then die of
	# SIGPIPE, and pipefail fails the test at random)
	deps=$(ldd "$dir/skill_chat")
	grep -q "$libdir/liblorad.so" <<<"$deps" || {
		echo "skill_chat does not use the installed liblorad:"
		ldd "$dir/skill_chat"
		exit 1
	}
	start --config demo/lorad.conf --threads 1
	sock="$dir/lorad.sock"
	for s in sql json support; do
		prompt=$("$bin/skill_eval" --heldout "$demo/heldout.jsonl" --skills "$s" --get 0 prompt)
		for skill in "$s" auto; do
			printf '%s, %s -> ' "$s" "$skill"
			if ! "$dir/skill_chat" "$sock" "$skill" "$prompt" >"$dir/out" 2>"$dir/err"; then
				echo "skill_chat failed:"
				cat "$dir/err"
				exit 1
			fi
			cat "$dir/err"
			# the daemon's answer to the same request, through lorad-cli
			"$bin/lorad-cli" --socket "$sock" --skill "$s" --max-tokens 128 --prompt "$prompt" \
				>"$dir/want"
			if ! cmp -s "$dir/out" "$dir/want"; then
				echo "skill_chat printed:"
				cat "$dir/out"
				echo "lorad-cli printed:"
				cat "$dir/want"
				exit 1
			fi
			if ! grep -q "^\[skill $s, " "$dir/err"; then
				echo "skill_chat did not report the skill $s"
				exit 1
			fi
		done
	done
	# errors come back as one clear line
	if "$dir/skill_chat" "$sock" no-such-skill "hello" >/dev/null 2>"$dir/err"; then
		echo "skill_chat succeeded with an unknown skill"
		exit 1
	fi
	grep "request failed: .*(field: skill)" "$dir/err"
	if "$dir/skill_chat" "$dir/nothing.sock" sql "hello" >/dev/null 2>"$dir/err"; then
		echo "skill_chat succeeded without a daemon"
		exit 1
	fi
	grep "cannot connect to $dir/nothing.sock: " "$dir/err"
	;;
*)
	echo "skills.sh: unknown test '$what'"
	exit 2
	;;
esac
