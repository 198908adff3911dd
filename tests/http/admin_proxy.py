#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""An admin socket between lorad-http and the daemon, for the chat tests:

    admin_proxy.py LISTEN UPSTREAM COUNT MUTATE

Each command is passed to the daemon's admin socket UPSTREAM and its reply
back. The chat_template commands are counted: their number is written to
the file COUNT after each. When the file MUTATE holds a JSON object, its
fields replace the chat_template reply's (a hostile or broken daemon).
Serves until killed.
"""
import json
import os
import socket
import sys
import threading

listen, upstream, count_file, mutate_file = sys.argv[1:5]
lock = threading.Lock()
count = [0]


def serve(c):
    try:
        line = c.makefile("rb").readline()
        u = socket.socket(socket.AF_UNIX)
        u.connect(upstream)
        u.sendall(line)
        reply = u.makefile("rb").readline()
        u.close()
        if json.loads(line).get("cmd") == "chat_template":
            with lock:
                count[0] += 1
                with open(count_file + ".tmp", "w") as f:
                    f.write(str(count[0]))
                os.replace(count_file + ".tmp", count_file)
            try:
                with open(mutate_file) as f:
                    m = json.load(f)
            except (OSError, ValueError):
                m = None
            if isinstance(m, dict):
                r = json.loads(reply)
                r.update(m)
                reply = json.dumps(r).encode() + b"\n"
        c.sendall(reply)
    except (OSError, ValueError):
        pass
    finally:
        c.close()


s = socket.socket(socket.AF_UNIX)
s.bind(listen)
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
