#!/usr/bin/env python3
"""Turn scripts/bench.sh's results.jsonl into a table (stdout), docs/performance.md and a chart.

Usage:
  report.py RESULTS.jsonl [--meta META.json] [--markdown OUT.md --chart OUT.png --workdir DIR]
  report.py --one RESULTS.jsonl      # one-line summary of the last run (progress output)
Standard library only; the chart is drawn by gnuplot (scripts/bench/chart.gp).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

TARGETS = ["direct", "nginx", "haproxy", "wsingress", "wsingress-2r", "wsingress-1k"]
PROXIES = ["nginx", "haproxy", "wsingress"]
# The plain cases (the chart draws these), then TLS (nginx, HAProxy and wsingress terminating
# TLS 1.3 on the same certificate, full handshakes) and the route-table cases (wsingress with 2
# and with 1,000 routes).
BASE = ["handshake", "pingpong-1", "pingpong-64", "stream"]
WINDOWED = BASE + ["tls-handshake", "tls-stream", "routes-exact", "routes-wildcard"]
IDLE = ["idle", "tls-idle"]
CASE_TITLE = {
    "handshake": "handshake (connect, upgrade, 128 B echo, close; 16 loops)",
    "pingpong-1": "pingpong, 1 connection × 1 KiB",
    "pingpong-64": "pingpong, 64 connections × 1 KiB",
    "stream": "stream, 4 connections × 64 KiB, window 4",
    "idle": "idle connections",
    "tls-handshake": "full TLS 1.3 handshake + upgrade + 128 B echo + close; 16 loops",
    "tls-stream": "stream over TLS, 4 connections × 64 KiB, window 4",
    "tls-idle": "idle TLS connections",
    "routes-exact": "handshake to an exact host, 2 vs 1,000 routes",
    "routes-wildcard": "handshake to a wildcard host, 2 vs 1,000 routes",
}
UNIT = {"handshake": "handshakes/s", "pingpong-1": "msg/s", "pingpong-64": "msg/s", "stream": "MB/s",
        "tls-handshake": "handshakes/s", "tls-stream": "MB/s", "routes-exact": "handshakes/s",
        "routes-wildcard": "handshakes/s"}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def throughput(case, r):
    return r.get("mb_per_s") if case.endswith("stream") else r.get("ops_per_s")


def cpu_per_op(r):
    p = r.get("proxy") or {}
    return p.get("cpu_us_per_op")


def one_line(row):
    r = row.get("result")
    if not r:
        return f"no result (exit {row.get('exit')})"
    err = f", {r.get('errors', 0)} errors" if r.get("errors") else ""
    if r.get("mode") == "idle":
        p = r.get("proxy") or {}
        mem = f", {p.get('bytes_per_conn')} B/conn" if p else ""
        return f"held {r.get('held')}/{r.get('connections')}, sample {r.get('sample_ok')}/{r.get('sample')}{mem}{err}"
    lat = r.get("latency_us") or {}
    cpu = cpu_per_op(r)
    cpu_s = f", proxy {cpu} µs/op" if cpu is not None else ""
    return (f"{throughput(row['case'], r)} {UNIT.get(row['case'], '')}, p50 {lat.get('p50')} µs,"
            f" p99 {lat.get('p99')} µs{cpu_s}{err}")


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def fmt(x, digits=None):
    if x is None:
        return "—"
    if digits is None:
        digits = 0 if abs(x) >= 1000 else (1 if abs(x) >= 10 else 2)
    return f"{x:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def summarise(rows):
    """{case: {target: {...medians...}}}"""
    out = {}
    for row in rows:
        out.setdefault(row["case"], {}).setdefault(row["target"], []).append(row)
    summary = {}
    for case, by_target in out.items():
        summary[case] = {}
        for target, runs in by_target.items():
            results = [r["result"] for r in runs if r.get("result")]
            failed_runs = sum(1 for r in runs if not r.get("result") or r.get("exit", 0) not in (0,))
            errors = sum(r.get("errors", 0) for r in results)
            s = {"runs": len(runs), "failed_runs": failed_runs, "errors": errors}
            samples = [e for r in results for e in r.get("error_samples", [])]
            s["error_samples"] = samples[:3]
            if case in IDLE:
                per = [(r.get("proxy") or {}).get("bytes_per_conn") for r in results]
                s["bytes_per_conn"] = med(per)
                s["bytes_range"] = rng(per)
                s["held"] = med([r.get("held") for r in results])
                s["connections"] = med([r.get("connections") for r in results])
                s["sample_ok"] = min([r.get("sample_ok", 0) for r in results], default=0)
                s["sample"] = max([r.get("sample", 0) for r in results], default=0)
                s["at_100k"] = med([(r.get("proxy") or {}).get("rss_at_100k_mib") for r in results])
                s["cpu"] = med([cpu_per_op(r) for r in results])
            else:
                tp = [throughput(case, r) for r in results]
                s["tp"] = med(tp)
                s["tp_range"] = rng(tp)
                lat = [r.get("latency_us") or {} for r in results]
                for q in ("p50", "p99", "p999"):
                    s[q] = med([l.get(q) for l in lat])
                cpu = [cpu_per_op(r) for r in results]
                s["cpu"] = med(cpu)
                s["cpu_range"] = rng(cpu)
            summary[case][target] = s
    return summary


def table_lines(summary, targets, markdown, cases=BASE):
    lines = []

    def row(cells):
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, WIDTHS)))

    head = ["mode", "target", "throughput (median)", "min–max", "×nginx", "×direct",
            "p50 µs", "p99 µs", "p99.9 µs", "proxy CPU µs/op", "CPU min–max", "CPU ×nginx", "errors"]
    WIDTHS = [15, 12, 22, 22, 7, 8, 9, 9, 9, 15, 14, 10, 6]
    row(head)
    if markdown:
        lines.append("|" + "|".join(["---"] * len(head)) + "|")
    for case in cases:
        by = summary.get(case, {})
        nginx = by.get("nginx", {})
        direct = by.get("direct", {})
        for t in targets:
            s = by.get(t)
            if not s:
                continue
            lo, hi = s["tp_range"]
            clo, chi = s["cpu_range"]
            row([case, t, f"{fmt(s['tp'])} {UNIT[case]}", f"{fmt(lo)}–{fmt(hi)}",
                 fmt_ratio(ratio(s["tp"], nginx.get("tp"))), fmt_ratio(ratio(s["tp"], direct.get("tp"))),
                 fmt(s["p50"]), fmt(s["p99"]), fmt(s["p999"]),
                 fmt(s["cpu"]), f"{fmt(clo)}–{fmt(chi)}" if clo is not None else "—",
                 fmt_ratio(ratio(s["cpu"], nginx.get("cpu"))),
                 errors_cell(s)])
    return lines


def errors_cell(s):
    e = str(s["errors"])
    if s["failed_runs"]:
        e += f" ({s['failed_runs']} run(s) failed)"
    return e


def idle_lines(summary, targets, markdown, case="idle"):
    by = summary.get(case, {})
    nginx = by.get("nginx", {})
    lines = []
    head = ["target", "held", "sample still echoing", "bytes per connection (median)", "min–max", "×nginx",
            "RSS at 100,000 (MiB)", "proxy CPU µs per open", "errors"]
    WIDTHS = [10, 8, 20, 29, 18, 7, 20, 21, 6]

    def row(cells):
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, WIDTHS)))

    row(head)
    if markdown:
        lines.append("|" + "|".join(["---"] * len(head)) + "|")
    for t in targets:
        s = by.get(t)
        if not s:
            continue
        lo, hi = s["bytes_range"]
        row([t, f"{fmt(s['held'])}/{fmt(s['connections'])}", f"{s['sample_ok']}/{s['sample']}",
             fmt(s["bytes_per_conn"]) if t != "direct" else "(no proxy)",
             f"{fmt(lo)}–{fmt(hi)}" if lo is not None else "—",
             fmt_ratio(ratio(s["bytes_per_conn"], nginx.get("bytes_per_conn"))),
             fmt(s["at_100k"]), fmt(s["cpu"]), errors_cell(s)])
    return lines


def verdicts(summary):
    """wsingress against the better of nginx and HAProxy, per the issue's targets."""
    out = []
    for case in WINDOWED:
        by = summary.get(case, {})
        w = by.get("wsingress")
        peers = [by.get(p) for p in ("nginx", "haproxy") if by.get(p)]
        if not w or not peers:
            continue
        best_cpu = min((p["cpu"] for p in peers if p.get("cpu") is not None), default=None)
        best_tp = max((p["tp"] for p in peers if p.get("tp") is not None), default=None)
        best_p99 = min((p["p99"] for p in peers if p.get("p99") is not None), default=None)
        checks = []
        if case != "pingpong-1" and best_cpu:
            r = ratio(w["cpu"], best_cpu)
            checks.append(("CPU/op ≤ 0.8× better peer", r is not None and r <= 0.8, fmt_ratio(r)))
        if best_tp:
            r = ratio(w["tp"], best_tp)
            checks.append(("throughput ≥ better peer", r is not None and r >= 1.0, fmt_ratio(r)))
        if best_p99:
            r = ratio(w["p99"], best_p99)
            checks.append(("p99 no worse", r is not None and r <= 1.0, fmt_ratio(r)))
        out.append((case, checks))
    for case in IDLE:
        by = summary.get(case, {})
        w = by.get("wsingress")
        peers = [by.get(p) for p in ("nginx", "haproxy") if by.get(p)]
        if w and peers:
            best = min((p["bytes_per_conn"] for p in peers if p.get("bytes_per_conn") is not None), default=None)
            r = ratio(w["bytes_per_conn"], best)
            out.append((case, [("memory/conn ≤ 0.8× better peer", r is not None and r <= 0.8, fmt_ratio(r)),
                               ("sample echoes", w["sample_ok"] == w["sample"] and w["sample"] > 0,
                                f"{w['sample_ok']}/{w['sample']}")]))
    # The route table: handshake CPU must not grow with the number of routes.
    for case in ("routes-exact", "routes-wildcard"):
        by = summary.get(case, {})
        small, big = by.get("wsingress-2r"), by.get("wsingress-1k")
        if small and big:
            r = ratio(big.get("cpu"), small.get("cpu"))
            out.append((case, [("CPU/op with 1,000 routes ≤ 1.1× with 2", r is not None and r <= 1.1, fmt_ratio(r))]))
    return out


def chart(summary, targets, out_png, workdir):
    proxies = [p for p in PROXIES if p in targets]
    if not proxies:
        return False
    tp_path = os.path.join(workdir, "chart-throughput.dat")
    cost_path = os.path.join(workdir, "chart-cost.dat")
    with open(tp_path, "w") as f:
        f.write("case " + " ".join(proxies) + "\n")
        for case in BASE:
            by = summary.get(case, {})
            d = by.get("direct", {}).get("tp")
            vals = [ratio(by.get(p, {}).get("tp"), d) for p in proxies]
            f.write(case + " " + " ".join("NaN" if v is None else f"{v:.3f}" for v in vals) + "\n")
    with open(cost_path, "w") as f:
        f.write("case " + " ".join(proxies) + "\n")
        for case in BASE + ["idle"]:
            by = summary.get(case, {})
            key = "bytes_per_conn" if case == "idle" else "cpu"
            n = by.get("nginx", {}).get(key)
            vals = [ratio(by.get(p, {}).get(key), n) for p in proxies]
            label = "idle-memory" if case == "idle" else case + "-cpu"
            f.write(label + " " + " ".join("NaN" if v is None else f"{v:.3f}" for v in vals) + "\n")
    gp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chart.gp")
    cmd = ["gnuplot", "-e", f"tp='{tp_path}'; cost='{cost_path}'; out='{out_png}'; n={len(proxies)}", gp]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print("chart: gnuplot failed:\n" + r.stderr, file=sys.stderr)
        return False
    return True


def markdown(summary, targets, meta, chart_name):
    m = meta
    measured = [t for t in targets if t in {k for c in summary.values() for k in c}]
    lines = [
        "# Performance",
        "",
        "WebSocket relay benchmark: a direct connection to the echo backend (the limit), nginx (the classic",
        "`map $http_upgrade` recipe, 1 worker), HAProxy (1 thread) and wsingress (`--workers 1`), measured in one",
        "run by `scripts/bench.sh`. Each proxy is pinned to CPU 0; the load generator (`wsbench`) and the two echo",
        "backends share CPU 1. Every echo is checked byte for byte.",
        "",
        f"- date: {m.get('date')}; commit {m.get('commit')}",
        f"- machine: {m.get('nproc')} CPUs, {m.get('cpu')}, Linux {m.get('kernel')}",
        f"- peers: {m.get('nginx')}, {m.get('haproxy')}; echo backends: {m.get('echo')};"
        f" wsingress built from the same commit",
        f"- {m.get('rounds')} round(s), interleaved; {m.get('duration')} s windows after {m.get('warmup')} s warm-up;"
        f" median of rounds, min–max across rounds{' (quick smoke run)' if m.get('quick') else ''}",
    ]
    loads = sorted(r["load1"] for r in m.get("_rows", []) if r.get("load1") is not None)
    if loads:
        lines.append(f"- machine load (1-minute load average after each run): median {statistics.median(loads):.1f},"
                     f" max {loads[-1]:.1f}; the benchmark itself accounts for about 3, more means other work"
                     " shared the cores and the throughput figures of those runs are low")
    if "wsingress" not in measured:
        lines += ["", "**wsingress: not yet measured** — the proxy did not answer when this run was made"
                  " (`wsingress serve` was started and probed, and skipped)."]
    lines += [
        "",
        f"![relay benchmark]({chart_name})",
        "",
        "## Throughput, latency and the proxy's CPU per operation",
        "",
        "On 2 cores the load generator and backends saturate their core, so throughput ratios understate",
        "what a proxy could do; the proxy's own CPU time per operation (its run time over the measuring window,",
        "from /proc, divided by the operations completed) is the fairer figure.",
        "",
    ]
    lines += table_lines(summary, targets, True)
    lines += ["", "## Idle connections", "",
              f"{fmt(m.get('idle'))} connections opened from 16 source addresses (127.0.0.2–17), one 64 B echo each,"
              " held, then the proxy's VmRSS growth divided by the connections held; a sample of 100 spread"
              " over them must still echo. RSS at 100,000 = RSS before + 100,000 × bytes per connection.", ""]
    lines += idle_lines(summary, targets, True)
    lines += ["", "## TLS", "",
              "nginx, HAProxy and wsingress terminate TLS on a second port with the same ECDSA P-256 certificate",
              "(`bench.test`, from a CA the script makes with openssl), TLS 1.3 only; nginx has session tickets and",
              "its cache off, HAProxy `no-tls-tickets` and `tune.ssl.cachesize 0`; wsingress has no such setting and",
              "keeps rustls' defaults (it still sends two TLS 1.3 tickets per handshake, which costs it, not its",
              "peers). wsbench offers only TLS_AES_128_GCM_SHA256 and X25519, and never resumes a session, so every",
              "handshake is a full one with the same algorithms on every proxy. `tls-handshake` is a full TLS",
              "handshake, the upgrade, one 128 B echo and the close; `tls-stream` the 64 KiB stream over TLS;",
              "`tls-idle` the idle connections held over TLS (bytes per connection include the TLS session).", ""]
    lines += [l for l in table_lines(summary, targets, True, cases=["tls-handshake", "tls-stream"])]
    lines += [""]
    lines += idle_lines(summary, targets, True, case="tls-idle")
    lines += ["", "## 1,000 routes", "",
              "wsingress alone, two processes in the same run: `wsingress-2r` with 2 routes and `wsingress-1k` with",
              "1,000 (500 exact hosts `hI.bench.test`, 500 one-label wildcards `*.wI.bench.test`), both from a",
              "manifests file to the same two echo backends; the handshake case with `Host: h0.bench.test` (exact)",
              "and `Host: x.w0.bench.test` (wildcard), hosts both tables hold. Exact hosts are hashed and wildcards",
              "looked up by suffix, so the CPU per handshake should not grow with the table.", ""]
    lines += table_lines(summary, targets, True, cases=["routes-exact", "routes-wildcard"])
    v = verdicts(summary)
    if v:
        lines += ["", "## wsingress against the better of nginx and HAProxy", "",
                  "| mode | check | ratio | met |", "|---|---|---|---|"]
        for case, checks in v:
            for name, ok, r in checks:
                lines.append(f"| {case} | {name} | {r} | {'yes' if ok else '**no**'} |")
    errs = [(c, t, s) for c, by in summary.items() for t, s in by.items() if s["errors"] or s["failed_runs"]]
    if errs:
        lines += ["", "## Errors", ""]
        for c, t, s in errs:
            lines.append(f"- {c} / {t}: {s['errors']} errors, {s['failed_runs']} failed run(s);"
                         f" e.g. {'; '.join(s['error_samples']) or '—'}")
    lines += ["", "## Reading the numbers", "",
              "- **Proxy CPU per operation** is the proxy process's run time over the measuring window (per-thread",
              "  `schedstat`, nanoseconds; `/proc/PID/stat` utime+stime if a thread exited) divided by the",
              "  operations completed in it. For nginx it is the one worker process. This is the figure to compare:",
              "  the other core is saturated by the load generator and the backends, so throughput ratios understate",
              "  every proxy.",
              "- **Direct runs never cross cores** (load generator and backend share CPU 1), while every proxied message",
              "  crosses between the two cores four times per round trip. On a virtual machine a wakeup of a halted",
              "  vCPU is expensive, so `pingpong-1` (one message in flight, the proxy idle between messages) mostly",
              "  measures wakeups, for every proxy alike: in a check on the machine below, wsingress alone on CPU 0",
              "  used 58.8 µs of CPU per round trip (p50 137 µs), and 8.2 µs (p50 17 µs) when it shared CPU 1 with the",
              "  load generator. Busy cases (`pingpong-64`, `stream`, `handshake`) amortise the wakeups.",
              "- **Idle memory** is the growth of the proxy's VmRSS while the connections were opened and held",
              "  (the process is restarted before each round, so freed memory from earlier cases is not reused).",
              "  The direct row has no proxy, so no memory figure; the backends' memory is never counted.",
              "- Latency is the round trip as the load generator sees it (handshake: connect to close); p99 on a",
              "  shared 2-core machine is dominated by scheduling, so compare it across targets of the same run only.",
              ]
    lines += ["", "## Reproduce", "", "```sh",
              "scripts/bench.sh          # 3 rounds, about 10 minutes of measuring (plus the release build)",
              "scripts/bench.sh --quick  # 1 round, short windows, 2,000 idle connections: a smoke run",
              "```", "",
              "Cases (arguments to `target/release/wsbench`, plus `--url`, `--proxy-pid` and `--json`):", ""]
    for name, args in m.get("cases", []):
        lines.append(f"- `{name}`: `wsbench {args}`")
    lines += ["",
              "The configurations are in `scripts/bench/` (`nginx.conf.in`, `haproxy.cfg.in`). wsbench speaks",
              "WebSocket itself (masked client frames, every echo compared with what was sent, a sequence number in",
              "each message), reads the proxy's CPU time and VmRSS from /proc, and exits 1 when a run had errors.",
              f"This run took {m.get('measure_s')} s of measuring"
              + (f" after a {m.get('build_s')} s build." if m.get("build_s", 0) > 5 else " (binaries already built).")
              + " Regenerate this page from the last run's raw results with `scripts/bench.sh --report-only`.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--one", action="store_true")
    ap.add_argument("--meta")
    ap.add_argument("--markdown")
    ap.add_argument("--chart")
    ap.add_argument("--workdir", default=".")
    a = ap.parse_args()
    rows = load(a.results)
    if a.one:
        print(one_line(rows[-1]) if rows else "no runs")
        return
    meta = json.load(open(a.meta)) if a.meta else {}
    meta["_rows"] = rows
    summary = summarise(rows)
    targets = [t for t in TARGETS if any(t in by for by in summary.values())]
    print()
    for line in table_lines(summary, targets, False, cases=WINDOWED):
        print(line)
    for case in IDLE:
        if case in summary:
            print(f"\n{case}:")
            for line in idle_lines(summary, targets, False, case=case):
                print(line)
    for case, checks in verdicts(summary):
        print(f"wsingress {case}: " + "; ".join(f"{n} {r} {'ok' if ok else 'MISSED'}" for n, ok, r in checks))
    if a.markdown:
        chart_name = os.path.basename(a.chart) if a.chart else ""
        if a.chart and not chart(summary, targets, os.path.abspath(a.chart), a.workdir):
            chart_name = ""
        with open(a.markdown, "w") as f:
            f.write(markdown(summary, targets, meta, chart_name or "performance.png"))
        print(f"\nwrote {a.markdown}" + (f" and {a.chart}" if chart_name else ""))


if __name__ == "__main__":
    main()
