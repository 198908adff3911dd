#!/usr/bin/env bash
# Where systemd is PID 1: install into a scratch prefix, start, reload and
# stop the real units. Elsewhere (containers, these build machines) say why
# and skip.
set -euo pipefail
build=$1
if [ "$(ps -p 1 -o comm= 2>/dev/null)" != systemd ]; then
	echo "skipped: PID 1 is '$(ps -p 1 -o comm= 2>/dev/null)', not systemd"
	exit 77
fi
if [ "$(id -u)" != 0 ]; then
	echo "skipped: starting system units needs root"
	exit 77
fi
DESTDIR=/ cmake --install "$build" >/dev/null
systemd-sysusers
systemd-tmpfiles --create
systemctl daemon-reload
systemctl start lorad.socket lorad-admin.socket
systemctl start lorad.service
systemctl is-active lorad.service
systemctl reload lorad.service
systemctl is-active lorad.service
systemctl stop lorad.service lorad.socket lorad-admin.socket
