#!/usr/bin/env python3
"""Compare Autobahn|Testsuite fuzzingclient reports: each target directly vs through wsingress.

Reads one or more `index.json` files (`{agent: {case: {behavior, behaviorClose, remoteCloseCode,
...}}}`) in which every target appears as agent `NAME-direct` and once per way (`--ways`, default
`proxy`; `tls` is the proxy's TLS listener) as `NAME-WAY`. For each target and way it checks,
case by case, that the agent ran the same cases as the direct one and got the same `behavior`,
`behaviorClose` and `remoteCloseCode`, and that no case FAILED. Prints a Markdown summary; with
`--docs FILE` also writes it into FILE between the summary markers. Exit status 1 on any
difference, FAILED verdict or missing case; 0 otherwise.
"""

import argparse
import datetime
import json
import sys

BEGIN = "<!-- autobahn-summary:begin -->"
END = "<!-- autobahn-summary:end -->"
VERDICTS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
WAY_LABELS = {"proxy": "through wsingress", "tls": "through wsingress over TLS (wss)"}


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def load(paths):
    agents = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for agent, cases in json.load(f).items():
                agents.setdefault(agent, {}).update(cases)
    return agents


def counts(cases):
    c = {v: 0 for v in VERDICTS}
    for result in cases.values():
        behavior = result.get("behavior", "?")
        c[behavior] = c.get(behavior, 0) + 1
    return c


def compare(direct, proxy):
    """Differences between two agents' results: (case, field, direct value, proxy value)."""
    diffs = []
    for case in sorted(set(direct) | set(proxy), key=case_key):
        d, p = direct.get(case), proxy.get(case)
        if d is None or p is None:
            diffs.append((case, "ran", "yes" if d else "no", "yes" if p else "no"))
            continue
        for field in ("behavior", "behaviorClose", "remoteCloseCode"):
            if d.get(field) != p.get(field):
                diffs.append((case, field, d.get(field), p.get(field)))
    return diffs


def failed(cases):
    return sorted(
        (c for c, r in cases.items() if "FAILED" in (r.get("behavior"), r.get("behaviorClose"))), key=case_key
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", help="index.json files")
    ap.add_argument("--target", action="append", default=[], metavar="NAME=LABEL", help="targets in order")
    ap.add_argument("--ways", default="proxy", help="comma-separated ways compared with direct (proxy, tls)")
    ap.add_argument("--mode", default="fast")
    ap.add_argument("--excluded", default="", help="excluded sections, for the summary")
    ap.add_argument("--elapsed", default="", help="wall time, for the summary")
    ap.add_argument("--machine", default="", help="machine description, for the summary")
    ap.add_argument("--version", default="", help="wsingress version, for the summary")
    ap.add_argument("--note", action="append", default=[], help="a line for the summary")
    ap.add_argument("--docs", help="write the summary into this Markdown file between the markers")
    args = ap.parse_args()

    agents = load(args.reports)
    targets = [t.split("=", 1) for t in args.target]
    rows, problems, all_diffs = [], [], []
    ways = [w for w in args.ways.split(",") if w]
    for name, label in targets:
        direct = agents.get(f"{name}-direct")
        if not direct:
            problems.append(f"{label}: no results for the direct run")
            continue
        runs = [("direct", direct, 0)]
        for way in ways:
            cases = agents.get(f"{name}-{way}")
            if not cases:
                problems.append(f"{label}: no results for the {way} run")
                continue
            diffs = compare(direct, cases)
            all_diffs += [(f"{label}, {WAY_LABELS.get(way, way)}",) + d for d in diffs]
            runs.append((WAY_LABELS.get(way, way), cases, len(diffs)))
        for way, cases, ndiff in runs:
            rows.append((f"{label}, {way}", len(cases), counts(cases), ndiff))
            for case in failed(cases):
                problems.append(f"{label}, {way}: case {case} FAILED")
    if all_diffs:
        problems.append(f"{len(all_diffs)} difference(s) between direct and proxied runs")
    through = " and ".join(WAY_LABELS.get(w, w) for w in ways)

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = []
    out.append(f"Run of `scripts/autobahn.sh --{args.mode}` on {now}" + (f", {args.elapsed} wall time" if args.elapsed else "") + ".")
    if args.machine:
        out.append(f"Machine: {args.machine}.")
    if args.version:
        out.append(f"Build: {args.version}; Autobahn|Testsuite 0.8.2 fuzzingclient under Python 2.7.")
    if args.excluded:
        out.append(f"Excluded sections: {args.excluded}.")
    out += [f"{n}." if not n.endswith(".") else n for n in args.note]
    out.append("")
    out.append("| target | cases | OK | NON-STRICT | INFORMATIONAL | UNIMPLEMENTED | FAILED | differences vs direct |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, c, ndiff in rows:
        cells = " | ".join(str(c.get(v, 0)) for v in VERDICTS)
        out.append(f"| {label} | {n} | {cells} | {ndiff} |")
    out.append("")
    if not problems:
        out.append(
            "**Same verdict in every case**: for every target, each case gave the same `behavior`, "
            f"`behaviorClose` and remote close code directly and {through}, and no case FAILED."
        )
    else:
        out.append("**Problems:**")
        out += [f"- {p}" for p in problems]
        if all_diffs:
            out.append("")
            out.append("| target, way | case | field | direct | through wsingress |")
            out.append("|---|---|---|---|---|")
            for label, case, field, d, p in all_diffs[:100]:
                out.append(f"| {label} | {case} | {field} | {d} | {p} |")
            if len(all_diffs) > 100:
                out.append(f"| … | {len(all_diffs) - 100} more | | | |")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)

    if args.docs:
        with open(args.docs, encoding="utf-8") as f:
            doc = f.read()
        if BEGIN in doc and END in doc:
            head, rest = doc.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            doc = f"{head}{BEGIN}\n{text}{END}{tail}"
        else:
            doc = f"{doc.rstrip()}\n\n{BEGIN}\n{text}{END}\n"
        with open(args.docs, "w", encoding="utf-8") as f:
            f.write(doc)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
