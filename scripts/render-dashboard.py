#!/usr/bin/env python3
"""Render docs/dashboard.png: a few panels of the wsingress Grafana dashboard, drawn with matplotlib
from the same series (active connections, messages/s by direction, handshake p50/p99, closes by code).

Where the data comes from (pick one):
  --run               start `wsingress echo` twice and `wsingress serve --upstream ...` on loopback,
                      drive a synthetic WebSocket load through the proxy for --seconds while scraping
                      its /metrics every second (the default; needs a built binary, see --wsingress)
  --scrape URL        scrape an already running wsingress /metrics for --seconds; with --drive HOST:PORT
                      the script also drives the synthetic load through that proxy address
  --from-csv FILE     re-plot samples saved earlier
  --simulate          model the same synthetic load without a proxy (for when no binary exists yet;
                      the picture then says "simulated")
Scraped samples are saved as CSV (--csv, default docs/dashboard-data.csv) so the picture can be
re-drawn without re-running. matplotlib is installed into .tools/venv (from PyPI) when missing.

Examples:
  cargo build --release && scripts/render-dashboard.py --run --seconds 40
  scripts/render-dashboard.py --from-csv docs/dashboard-data.csv
"""

import argparse
import base64
import csv
import math
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".tools", "venv")
MATPLOTLIB = "matplotlib==3.11.2"


def ensure_matplotlib():
    """Import matplotlib, installing it into .tools/venv and re-running under that venv if needed."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        sys.exit("matplotlib is missing from .tools/venv even after installing it")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    if subprocess.call([py, "-c", "import matplotlib"], stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([py, "-m", "pip", "install", "-q", MATPLOTLIB])
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


# --------------------------------------------------------------------------------------------
# The synthetic load: the same plan drives --run (for real) and --simulate (as a model).
# --------------------------------------------------------------------------------------------

IDLE_TIMEOUT_S = 3.0


class Conn:
    """One planned WebSocket connection."""

    def __init__(self, start, end, rate, sizes, close):
        self.start, self.end, self.rate, self.sizes, self.close = start, end, rate, sizes, close


def plan(seconds, peak, seed=7):
    """Connections arrive over the first 40% of the run and leave over the last 35%; a few go
    idle (closed by the proxy's idle timeout) or drop without a Close frame."""
    rnd = random.Random(seed)
    conns = []
    for i in range(peak):
        start = 0.4 * seconds * (i / peak) + rnd.uniform(0, 0.5)
        end = seconds * (0.62 + 0.33 * rnd.random())
        r = rnd.random()
        close = ("1000" if r < 0.62 else "1001" if r < 0.74 else "4000" if r < 0.84
                 else "idle" if r < 0.93 else "drop")
        if close == "idle":
            end = start + rnd.uniform(4, 10)
        conns.append(Conn(start, min(end, seconds - 1), rnd.uniform(3, 12),
                          (16, rnd.choice([256, 1024, 4096])), close))
    return conns


# --------------------------------------------------------------------------------------------
# A minimal RFC 6455 client (stdlib only): handshake, masked frames, close.
# --------------------------------------------------------------------------------------------

class WsClient:
    def __init__(self, addr, host="demo.local", timeout=15.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"handshake refused: {status.decode(errors='replace')}")

    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """Next frame as (opcode, payload); answers pings itself."""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            return opcode, payload

    def close(self, code):
        self.send(0x8, struct.pack("!H", code))
        try:
            while self.recv()[0] != 0x8:
                pass
        except (ConnectionError, OSError):
            pass
        self.sock.close()


def drive(conn, proxy, t0, errors, host):
    rnd = random.Random(id(conn))
    time.sleep(max(0.0, t0 + conn.start - time.time()))
    try:
        ws = WsClient(proxy, host)
        while time.time() < t0 + conn.end:
            payload = os.urandom(rnd.randint(*conn.sizes) // 2).hex().encode()
            ws.send(0x1, payload)
            while ws.recv()[0] not in (0x1, 0x2):
                pass
            time.sleep(rnd.expovariate(conn.rate))
        if conn.close == "idle":
            ws.sock.settimeout(IDLE_TIMEOUT_S * 4)
            try:
                while ws.recv()[0] != 0x8:  # the proxy's idle timeout closes the tunnel
                    pass
                ws.send(0x8, b"")
            finally:
                ws.sock.close()
        elif conn.close == "drop":
            ws.sock.close()
        else:
            ws.close(int(conn.close))
    except (OSError, ConnectionError) as e:
        errors.append(str(e))


# --------------------------------------------------------------------------------------------
# Scraping and the sample CSV.
# --------------------------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line.strip())
        if m and m.group(1).startswith("wsingress_"):
            yield m.group(1), m.group(3) or "", float(m.group(4))


def scrape(url, seconds, rows, interval=1.0):
    t0 = time.time()
    while time.time() - t0 < seconds:
        t = time.time() - t0
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                for name, labels, value in parse_exposition(r.read().decode()):
                    rows.append((round(t, 3), name, labels, value))
        except OSError as e:
            print(f"scrape failed: {e}", file=sys.stderr)
        time.sleep(max(0.0, interval - (time.time() - t0 - t)))


# The families the picture uses (the CSV keeps only these).
PLOTTED = ("wsingress_websocket_connections_active", "wsingress_websocket_messages_total",
           "wsingress_websocket_bytes_total", "wsingress_websocket_handshake_duration_seconds_bucket",
           "wsingress_websocket_closes_total")


def write_csv(path, rows, source):
    rows = [r for r in rows if r[1] in PLOTTED]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(f"# source: {source}\n")
        w = csv.writer(f)
        w.writerow(["t_seconds", "metric", "labels", "value"])
        w.writerows(rows)


def read_csv(path):
    with open(path, newline="") as f:
        first = f.readline()
        source = first[len("# source: "):].strip() if first.startswith("# source:") else "csv"
        if not first.startswith("#"):
            f.seek(0)
        r = csv.DictReader(f)
        rows = [(float(x["t_seconds"]), x["metric"], x["labels"], float(x["value"])) for x in r]
    return rows, source


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline_s=20):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} did not answer 200 within {deadline_s}s")


def wait_port(port, deadline_s=20):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on 127.0.0.1:{port} after {deadline_s}s")


def load(proxy, admin_metrics, seconds, peak, host):
    """Drive the planned load through `proxy` while scraping `admin_metrics`; returns the samples."""
    rows, errors = [], []
    scraper = threading.Thread(target=scrape, args=(admin_metrics, seconds + 2, rows))
    t0 = time.time()
    scraper.start()
    workers = [threading.Thread(target=drive, args=(c, proxy, t0, errors, host), daemon=True)
               for c in plan(seconds, peak)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(1.0, t0 + seconds + IDLE_TIMEOUT_S * 5 - time.time()))
    scraper.join()
    if errors:
        print(f"{len(errors)} connections failed, e.g. {errors[0]}", file=sys.stderr)
    return rows


def run(binary, seconds, peak):
    procs = []
    try:
        echo = [free_port(), free_port()]
        for p in echo:
            procs.append(subprocess.Popen([binary, "echo", "--listen", f"127.0.0.1:{p}"],
                                          stdout=subprocess.DEVNULL))
        for p in echo:
            wait_port(p)
        proxy, admin = free_port(), free_port()
        procs.append(subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{proxy}", "--tls-listen", "off", "--admin-listen", f"127.0.0.1:{admin}",
             "--upstream", ",".join(f"127.0.0.1:{p}" for p in echo),
             "--idle-timeout", f"{IDLE_TIMEOUT_S:g}s"],
            stdout=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn")))
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        rows = load(("127.0.0.1", proxy), f"http://127.0.0.1:{admin}/metrics", seconds, peak, "demo.local")
        return rows
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


# --------------------------------------------------------------------------------------------
# --simulate: the same plan, counted the way wsingress counts it (no proxy involved).
# --------------------------------------------------------------------------------------------

HANDSHAKE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                     0.5, 1.0, 2.5, 5.0, 10.0]


def simulate(seconds, peak):
    rnd = random.Random(11)
    route = 'backend="static:upstream",route="static/upstream"'
    events = []  # (t, kind, data)
    for c in plan(seconds, peak):
        events.append((c.start, "open", rnd.lognormvariate(math.log(0.0006), 0.5)))
        t = c.start
        while True:
            t += rnd.expovariate(c.rate)
            if t >= c.end:
                break
            size = rnd.randint(*c.sizes)
            events.append((t, "msg", size + (2 if size < 126 else 4) + 4))
        if c.close == "idle":
            events.append((c.end + IDLE_TIMEOUT_S, "close", ("proxy", "1001")))
        elif c.close == "drop":
            events.append((c.end, "close", ("client", "abnormal")))
        else:
            events.append((c.end, "close", ("client", c.close)))
    events.sort(key=lambda e: e[0])
    rows, active, msgs, byts, closes, hs = [], 0, 0, [0, 0], {}, []
    i = 0
    for t in range(int(seconds) + 2):
        while i < len(events) and events[i][0] <= t:
            _, kind, data = events[i]
            if kind == "open":
                active += 1
                hs.append(data)
            elif kind == "msg":
                msgs += 1
                byts[0] += data
                byts[1] += data - 4  # the backend's frames are not masked
            else:
                active -= 1
                closes[data] = closes.get(data, 0) + 1
            i += 1
        rows.append((t, "wsingress_websocket_connections_active", route, active))
        for d, b in (("client_to_backend", byts[0]), ("backend_to_client", byts[1])):
            rows.append((t, "wsingress_websocket_messages_total", f'{route},direction="{d}"', msgs))
            rows.append((t, "wsingress_websocket_bytes_total", f'{route},direction="{d}"', b))
        for le in HANDSHAKE_BUCKETS + [math.inf]:
            n = sum(1 for h in hs if h <= le)
            rows.append((t, "wsingress_websocket_handshake_duration_seconds_bucket",
                         f'le="{"+Inf" if le == math.inf else le}",route="static/upstream"', n))
        for (who, code), n in closes.items():
            rows.append((t, "wsingress_websocket_closes_total",
                         f'code="{code}",initiator="{who}",route="static/upstream"', n))
    return rows


# --------------------------------------------------------------------------------------------
# PromQL-like arithmetic over the samples.
# --------------------------------------------------------------------------------------------

def labels_of(s):
    return {k: v for k, v in LABEL.findall(s)}


def by_time(rows, metric):
    out = {}
    for t, m, l, v in rows:
        if m == metric:
            out.setdefault(t, []).append((labels_of(l), v))
    return out


def sum_by(rows, metric, key):
    """{group: [(t, value)]} of sum by (key) (metric)."""
    series = {}
    for t, samples in sorted(by_time(rows, metric).items()):
        groups = {}
        for labels, v in samples:
            g = key(labels)
            groups[g] = groups.get(g, 0.0) + v
        for g, v in groups.items():
            series.setdefault(g, []).append((t, v))
    return series


def rate(points, window):
    """Per-second increase over `window` seconds at each sample (counter resets not expected)."""
    out = []
    for i, (t, v) in enumerate(points):
        j = i
        while j > 0 and t - points[j - 1][0] <= window:
            j -= 1
        if j < i:
            out.append((t, (v - points[j][1]) / (t - points[j][0])))
    return out


def histogram_quantile(q, buckets):
    """buckets: [(le, cumulative rate)], sorted by le; Prometheus' linear interpolation."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == math.inf:
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return prev_le


def quantiles(rows, metric, qs, window):
    per_le = sum_by(rows, metric, lambda l: float("inf") if l.get("le") == "+Inf" else float(l["le"]))
    rates = {le: dict(rate(p, window)) for le, p in per_le.items()}
    times = sorted({t for r in rates.values() for t in r})
    out = {q: [] for q in qs}
    for t in times:
        b = sorted((le, r[t]) for le, r in rates.items() if t in r)
        for q in qs:
            v = histogram_quantile(q, b)
            if v is not None:
                out[q].append((t, v))
    return out


# --------------------------------------------------------------------------------------------
# The picture.
# --------------------------------------------------------------------------------------------

def render(rows, source, png, window):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bg, panel, grid, text = "#111217", "#181b1f", "#2c3235", "#ccccdc"
    palette = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]
    plt.rcParams.update({"font.size": 9, "text.color": text, "axes.labelcolor": text,
                         "xtick.color": text, "ytick.color": text, "axes.edgecolor": grid,
                         "font.family": "DejaVu Sans"})
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.6), dpi=110, facecolor=bg)
    fig.subplots_adjust(left=0.06, right=0.985, top=0.84, bottom=0.08, hspace=0.42, wspace=0.16)
    fig.suptitle("wsingress — WebSocket traffic", x=0.06, ha="left", fontsize=14,
                 fontweight="bold", color="#ffffff")
    fig.text(0.06, 0.905, f"data: {source}; rates over {window:g}s windows", fontsize=9, color="#8e8e9e")

    tmax = max(t for t, _, _, _ in rows)

    def style(ax, title, unit=None):
        ax.set_facecolor(panel)
        ax.set_title(title, loc="left", fontsize=10.5, color="#ffffff", pad=8)
        ax.grid(True, color=grid, linewidth=0.6)
        ax.set_axisbelow(True)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_xlabel("seconds into the run", fontsize=8)
        if unit:
            ax.set_ylabel(unit, fontsize=8)
        ax.set_xlim(0, tmax)
        top = ax.get_ylim()[1]
        ax.set_ylim(0, top * 1.3 if top > 0 else 1)  # headroom for the legend

    def legend(ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8, frameon=False, ncol=4, labelcolor=text,
                      handlelength=1.6, columnspacing=1.2)

    ax = axes[0][0]
    for i, (route, pts) in enumerate(sorted(sum_by(rows, "wsingress_websocket_connections_active",
                                                   lambda l: l.get("route", "?")).items())):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, color=palette[i], linewidth=1.6, label=route)
        ax.fill_between(xs, ys, color=palette[i], alpha=0.18)
    style(ax, "Active connections by route", "tunnels")
    legend(ax)

    ax = axes[0][1]
    for i, (d, pts) in enumerate(sorted(sum_by(rows, "wsingress_websocket_messages_total",
                                               lambda l: l.get("direction", "?")).items())):
        r = rate(pts, window)
        if r:
            ax.plot(*zip(*r), color=palette[i + 2], linewidth=1.8 - 0.6 * i,
                    linestyle=("-", (0, (4, 2)))[i % 2], label=d.replace("_", " "))
    style(ax, "Messages/s by direction", "messages/s")
    legend(ax)

    ax = axes[1][0]
    qs = quantiles(rows, "wsingress_websocket_handshake_duration_seconds_bucket", [0.5, 0.99], window)
    for i, q in enumerate([0.5, 0.99]):
        if qs[q]:
            xs, ys = zip(*qs[q])
            ax.plot(xs, [y * 1000 for y in ys], color=palette[i * 3], linewidth=1.6,
                    label=f"p{int(q * 100)}")
    style(ax, "Handshake latency p50 / p99", "milliseconds")
    legend(ax)

    ax = axes[1][1]
    closes = sum_by(rows, "wsingress_websocket_closes_total",
                    lambda l: f'{l.get("code", "?")} by {l.get("initiator", "?")}')
    times = sorted({t for pts in closes.values() for t, _ in pts})
    if times:
        edges = [times[0] + k * window for k in range(int((times[-1] - times[0]) / window) + 2)]

        def at(pts, t):
            v = 0.0
            for tt, vv in pts:
                if tt <= t:
                    v = vv
            return v

        bottom = [0.0] * (len(edges) - 1)
        for i, (name, pts) in enumerate(sorted(closes.items())):
            inc = [at(pts, edges[k + 1]) - at(pts, edges[k]) for k in range(len(edges) - 1)]
            ax.bar([e + window / 2 for e in edges[:-1]], inc, width=window * 0.85, bottom=bottom,
                   color=palette[(i + 1) % len(palette)], label=name)
            bottom = [b + x for b, x in zip(bottom, inc)]
    style(ax, f"Closes by code and initiator (per {window:g}s)", "tunnels closed")
    legend(ax)

    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, facecolor=bg)
    print(f"wrote {png}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--run", action="store_true", help="start wsingress and drive a synthetic load (default)")
    mode.add_argument("--scrape", metavar="URL", help="scrape a running wsingress /metrics")
    mode.add_argument("--from-csv", metavar="FILE", help="plot samples saved earlier")
    mode.add_argument("--simulate", action="store_true", help="model the synthetic load without a proxy")
    ap.add_argument("--drive", metavar="HOST:PORT", help="with --scrape: drive the synthetic load through this proxy")
    ap.add_argument("--host", default="demo.local", help="Host header of the synthetic load (with --drive)")
    ap.add_argument("--wsingress", default=None, help="binary (default: target/release, then target/debug)")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--connections", type=int, default=40, help="peak concurrent connections of the load")
    ap.add_argument("--window", type=float, default=4.0, help="rate window, seconds")
    ap.add_argument("--csv", default=os.path.join(ROOT, "docs", "dashboard-data.csv"))
    ap.add_argument("--png", default=os.path.join(ROOT, "docs", "dashboard.png"))
    a = ap.parse_args()
    ensure_matplotlib()

    if a.from_csv:
        rows, source = read_csv(a.from_csv)
    elif a.simulate:
        rows, source = simulate(a.seconds, a.connections), "simulated (regenerate with --run)"
        write_csv(a.csv, rows, source)
    elif a.scrape and a.drive:
        host, _, port = a.drive.rpartition(":")
        rows = load((host, int(port)), a.scrape, a.seconds, a.connections, a.host)
        source = (f"wsingress /metrics scraped every 1s during a {a.seconds:g}s synthetic run "
                  f"({a.connections} connections)")
        write_csv(a.csv, rows, source)
    elif a.scrape:
        rows, source = [], f"scraped from {a.scrape}"
        scrape(a.scrape, a.seconds, rows)
        write_csv(a.csv, rows, source)
    else:
        binary = a.wsingress or next((p for p in (os.path.join(ROOT, "target", k, "wsingress")
                                                  for k in ("release", "debug")) if os.path.exists(p)), None)
        if not binary:
            sys.exit("no wsingress binary: run `cargo build --release` or pass --wsingress")
        rows = run(binary, a.seconds, a.connections)
        source = (f"wsingress /metrics scraped every 1s during a {a.seconds:g}s synthetic run on loopback "
                  f"({a.connections} connections, 2 echo backends)")
        write_csv(a.csv, rows, source)
    if not rows:
        sys.exit("no samples")
    render(rows, source, a.png, a.window)


if __name__ == "__main__":
    main()
