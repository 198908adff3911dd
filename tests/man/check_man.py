#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The manual pages (docs/man/, built into BUILD/man):

    check_man.py render MANDIR
        every page renders with groff -man -ww (all warnings) and with
        man --warnings as lintian runs it, without a single warning

    check_man.py options MANDIR BINDIR
        every option that `lorad --help`, `loradctl --help`, `lorad-http
        --help`, `lorad-cli --help`, `lorad-run --help` and `lorad-mkmodel
        --help` print is in that program's page, and every key of the
        option table (the [daemon], [limits], [access] and [pool] lines of
        `lorad --help`) is in lorad.conf(5)

Exits 77 (skipped) when groff or man is not installed (render only).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

PAGES = {"lorad": "lorad.8", "loradctl": "loradctl.8", "lorad-http": "lorad-http.8",
         "lorad-cli": "lorad-cli.1", "lorad-run": "lorad-run.1", "lorad-mkmodel": "lorad-mkmodel.1"}


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def render(mandir):
    pages = sorted(glob.glob(os.path.join(mandir, "*.[1-8]")))
    if len(pages) < len(PAGES) + 1:
        fail("%s: %d pages, want %d" % (mandir, len(pages), len(PAGES) + 1))
    for tool in ("groff", "man"):
        if not shutil.which(tool):
            print("%s is not installed: skipped" % tool)
            sys.exit(77)
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80", MAN_KEEP_STDERR="1")
    bad = []
    for p in pages:
        for cmd in (["groff", "-man", "-Tutf8", "-ww", "-z", p],
                    # what lintian's manual page check runs
                    ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", p]):
            r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
            if r.returncode or r.stderr.strip():
                bad.append("%s: exit %d: %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
        text = open(p).read()
        # NAME: "name \- what", the whatis line mandb and lintian read
        if not re.search(r"^\.SH NAME\n[a-z.-]+(\\-[a-z.]+)* \\- \S", text, re.M):
            bad.append("%s: no 'NAME \\- description' line" % p)
    if bad:
        fail("\n".join(bad))
    print("%d pages render without warnings" % len(pages))


def plain(roff):
    """The page's source as text: fonts dropped, escapes of dashes undone."""
    t = re.sub(r"\\f[BIRP]", "", roff)
    return t.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")


def options_of(help_text):
    longs = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))
    shorts = set(re.findall(r"(?<![\w-])(-[a-zA-Z])(?![\w-])", help_text))
    return longs | shorts


def has(text, opt):
    return re.search(r"(?<![\w-])" + re.escape(opt) + r"(?![\w-])", text) is not None


def options(mandir, bindir):
    bad = []
    for prog, page in PAGES.items():
        path = os.path.join(mandir, page)
        if not os.path.exists(path):
            fail("no page %s" % path)
        text = plain(open(path).read())
        args = [os.path.join(bindir, prog), "--help"]
        if prog == "lorad":
            args[1:1] = ["--config", "/dev/null"]   # not whatever /etc/lorad holds
        r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=30)
        if r.returncode:
            fail("%s: exit %d" % (" ".join(args), r.returncode))
        opts = options_of(r.stdout)
        if len(opts) < 3:
            fail("%s --help: only %s" % (prog, opts))
        missing = sorted(o for o in opts if not has(text, o))
        if missing:
            bad.append("%s: not in %s: %s" % (prog, page, " ".join(missing)))
        print("%s: %d options, all in %s" % (prog, len(opts), page) if not missing else
              "%s: %d options, %d missing" % (prog, len(opts), len(missing)))
        if prog == "lorad":
            # the table's keys, by section, in lorad.conf(5)
            conf = plain(open(os.path.join(mandir, "lorad.conf.5")).read())
            keys, section = [], None
            for line in r.stdout.splitlines():
                m = re.match(r"^\[(\w+)\]", line)
                if m:
                    section = m.group(1)
                    continue
                m = re.match(r"^  --([a-z0-9-]+)", line)
                if section and m:
                    keys.append(m.group(1).replace("-", "_"))
            if len(keys) < 30:
                fail("lorad --help: only %d table options" % len(keys))
            missing = [k for k in keys if not re.search(r"^%s = " % re.escape(k), conf, re.M)]
            if missing:
                bad.append("lorad.conf.5 lacks the keys %s" % " ".join(missing))
            print("lorad.conf.5: %d keys of the option table" % len(keys))
    if bad:
        fail("\n".join(bad))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "render":
        render(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "options":
        options(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        sys.exit(2)
