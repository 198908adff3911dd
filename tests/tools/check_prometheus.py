#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Check a Prometheus text exposition (format 0.0.4) with real parsers.

    check_prometheus.py FILE|-

The parser of the Python prometheus_client (Debian's python3-prometheus-client)
reads it; a family whose samples are split from their # TYPE group comes out
of that parser as a second family of type "unknown", which is refused here.
When promtool (Debian's prometheus) is installed, `promtool check metrics`
must pass too. Exit 0 when valid, 1 with one line per problem, 77 when the
Python parser is not installed.
"""
import shutil
import subprocess
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("python3-prometheus-client is not installed: cannot check", file=sys.stderr)
    sys.exit(77)

text = sys.stdin.read() if sys.argv[1] == "-" else open(sys.argv[1]).read()
problems = []
try:
    families = list(text_string_to_metric_families(text))
except Exception as e:  # the parser's own refusal
    print(f"not valid Prometheus text: {e}")
    sys.exit(1)
seen = {}
for f in families:
    if f.name in seen:
        problems.append(f"family {f.name} appears twice: its samples are not together")
    seen[f.name] = f
    if f.type == "unknown":
        problems.append(f"family {f.name} has no TYPE: samples apart from their group?")
if shutil.which("promtool"):
    r = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                       capture_output=True)
    if r.returncode != 0:
        problems.append("promtool check metrics: " + (r.stdout + r.stderr).strip())
for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f"{len(families)} families, {sum(len(f.samples) for f in families)} samples: valid"
      + (" (and promtool agrees)" if shutil.which("promtool") else ""))
