#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A hostile admin socket for loradctl's tests:

    fake_admin.py PATH MODE

MODE: silent (accepts, reads, never answers), dribble (one byte a second,
never a newline), flood (megabytes without a newline), garbage (a line that
is not JSON), refuse (ok: false), evil (well-formed replies whose metrics
text and names carry escape sequences, overlong labels, broken lines and
thousands of series), load (adapters_prefetch accepted; adapters_list shows
big@v1 loading, a quarter more each call, with hostile states and byte
counts among the good ones, then resident; bad@v1 failing with escape
sequences in its error), busy (the first three metrics refused as the
daemon refuses them while eight replies are being written: errno EAGAIN),
allbusy (every metrics and list refused so), oldbusy (as busy, with the
errno daemons before ABI 1.5 gave: EBUSY). Serves until killed.
"""
import json
import os
import socket
import sys
import threading
import time

path, mode = sys.argv[1], sys.argv[2]


def evil_metrics():
    lines = ["# HELP lorad_requests_total x", "# TYPE lorad_requests_total counter"]
    lines.append('lorad_requests_total{skill="\x1b[2J\x1b[31mred",version="v\\"1\\n"} 5')
    lines.append('lorad_requests_total{skill="' + "s" * 5000 + '",version="x"} 1')
    lines.append('lorad_requests_total{skill="a",version="b" 3')          # no closing brace
    lines.append('lorad_requests_total{skill="a",version="b"} NaN')
    lines.append('lorad_requests_total{skill="a",version="b"} -7')
    lines.append('lorad_ttft_seconds_bucket{skill="a",version="b",le="abc"} 1')
    lines.append('lorad_engine_waiting 1e308')
    lines.append("x" * 100000)
    for i in range(5000):
        lines.append(f'lorad_generated_tokens_total{{skill="k{i}",version="k{i}@v1"}} {i}')
    return "\n".join(lines) + "\n"


def reply(cmd):
    if cmd == "status":
        return {"ok": True, "engine": "\x1b]0;pwned\x07", "backend": 12, "uptime_s": "soon",
                "pid": [1], "clients": -5, "draining": "yes"}
    if cmd == "metrics":
        return {"ok": True, "text": evil_metrics()}
    if cmd == "adapters_list":
        return {"ok": True, "adapters": [{"id": "\x1b[H", "state": 3}, 7, None,
                                         {"id": "k1@v1", "state": "resident"}]}
    return {"ok": False, "error": "unknown"}


calls = {"list": 0, "metrics": 0}
BUSY = ("8 replies of metrics, stats and adapter lists are being written already (the limit); "
        "try again in a moment")


def busy_reply(cmd, always=False, errno=11):
    # the daemon's reply threads all taken: for the first three metrics asked
    # (busy), or for every metrics and list (allbusy); errno 11 is EAGAIN,
    # 16 (EBUSY) what older daemons said (oldbusy)
    if always and cmd in ("metrics", "adapters_list", "route_show"):
        return {"ok": False, "error": BUSY, "errno": errno}
    if cmd == "metrics":
        calls["metrics"] += 1
        if calls["metrics"] <= 3:
            return {"ok": False, "error": BUSY, "errno": errno}
    if always and cmd == "status":
        return {"ok": True}
    return reply(cmd)
MIB4 = 4 << 20
# each adapters_list call's big@v1: state, load_done, load_total
LOAD_STEPS = [
    ("reading", 0, MIB4),
    ("reading\x1b[2J", MIB4 // 4, MIB4),           # a state with an escape: shown as a word of ours
    ("reading", 10 ** 30, MIB4),                     # done out of range: no percentage
    ("host", MIB4 // 2, -1),                         # a negative total: no percentage
    ("building", 3 * MIB4 // 4, MIB4),
]


def load_reply(cmd):
    if cmd == "adapters_prefetch":
        return {"ok": True}
    if cmd == "adapters_list":
        n = calls["list"]
        calls["list"] += 1
        big = {"id": "big@v1", "state": "resident", "residency": "device"}
        if n < len(LOAD_STEPS):
            st, done, total = LOAD_STEPS[n]
            big = {"id": "big@v1", "state": st, "residency": "loading",
                   "load_done": done, "load_total": total}
        bad = {"id": "bad@v1", "state": "failed", "residency": "failed",
               "load_error": "\x1b]0;pwned\x07disk on fire\x9b2J"}
        return {"ok": True, "adapters": [big, bad]}
    return {"ok": False, "error": "unknown"}


def serve(c):
    try:
        data = b""
        while b"\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return
            data += chunk
        if mode == "silent":
            time.sleep(3600)
        elif mode == "dribble":
            for _ in range(3600):
                c.sendall(b"{")
                time.sleep(1)
        elif mode == "flood":
            block = b"x" * (1 << 20)
            while True:
                c.sendall(block)
        elif mode == "garbage":
            c.sendall(b"this is not json\n")
        elif mode == "refuse":
            c.sendall(b'{"ok": false, "error": "go away"}\n')
        elif mode == "evil":
            cmd = json.loads(data.split(b"\n")[0]).get("cmd")
            c.sendall(json.dumps(reply(cmd)).encode() + b"\n")
        elif mode == "load":
            cmd = json.loads(data.split(b"\n")[0]).get("cmd")
            c.sendall(json.dumps(load_reply(cmd)).encode() + b"\n")
        elif mode in ("busy", "allbusy", "oldbusy"):
            cmd = json.loads(data.split(b"\n")[0]).get("cmd")
            c.sendall(json.dumps(busy_reply(cmd, mode == "allbusy",
                                            16 if mode == "oldbusy" else 11)).encode() + b"\n")
    except OSError:
        pass
    finally:
        c.close()


if os.path.exists(path):
    os.unlink(path)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(64)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
