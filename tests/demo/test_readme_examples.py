#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The README's lorad-cli examples on the demo model give the text it shows.

Every line of a ```sh block of README.md that runs lorad-cli on
/tmp/lorad.sock and is followed by a "# OUTPUT" comment line is run
against a daemon serving demo/lorad.conf (its own sockets and state
directory), and its stdout must be OUTPUT (a trailing "   (...)" remark
is not part of it). An example whose text drifted from what the demo
gives, or a README without such examples, fails.

    test_readme_examples.py BUILD_BIN_DIR REPO_ROOT
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time


def examples(readme):
    """[(argv, expected)] from the README's sh blocks."""
    out, block, lines = [], False, []
    for line in open(readme, encoding="utf-8"):
        if line.startswith("```"):
            block = line.strip() == "```sh" and not block
            continue
        if block:
            lines.append(line.rstrip("\n"))
    joined = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line)
    for i, line in enumerate(joined[:-1]):
        nxt = joined[i + 1]
        if "lorad-cli" in line and "/tmp/lorad.sock" in line and nxt.startswith("# "):
            want = re.sub(r"\s{2,}\(.*\)$", "", nxt[2:]).rstrip()
            out.append((shlex.split(line.split(" &")[0]), want))
    return out


def main():
    bin_dir, root = sys.argv[1], sys.argv[2]
    os.chdir(root)
    cases = examples("README.md")
    if len(cases) < 5:
        print(f"FAIL: {len(cases)} lorad-cli examples with their output in README.md, want 5 or more")
        return 1
    d = tempfile.mkdtemp(prefix="lorad-readme-")
    sock, admin = os.path.join(d, "l.sock"), os.path.join(d, "a.sock")
    log = open(os.path.join(d, "lorad.log"), "w")
    daemon = subprocess.Popen([os.path.join(bin_dir, "lorad"), "--config", "demo/lorad.conf",
                               "--socket", sock, "--admin-socket", admin, "--state-dir",
                               os.path.join(d, "state"), "--threads", "1"],
                              stdout=log, stderr=subprocess.STDOUT)
    failed = 0
    try:
        for _ in range(200):
            if subprocess.run([os.path.join(bin_dir, "loradctl"), "--socket", admin, "status"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        for argv, want in cases:
            argv = [os.path.join(bin_dir, "lorad-cli")] + \
                   [sock if a == "/tmp/lorad.sock" else a for a in argv[1:]]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            got = r.stdout.strip()
            shown = " ".join(shlex.quote(a) for a in argv[1:])
            if r.returncode != 0 or got != want:
                failed += 1
                print(f"FAIL: lorad-cli {shown}\n  exit {r.returncode}, stderr {r.stderr.strip()!r}\n"
                      f"  got  {got!r}\n  want {want!r}")
            else:
                print(f"ok: {want}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
        if failed:
            print(open(os.path.join(d, "lorad.log")).read()[-2000:])
        shutil.rmtree(d, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
