#!/usr/bin/env bash
# Installs lorad into a scratch root and checks its units the way an
# operator's systemd would see them: `systemd-analyze verify` must print
# nothing, and the service's exposure must stay under the threshold.
set -euo pipefail
build=$1
threshold=${2:-25}        # systemd-analyze security: 0..100, i.e. 2.5
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not installed"; exit 77; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
DESTDIR="$root" cmake --install "$build" >/dev/null

# What a real system has besides lorad: the base targets and slices the
# units depend on by default, and the kill(1) of ExecReload=.
units=$(find "$root" -path '*/lib/systemd/system/lorad*' | sort)
unitdir=$(dirname "$(echo "$units" | head -1)")
mkdir -p "$root/bin" "$root/usr/lib/systemd/system"
cp /bin/kill "$root/bin/kill"
for u in sysinit.target basic.target shutdown.target sockets.target multi-user.target \
	 paths.target slices.target timers.target local-fs.target swap.target \
	 system.slice -.slice; do
	[ -f "/lib/systemd/system/$u" ] && cp "/lib/systemd/system/$u" "$root/usr/lib/systemd/system/$u"
done

out=$(systemd-analyze verify --root="$root" $units 2>&1) || true
if [ -n "$out" ]; then
	echo "systemd-analyze verify printed:"
	echo "$out"
	exit 1
fi
echo "verify: $(echo $units | wc -w) units, no warnings"
systemd-analyze security --offline=yes --root="$root" --threshold="$threshold" \
	"$unitdir/lorad.service" | tail -1
