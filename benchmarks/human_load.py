"""20 labellers posting answers as fast as they can: is any label lost or stored twice?

A ``pbrl-label`` server (``python -m pbrl.human``, its own process, 127.0.0.1 only) serves a
store of small pair queries. Each of ``--labellers`` client threads loops for ``--seconds``:
``GET /api/next``, then ``POST /api/label`` with a random answer; every ``--retry-every``-th
answer is sent twice at once (a double click) and must be acknowledged once as new and once
as a duplicate. At the end the server is stopped and the store is compared with what the
clients were told: every acknowledged label is there, exactly once, and nothing else is.

Usage::

    python benchmarks/human_load.py [--labellers 20] [--seconds 60]

Prints a markdown block for benchmarks/RESULTS.md; exits 1 if a label was lost or doubled.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import io
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from pbrl.data import Label, QueryBatch, SegmentBatch
from pbrl.store import FeedbackStore

ROOT = Path(__file__).resolve().parents[1]
CHOICES = {"left": Label.FIRST, "right": Label.SECOND, "equal": Label.EQUAL, "skip": Label.SKIP}

TITLE = "Human session: many labellers at once, no label lost"
PAPER = (
    "Target (issue #4): no label lost, duplicated or changed with many concurrent labellers "
    "and re-sent answers. Peers publish no figure to set beside it."
)


def make_store(path: Path, n: int) -> None:
    """``n`` pair queries of tiny segments (no sim state: the load is the API, not video)."""
    rng = np.random.default_rng(0)
    with FeedbackStore(path) as st:
        for start in range(0, n, 1000):
            m = min(1000, n - start)
            segs = SegmentBatch(
                rng.normal(size=(2 * m, 2, 4)).astype(np.float32),
                rng.normal(size=(2 * m, 2, 2)).astype(np.float32),
                None,
                env_name="halfcheetah",
            )
            ids = [f"q{start + i:06d}" for i in range(m)]
            st.add_queries(QueryBatch.from_members([segs[:m], segs[m:]], ids=ids))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--labellers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--queries", type=int, default=40_000)
    p.add_argument("--retry-every", type=int, default=10)
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "load.sqlite"
        t0 = time.perf_counter()
        make_store(store, a.queries)
        print(f"made {a.queries} queries in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        names = [f"l{i:02d}" for i in range(a.labellers)]
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "pbrl.human", "--store", str(store), "--port", str(port),
             "--labellers", ",".join(names), "--no-render", "--no-shuffle"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                print(server.stderr.read(), file=sys.stderr)
                return 1
            time.sleep(0.1)
        tokens_file = Path(d) / "load-human" / "tokens.json"
        tokens = {e["name"]: e["token"] for e in json.loads(tokens_file.read_text())["labellers"]}

        acked: dict[tuple[str, str], int] = {}  # (query, labeller) -> label acknowledged new
        dup_acks = collections.Counter()
        latencies: list[float] = []
        statuses: collections.Counter[int] = collections.Counter()
        problems: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + a.seconds

        def labeller(name: str, seed: int) -> None:
            rng = random.Random(seed)
            auth = {"Authorization": f"Bearer {tokens[name]}"}
            with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
                n = 0
                while time.monotonic() < stop_at:
                    nxt = c.get("/api/next").json()
                    q = nxt["query"]
                    if q is None:
                        if nxt.get("state") == "wait":  # the rest are held by other labellers
                            time.sleep(min(float(nxt.get("retry_after") or 0.05), 0.5))
                            continue
                        problems.append(f"{name}: ran out of queries")
                        return
                    choice = rng.choice(list(CHOICES))
                    body = {"query_id": q["id"], "choice": choice, "response_time": 0.1}
                    n += 1
                    copies = 2 if n % a.retry_every == 0 else 1
                    out: list[tuple[int, dict, float]] = []

                    def send(out: list = out, body: dict = body) -> None:
                        t = time.perf_counter()
                        r = c.post("/api/label", json=body)
                        out.append((r.status_code, r.json(), time.perf_counter() - t))

                    threads = [threading.Thread(target=send) for _ in range(copies)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    with lock:
                        for status, js, dt in out:
                            statuses[status] += 1
                            latencies.append(dt)
                            if status != 200:
                                problems.append(f"{name} {q['id']}: {status} {js}")
                        new = [js for s, js, _ in out if s == 200 and not js["duplicate"]]
                        if len(new) != 1:
                            problems.append(f"{name} {q['id']}: {len(new)} new acks")
                        for _ in range(len(out) - len(new)):
                            dup_acks[name] += 1
                        if new:
                            acked[(q["id"], name)] = int(CHOICES[choice])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=labeller, args=(n, i)) for i, n in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        with FeedbackStore(store) as st:
            stored = {
                (f.query_id, f.teacher_id.split(":", 1)[1]): int(f.label) for f in st.feedback()
            }
            n_rows = st.num_labels()
            per_query = collections.Counter(f.query_id for f in st.feedback())

    lost = set(acked) - set(stored)
    extra = set(stored) - set(acked)
    changed = [k for k in acked if k in stored and stored[k] != acked[k]]
    shared = sum(1 for v in per_query.values() if v > 1)
    ok = not (lost or extra or changed or shared or problems) and n_rows == len(acked)
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cmd = "python benchmarks/human_load.py " + " ".join(sys.argv[1:])
    print(
        f"Date: {datetime.date.today().isoformat()}. Machine: {os.cpu_count()} CPU cores, "
        f"{platform.platform()}; server and the {a.labellers} client threads share the "
        f"machine; load average {load:.1f} at the end. Command: `{cmd}`."
    )
    print()
    print(
        "| labellers | seconds | labels stored | labels/s | POSTs | double-click POSTs "
        "| POST p50 ms | p95 ms | p99 ms | non-200 | lost | extra | changed "
        "| query labelled twice |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {a.labellers} | {wall:.0f} | {n_rows} | {n_rows / wall:.0f} | {len(lat)} | "
        f"{sum(dup_acks.values())} | {pct(0.5):.0f} | {pct(0.95):.0f} | {pct(0.99):.0f} | "
        f"{sum(v for k, v in statuses.items() if k != 200)} | {len(lost)} | {len(extra)} | "
        f"{len(changed)} | {shared} |"
    )  # fmt: skip
    print()
    print(f"Result: {'no label lost or duplicated' if ok else 'FAILED'}; "
          f"mean POST latency {1000 * statistics.mean(lat):.0f} ms.")  # fmt: skip
    for msg in problems[:10]:
        print(f"problem: {msg}", file=sys.stderr)
    return 0 if ok else 1


class _Tee(io.StringIO):
    """Echo to the terminal while keeping a copy for RESULTS.md."""

    def write(self, s: str) -> int:
        sys.__stdout__.write(s)
        return super().write(s)


if __name__ == "__main__":
    _out = _Tee()
    with contextlib.redirect_stdout(_out):
        rc = main()
    if "--write-results" in sys.argv:
        from results_md import write_section

        write_section(TITLE, PAPER + "\n\n" + _out.getvalue())
        print("wrote benchmarks/RESULTS.md")
    sys.exit(rc)
