#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Run a command on a pseudo-terminal and keep what it writes there:

    ontty.py OUT CMD [ARG...]

CMD's stdin, stdout and stderr are the terminal (a pty from the pty module);
every byte it writes goes into the file OUT; the exit status is CMD's. For
loradctl's tests of what it draws on a terminal (progress lines).
"""
import os
import pty
import sys

out = open(sys.argv[1], "wb")
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
while True:
    try:
        d = os.read(fd, 65536)
    except OSError:
        break
    if not d:
        break
    out.write(d)
    out.flush()  # readable as it comes: a test may wait on what is drawn
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
