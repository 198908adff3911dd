#!/usr/bin/env bash
# Builds lorad's Debian packages (debian/, dh with the cmake build system)
# from a copy of this tree, so the tree itself stays clean:
#   scripts/build-deb.sh [OUTDIR]      (default build/deb)
# The copy holds what git tracks plus untracked files git does not ignore
# (a work in progress builds as it is); without git, the tree minus build*/.
# The .deb, .buildinfo and .changes files land in OUTDIR.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build/deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)
for t in dpkg-buildpackage dh; do
	command -v "$t" >/dev/null || { echo "build-deb: $t is not installed (apt-get install dpkg-dev debhelper)" >&2; exit 77; }
done
ver=$(dpkg-parsechangelog -l "$root/debian/changelog" -S Version)
src=$out/src/lorad-$ver
rm -rf "$out/src"
mkdir -p "$src"
cd "$root"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
		tar --null -T - -cf - | tar -xf - -C "$src"
else
	tar --exclude='./build*' --exclude=./.git -cf - . | tar -xf - -C "$src"
fi
cd "$src"
# -b: binary packages only (the source package is this tree); -us -uc: unsigned
dpkg-buildpackage -b -us -uc -j"${JOBS:-$(nproc)}" >"$out/build.log" 2>&1 || {
	echo "build-deb: dpkg-buildpackage failed; the last lines of $out/build.log:" >&2
	tail -40 "$out/build.log" >&2
	exit 1
}
rm -f "$out"/*.deb "$out"/*.buildinfo "$out"/*.changes
mv "$out"/src/*.deb "$out"/src/*.buildinfo "$out"/src/*.changes "$out"/
rm -rf "$out/src"
ls "$out"/*.deb
