#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Check a Grafana dashboard against a real /metrics scrape, so it cannot rot.

    check_dashboard.py DASHBOARD.json METRICS.txt

Every PromQL expression of the dashboard (panel targets, nested rows,
template queries) is taken apart: string literals, ranges and Grafana
variables out, then every remaining identifier is a PromQL keyword or
function, a label name in by/on/without/ignoring/group_left/group_right
or a matcher, or a metric name. Each metric name must be a sample name in
the scrape (histograms by their _bucket/_sum/_count samples), each label
name must be a label some lorad sample carries (or "le" on a _bucket).
Exit 0 when all hold, 1 with one line per problem.
"""
import json
import re
import sys

FUNCS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "histogram_quantile", "label_values", "label_replace", "label_join", "abs", "ceil", "floor",
    "round", "clamp", "clamp_min", "clamp_max", "vector", "scalar", "time", "timestamp",
    "absent", "absent_over_time", "avg_over_time", "max_over_time", "min_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "changes", "resets", "sort",
    "sort_desc", "exp", "ln", "log2", "log10", "sqrt", "predict_linear", "holt_winters",
    "and", "or", "unless", "bool", "offset", "inf", "nan", "e", "group_left", "group_right",
}
GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


def exprs(dash):
    out = []

    def walk(panels):
        for p in panels or []:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels"))
    walk(dash.get("panels"))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if q:
            out.append(("variable " + v.get("name", "?"), q))
    return out


def scrape(text):
    samples, labels = set(), set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        samples.add(m.group(1))
        for k in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""):
            labels.add(k)
    return samples, labels


def check(where, expr, samples, labels, problems):
    e = re.sub(r'"(\\.|[^"\\])*"', '""', expr)        # string literals
    e = re.sub(r"\[[^\]]*\]", "", e)                    # ranges, [$__rate_interval]
    e = re.sub(r"\$\{?\w+\}?", "", e)                   # Grafana variables
    used_labels = []
    for _, ls in re.findall(GROUPING, e):
        used_labels += [l.strip() for l in ls.split(",") if l.strip()]
    e = re.sub(GROUPING, " ", e)
    for body in re.findall(r"\{([^}]*)\}", e):
        used_labels += re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body)
    e = re.sub(r"\{[^}]*\}", " ", e)
    if where.startswith("variable"):
        # label_values(metric, label): the second argument is a label
        m = re.search(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)", e)
        if m:
            used_labels.append(m.group(2))
            e = e.replace(m.group(0), " label_values( " + m.group(1) + " ) ")
    metrics = [t for t in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b", " ", e))
               if t not in FUNCS]
    if not metrics:
        problems.append(f"{where}: no metric in {expr!r}")
    for m in metrics:
        if m not in samples:
            problems.append(f"{where}: {m} is not in the scrape ({expr})")
    for l in used_labels:
        if l not in labels and l != "le":
            problems.append(f"{where}: label {l!r} is on no lorad sample ({expr})")
    return metrics


def main():
    dash = json.load(open(sys.argv[1]))
    samples, labels = scrape(open(sys.argv[2]).read())
    problems, seen = [], set()
    all_exprs = exprs(dash)
    if not all_exprs:
        problems.append("the dashboard has no PromQL expression")
    for where, expr in all_exprs:
        seen.update(check(where, expr, samples, labels, problems))
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    for p in problems:
        print(p)
    print(f"{len(all_exprs)} expressions, {len(seen)} metrics, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
