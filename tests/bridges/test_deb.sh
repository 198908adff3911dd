#!/usr/bin/env bash
# `make deb` end to end: builds the Debian packages from this tree (as a
# fresh clone would: what git tracks or does not ignore), checks their files,
# dependencies and maintainer scripts with dpkg-deb, runs lintian when it is
# installed (errors fail, and warnings about manual pages; other warnings
# are printed), then unpacks them into a
# throwaway root and uses them there: a C program built with pkg-config,
# and again with find_package(lorad), against liblorad-dev talks to the
# packaged daemon, and the Python client
# imports from its package.
#   test_deb.sh REPO_ROOT OUTDIR
# Exits 77 (skipped) without dpkg-buildpackage, debhelper or a C compiler.
set -u
root=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
for t in dpkg-buildpackage dh dpkg-deb cc pkg-config; do
	command -v $t >/dev/null || { echo "$t is not installed (apt-get install dpkg-dev debhelper): skipped"; exit 77; }
done
dir=$(mktemp -d /tmp/lorad-deb-test.XXXXXX)
dpid=
fail() { echo "FAIL: $*"; [ -f "$dir/lorad.log" ] && tail -20 "$dir/lorad.log"; exit 1; }
cleanup() { [ -n "$dpid" ] && kill "$dpid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

rm -rf "$out"
make -C "$root" --no-print-directory deb BUILD="$out" JOBS=2 >"$dir/make.log" 2>&1 ||
	{ tail -40 "$dir/make.log"; fail "make deb"; }
debs=$out/deb
ver=$(dpkg-parsechangelog -l "$root/debian/changelog" -S Version)
arch=$(dpkg --print-architecture)
ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
d_lorad=$debs/lorad_${ver}_$arch.deb
d_lib=$debs/liblorad2_${ver}_$arch.deb
d_dev=$debs/liblorad-dev_${ver}_$arch.deb
d_py=$debs/python3-lorad_${ver}_all.deb
for f in "$d_lorad" "$d_lib" "$d_dev" "$d_py"; do [ -f "$f" ] || fail "no $(basename "$f")"; done

# has DEB PATH...: every path is in the package
has() {
	local deb=$1
	shift
	dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$dir/list"
	for p in "$@"; do grep -qx "$p" "$dir/list" || fail "$(basename "$deb") lacks $p"; done
}
lacks() {
	local deb=$1
	shift
	dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$dir/list"
	for p in "$@"; do grep -q "$p" "$dir/list" && fail "$(basename "$deb") holds $p"; done
}
has "$d_lorad" /usr/sbin/lorad /usr/sbin/loradctl /usr/bin/lorad-http /usr/bin/lorad-cli \
	/usr/bin/lorad-run /usr/bin/lorad-mkmodel /lib/systemd/system/lorad.service \
	/lib/systemd/system/lorad.socket /lib/systemd/system/lorad-admin.socket \
	/lib/systemd/system/lorad-http.service /usr/lib/sysusers.d/lorad.conf \
	/usr/lib/tmpfiles.d/lorad.conf /etc/lorad/lorad.conf \
	/usr/share/lorad/grafana/lorad-dashboard.json /usr/share/doc/lorad/copyright \
	/usr/share/man/man8/lorad.8.gz /usr/share/man/man8/loradctl.8.gz \
	/usr/share/man/man8/lorad-http.8.gz /usr/share/man/man1/lorad-cli.1.gz \
	/usr/share/man/man1/lorad-run.1.gz /usr/share/man/man1/lorad-mkmodel.1.gz \
	/usr/share/man/man5/lorad.conf.5.gz
lacks "$d_lorad" 'liblorad\.so' '/usr/include/'
has "$d_lib" "/usr/lib/$ma/liblorad.so.2"
lacks "$d_lib" "liblorad\.so\$" '\.a$' '/usr/bin/'
has "$d_dev" /usr/include/lorad/lorad.h /usr/include/lorad/abi.h "/usr/lib/$ma/liblorad.so" \
	"/usr/lib/$ma/liblorad.a" "/usr/lib/$ma/pkgconfig/lorad.pc" \
	"/usr/lib/$ma/cmake/lorad/loradConfig.cmake" "/usr/lib/$ma/cmake/lorad/loradTargets.cmake"
has "$d_py" /usr/lib/python3/dist-packages/lorad/__init__.py /usr/lib/python3/dist-packages/lorad/_ffi.py

# dependencies and control data
field() { dpkg-deb -f "$1" "$2"; }
field "$d_lorad" Depends | grep -q "liblorad2 (>= " || fail "lorad does not depend on liblorad2"
field "$d_lorad" Depends | grep -q "systemd | systemd-standalone-sysusers" || fail "lorad: no sysusers dependency"
field "$d_dev" Depends | grep -q "liblorad2 (= $ver)" || fail "liblorad-dev: not tied to its liblorad2"
field "$d_py" Depends | grep -q "python3" || fail "python3-lorad: no python3"
field "$d_py" Depends | grep -q "liblorad2" || fail "python3-lorad: no liblorad2"
[ "$(field "$d_lib" Section)" = libs ] || fail "liblorad2 section"
[ "$(field "$d_lib" Multi-Arch)" = same ] || fail "liblorad2 Multi-Arch"
mkdir -p "$dir/ctl-lib" "$dir/ctl-d"
dpkg-deb -e "$d_lib" "$dir/ctl-lib"
dpkg-deb -e "$d_lorad" "$dir/ctl-d"
grep -q "^liblorad.so.2 liblorad2 #MINVER#" "$dir/ctl-lib/symbols" || fail "no symbols file"
for s in lorad_connect@LORAD_2 lorad_wait@LORAD_2 lorad_result_wait@LORAD_2.1; do
	grep -q " $s " "$dir/ctl-lib/symbols" || fail "symbols: no $s"
done
grep -q "^/etc/lorad/lorad.conf$" "$dir/ctl-d/conffiles" || fail "lorad.conf is not a conffile"
# users before their directories: sysusers, then tmpfiles; units installed, not started
python3 - "$dir/ctl-d/postinst" <<'PY' || fail "postinst order"
import sys
t = open(sys.argv[1]).read()
assert "systemd-sysusers" in t and "systemd-tmpfiles" in t, t
assert t.index("systemd-sysusers") < t.index("systemd-tmpfiles")
assert "deb-systemd-invoke start" not in t and "deb-systemd-helper enable" not in t.split("was-enabled")[0]
PY
# the units name the binaries where the package puts them
dpkg-deb -x "$d_lorad" "$dir/root"
grep -q "^ExecStart=/usr/sbin/lorad --config /etc/lorad/lorad.conf" "$dir/root/lib/systemd/system/lorad.service" ||
	fail "lorad.service ExecStart"
grep -q "^ExecStart=/usr/bin/lorad-http " "$dir/root/lib/systemd/system/lorad-http.service" ||
	fail "lorad-http.service ExecStart"

# lintian, when installed: no errors; the rest is printed for the record
if command -v lintian >/dev/null; then
	lintian --tag-display-limit 0 "$debs"/*.changes >"$dir/lintian" 2>&1
	cat "$dir/lintian"
	grep -q "^E: " "$dir/lintian" && fail "lintian reports errors"
	# every binary has its manual page, and every page reads without a warning
	grep -Eq "^[EW]: .*(no-manual-page|manpage-|groff-message)" "$dir/lintian" &&
		fail "lintian: manual pages"
else
	echo "lintian is not installed: not run"
fi

# a throwaway root with the library packages; a user's program through pkg-config
for f in "$d_lib" "$d_dev" "$d_py"; do dpkg-deb -x "$f" "$dir/root"; done
export PKG_CONFIG_SYSROOT_DIR=$dir/root PKG_CONFIG_LIBDIR=$dir/root/usr/lib/$ma/pkgconfig
flags=$(pkg-config --cflags --libs lorad) || fail "pkg-config lorad"
case $flags in *"$dir/root/usr/include"*) ;; *) fail "pkg-config: $flags";; esac
cc -Wall -Werror -o "$dir/deb_client" "$here/deb_client.c" $flags || fail "compile against liblorad-dev"
LD_LIBRARY_PATH=$dir/root/usr/lib/$ma ldd "$dir/deb_client" | grep -q "liblorad.so.2 => $dir/root" ||
	fail "not linked with the packaged liblorad.so.2"
# the packaged daemon (null engine), the program against it
"$dir/root/usr/sbin/lorad" --null-engine --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
	--state-dir "$dir/state" >"$dir/lorad.log" 2>&1 &
dpid=$!
for _ in $(seq 100); do "$dir/root/usr/sbin/loradctl" --socket "$dir/a.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
LD_LIBRARY_PATH=$dir/root/usr/lib/$ma "$dir/deb_client" "$dir/l.sock" || fail "the program against the packaged daemon"
# the same program through the CMake package: find_package(lorad), lorad::lorad
mkdir -p "$dir/cm"
cp "$here/deb_client.c" "$dir/cm/"
cat >"$dir/cm/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.25)
project(deb_client C)
find_package(lorad 0.1 REQUIRED)
add_executable(deb_client deb_client.c)
target_link_libraries(deb_client PRIVATE lorad::lorad)
CM
(unset PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_LIBDIR
 cmake -S "$dir/cm" -B "$dir/cm/b" -DCMAKE_PREFIX_PATH="$dir/root/usr" >"$dir/cm.log" 2>&1 &&
 cmake --build "$dir/cm/b" >>"$dir/cm.log" 2>&1) || { cat "$dir/cm.log"; fail "find_package(lorad)"; }
LD_LIBRARY_PATH=$dir/root/usr/lib/$ma ldd "$dir/cm/b/deb_client" | grep -q "liblorad.so.2 => $dir/root" ||
	fail "CMake: not linked with the packaged liblorad.so.2"
LD_LIBRARY_PATH=$dir/root/usr/lib/$ma "$dir/cm/b/deb_client" "$dir/l.sock" || fail "the CMake-built program"
# the Python client from its package, over the packaged library
LORAD_LIBRARY=$dir/root/usr/lib/$ma/liblorad.so.2 PYTHONPATH=$dir/root/usr/lib/python3/dist-packages \
	python3 -c "import lorad, sys; sys.exit(0 if lorad.__file__.startswith('$dir/root') else 1)" ||
	fail "python3-lorad does not import"
echo ok
